"""Where images come from: CIFAR-10/100 (torchvision's format), class-folder trees, scikit-learn's digits,
and event recordings (N-MNIST, DVS128 Gesture, CIFAR10-DVS: ``spikingformer.data.events``).

Each loader returns raw datasets of ``(image, class_index)`` (PIL images, or tensors for
digits) with a ``targets`` list, so splits can be class-balanced without decoding anything.
Missing or malformed data raises ``DataError`` naming what was expected where.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..utils.errors import DataError

__all__ = ["DATASETS", "EVENT_DATASETS", "RawData", "load_images", "load_labelled_images", "load_rgb", "unread_data_note", "Subset", "Relabelled",
           "sample_names", "sample_source", "DATASET_STATS"]

# Per-channel mean/std over each training set (CIFAR values as in the official configs).
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, timm's default
}
_CIFAR_LAYOUT = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta"),
    "cifar100": ("CIFAR100", "cifar-100-python", "train, test, meta"),
}


class Subset(Dataset):
    """``base`` restricted to ``indices``, keeping ``targets`` (for further balanced splits)."""

    def __init__(self, base: Dataset, indices: list[int]):
        self.base, self.indices = base, list(indices)
        self.targets = [base.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


class Relabelled(Dataset):
    """``base`` with each target ``t`` read as ``table[t]``: a test set's class indices as the model's."""

    def __init__(self, base: Dataset, table: list[int]):
        self.base, self.table = base, list(table)
        self.targets = [self.table[t] for t in base.targets]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, target = self.base[i]
        return x, self.table[target]


def sample_names(ds: Dataset) -> list[str] | None:
    """Each sample's file (a DVS128 Gesture window: ``recording.aedat[start:end]``), through the wrappers of
    ``spikingformer.data``; ``None`` where samples are no files (CIFAR's batches, digits)."""
    if hasattr(ds, "indices"):  # Subset
        names = sample_names(ds.base)
        return None if names is None else [names[i] for i in ds.indices]
    if hasattr(ds, "base"):  # SeededTransform, Relabelled
        return sample_names(ds.base)
    if hasattr(ds, "samples"):  # ImageFolder, Kaggle's flat val
        return [str(path) for path, _ in ds.samples]
    if hasattr(ds, "items"):  # EventRecordings
        return [str(path) + (f"[{args[0]}:{args[1]}]" if args else "") for _, path, args in ds.items]
    return None


def sample_source(ds: Dataset, i: int) -> str:
    """Where item ``i`` of ``ds`` is read from, for error messages: its file (``sample_names``), else its
    place in the dataset it was split from (CIFAR's batches, the digits)."""
    names = sample_names(ds)
    if names is not None:
        return names[i]
    while hasattr(ds, "base"):  # Subset, SeededTransform, Relabelled
        ds, i = ds.base, (ds.indices[i] if hasattr(ds, "indices") else i)
    return f"{type(ds).__name__} item {i}"


@dataclass
class RawData:
    train: Dataset
    val: Dataset | None          # the dataset's own validation/test split, if it has one
    val_name: str | None
    classes: list[str]
    in_chans: int
    native_size: int | None      # every image's side, when fixed (CIFAR 32, digits 8)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tensor_images: bool = False  # images are already tensors in [0, 1] (no PIL transforms)
    events: bool = False         # samples are event arrays (spikingformer.data.events), framed to the model's T
    train_only: bool = False     # a dataset root whose only split is DIR/train: training data, no test set


DATASETS = ("cifar10", "cifar100", "folder", "digits", "nmnist", "dvs128_gesture", "cifar10_dvs")
EVENT_DATASETS = ("nmnist", "dvs128_gesture", "cifar10_dvs")  # raw event recordings (spikingformer.data.events)
BUNDLED_DATASETS = ("digits",)  # shipped with a package: no data_dir is read


def unread_data_note(dataset: str, data_dir: str | None) -> list[str]:
    """A note for a ``--data`` the dataset never reads (a bundled one): said, rather than silently ignored."""
    if data_dir is None or dataset not in BUNDLED_DATASETS:
        return []
    return [f"--data {data_dir} is not read: the {dataset} dataset is bundled with scikit-learn"]


def load_images(dataset: str, data_dir: str, download: bool = False) -> RawData:
    """A dataset of images (``DATASETS`` but the event ones) as read from ``data_dir``."""
    if dataset in _CIFAR_LAYOUT:
        return _cifar(dataset, Path(data_dir), download)
    if dataset == "folder":
        return _folder(Path(data_dir))
    if dataset == "digits":
        return _digits()
    raise DataError(f"unknown dataset {dataset!r}")


def load_labelled_images(dataset: str, data_dir: str) -> RawData:
    """``load_images``, but a CIFAR model's test set may also be class folders of images (the CIFAR-10 JPEG
    copy's layout)."""
    if dataset in _CIFAR_LAYOUT and not (Path(data_dir) / _CIFAR_LAYOUT[dataset][1]).is_dir():
        return _folder(Path(data_dir))
    return load_images(dataset, data_dir)


def _cifar(name: str, root: Path, download: bool) -> RawData:
    import torchvision

    cls_name, folder, files = _CIFAR_LAYOUT[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        hint = "download failed or files are corrupt" if download else "set download: true to fetch it"
        hint = _class_folder_hint(root) or hint
        raise DataError(f"{cls_name} not found or corrupt at {root}: expected torchvision's layout "
                        f"{root / folder}/ ({files}); {hint} ({e})") from None
    except OSError as e:  # no network, no permission
        raise DataError(f"could not download {cls_name} to {root}: {e}") from None
    mean, std = DATASET_STATS[name]
    return RawData(train, test, f"test (official {cls_name} test split of {root}, {len(test)} images)",
                   list(train.classes), 3, 32, mean, std)


def _is_image(path: Path) -> bool:
    """A file ``ImageFolder`` would read, by its extension."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return path.suffix.lower() in IMG_EXTENSIONS


def _class_folder_hint(root: Path) -> str:
    """What to do when a CIFAR ``data_dir`` holds class folders instead (such as the CIFAR-10 JPEG copy,
    ``train/<class>/*.jpg``): a natural slip is to point ``configs/cifar10.yaml`` at them."""
    train = root / "train" if (root / "train").is_dir() else root
    if not root.is_dir() or not any(_is_image(f) for d in train.iterdir() if d.is_dir() for f in d.iterdir()):
        return ""  # not a class-folder tree (a damaged cifar-10-batches-py/ is a folder of no images)
    return (f"{train} holds class folders, which dataset: folder reads (as configs/cifar10_jpeg.yaml does, "
            f"holding out a validation split)")


def load_rgb(path: str):
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, Image.DecompressionBombError) as e:  # unidentified and truncated files are OSErrors
        raise DataError(f"cannot decode image {path}: {e} (expected a readable image file)") from None


def _image_folder(path: Path):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), loader=load_rgb)
    except FileNotFoundError as e:  # no class folders, or class folders without images
        raise DataError(f"{path}: expected one folder per class holding images "
                        f"({path}/<class>/<image>.jpg|png|...): {e}") from None


def _folder(root: Path) -> RawData:
    """``root/train/<class>/...`` (+ optional ``root/val/<class>/...``, as ImageNet, or ``root/val/*.JPEG``
    labelled by Kaggle's ``LOC_val_solution.csv``), or ``root/<class>/...``."""
    if not root.is_dir():
        raise DataError(f"data_dir {root} does not exist: expected a class-folder tree "
                        f"({root}/train/<class>/*.jpg, optionally {root}/val/<class>/*.jpg)")
    train_dir = root / "train" if (root / "train").is_dir() else root
    train = _image_folder(train_dir)
    val, val_name = None, None
    if (root / "val").is_dir() and train_dir != root:
        if any(p.is_dir() for p in (root / "val").iterdir()):
            _no_loose_images(root / "val")
            val = _image_folder(root / "val")
            if val.classes != train.classes:
                missing = sorted(set(train.classes) ^ set(val.classes))
                raise DataError(f"{root}/val and {train_dir} must hold the same class folders; "
                                f"these are in only one of them: {missing[:10]}")
            val_name = f"val ({root / 'val'}, {len(val)} images)"
        else:
            val, labels = _flat_val(root, train.classes)
            val_name = f"val ({root / 'val'}, {len(val)} images labelled by {labels})"
    _probe(train, train_dir)
    if val is not None:
        _probe(val, root / "val")
    mean, std = DATASET_STATS["folder"]
    return RawData(train, val, val_name, list(train.classes), 3, None, mean, std,
                   train_only=val is None and train_dir != root)


def _no_loose_images(val_dir: Path) -> None:
    """Class folders with images beside them, as a ``valprep.sh`` stopped midway leaves a flat ``val/``: the
    class folders alone (all ``ImageFolder`` reads) would validate on a part of the split, and say nothing."""
    loose = sorted(p.name for p in val_dir.iterdir() if p.is_file() and _is_image(p))
    if loose:
        raise DataError(f"{val_dir} holds class folders and {len(loose)} images outside them (e.g. {loose[:3]}): "
                        f"sort every image into {val_dir}/<class>/ (valprep.sh), or keep the folder flat")


KAGGLE_VAL_LABELS = "LOC_val_solution.csv"  # ImageId,PredictionString ("<wnid> x y x y ..." per box)


class _LabelledFiles(Dataset):
    """Image files with their class indices: ``(PIL image, class)`` items, as ``ImageFolder``'s."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]):
        self.samples, self.classes = samples, classes
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        return load_rgb(path), target


def _flat_val(root: Path, classes: list[str]) -> tuple[_LabelledFiles, Path]:
    """``root/val`` holding ImageNet's validation images side by side, as Kaggle's ImageNet release
    ships them (``ILSVRC/Data/CLS-LOC/val``), labelled by its ``LOC_val_solution.csv``, found in
    ``root`` or one of the three folders above it (the release's top folder)."""
    import csv

    val_dir = root / "val"
    # absolute: a relative data_dir ("CLS-LOC", run from the release's Data/) has no parents to search
    labels = next((d / KAGGLE_VAL_LABELS for d in (root, *list(root.absolute().parents)[:3])
                   if (d / KAGGLE_VAL_LABELS).is_file()), None)
    if labels is None:
        raise DataError(f"{val_dir} has no class folders: sort its images into {val_dir}/<class>/ "
                        f"(as ImageNet's valprep.sh does), or put Kaggle's {KAGGLE_VAL_LABELS} in {root} "
                        f"or a folder above it")
    try:
        with open(labels, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (a spreadsheet's save) is no header
            rows = list(csv.DictReader(f))
        wnid = {row["ImageId"]: row["PredictionString"].split()[0] for row in rows}
    except (KeyError, IndexError, AttributeError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{labels}: expected Kaggle's ImageNet labels, a header ImageId,PredictionString and "
                        f"one '<wnid> x_min y_min x_max y_max ...' per image ({type(e).__name__}: {e})") from None
    index = {c: i for i, c in enumerate(classes)}
    samples, unlabelled, unknown = [], [], set()
    for path in sorted(val_dir.iterdir()):
        if not _is_image(path):
            continue
        name = wnid.get(path.stem)
        if name is None:
            unlabelled.append(path.name)
        elif name not in index:
            unknown.add(name)
        else:
            samples.append((str(path), index[name]))
    if unlabelled or unknown:
        raise DataError(f"{val_dir} does not match {labels}: "
                        + (f"{len(unlabelled)} images without a label (e.g. {unlabelled[:3]})" if unlabelled else "")
                        + ("; " if unlabelled and unknown else "")
                        + (f"classes that are no train folder: {sorted(unknown)[:10]}" if unknown else ""))
    return _LabelledFiles(samples, classes), labels


def _probe(ds, where: Path) -> None:
    """Decode the first image now, so a wrong tree fails before training starts."""
    if len(ds) == 0:
        raise DataError(f"{where}: no images found")
    ds[0]


class _Digits(Dataset):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes): ``[1, 8, 8]`` tensors in ``[0, 1]``."""

    def __init__(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        self.images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        self.targets = [int(t) for t in d.target]
        self.classes = [str(c) for c in range(10)]  # as ImageFolder/CIFAR name theirs

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def _digits() -> RawData:
    ds = _Digits()
    # One fixed statistic of the whole bundled set (a dataset constant, as CIFAR's are).
    mean, std = ds.images.mean().item(), ds.images.std().item()
    return RawData(ds, None, None, ds.classes, 1, 8, (mean,), (std,), tensor_images=True)
