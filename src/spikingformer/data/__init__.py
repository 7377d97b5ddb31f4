"""Datasets for training and evaluation: ``build_data(cfg)`` gives train/val splits with transforms.

Sources (``cfg.dataset``): ``cifar10``/``cifar100`` in torchvision's canonical format,
``folder`` (any class-folder tree: ImageNet's ``train/`` + ``val/``, or the CIFAR-10 JPEG
copy's ``train/``), ``digits`` (scikit-learn's bundled 8x8 digits), and the event datasets
``nmnist``, ``dvs128_gesture``, ``cifar10_dvs`` (``events``: recordings integrated into the
model's ``T`` frames, batched time-major by ``collate``).  A dataset without a
validation split gets a seeded class-balanced held-out one, and its name says so
(``val_name``) in every report.  ``build_test`` reads a labelled test set whole, its classes mapped
onto a model's by name, and ``scored_split`` chooses between the two for ``spikingformer eval``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

from torch.utils.data import Dataset

from ..models import create_model
from ..utils.errors import DataError
from .events import EventAugment, EventFrames, event_collate, load_event_raw
from .sampler import EpochSampler, GuardedLoader, SampleFailure, SeededTransform, ShardSampler
from .sources import (
    BUNDLED_DATASETS,
    DATASET_STATS,
    EVENT_DATASETS,
    RawData,
    Relabelled,
    Subset,
    load_images,
    load_labelled_images,
    sample_names,
    unread_data_note,
)
from .split import balanced_split, holdout_name
from .transforms import eval_transform, train_transform

__all__ = ["DataSplits", "build_data", "build_test", "scored_split", "DataError", "EpochSampler", "ShardSampler",
           "SeededTransform", "GuardedLoader", "SampleFailure", "balanced_split", "holdout_name", "load_raw",
           "sample_names", "DATASET_STATS"]


@dataclass
class DataSplits:
    train: SeededTransform | None  # index with (index, seed) for seeded augmentation; None for a test set
    val: SeededTransform
    val_name: str            # e.g. "val (held-out 5000 of 50000 train images, class-balanced, seed 0)"
    classes: list[str]
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    collate: Callable | None = None  # DataLoader collate_fn (None: PyTorch's default)
    own_val: str | None = None       # the dataset's own validation split, also when val_split: holdout skips it


def split_train_val(raw: RawData, val_split: str, holdout: int, seed: int,
                    pick: str = "random") -> tuple[Dataset, Dataset, str]:
    """The dataset's own validation split (``val_split="auto"``), or a class-balanced hold-out
    (``pick``: seeded within each class, or each class's last items)."""
    if val_split == "auto" and raw.val is not None:
        return raw.train, raw.val, raw.val_name
    n = len(raw.train)
    if holdout <= 0:
        raise DataError("this dataset has no validation split of its own: set holdout > 0 to hold one out")
    if holdout >= n:
        raise DataError(f"holdout {holdout} must be smaller than the {n} training images")
    rest, held = balanced_split(raw.train.targets, holdout, seed, pick)
    return Subset(raw.train, rest), Subset(raw.train, held), holdout_name(holdout, n, seed, pick)


def _limit(ds: Dataset, n: int, seed: int, what: str) -> tuple[Dataset, str]:
    if n <= 0 or n >= len(ds):
        return ds, ""
    _, keep = balanced_split(ds.targets, n, seed)
    return Subset(ds, keep), f", limited to {n} {what} images"


def build_data(cfg, img_size: int) -> DataSplits:
    """Load ``cfg.dataset``, split it, and attach timm's train/eval transforms at ``img_size``
    (event data: integration into the model's ``T`` frames, and ``event_aug`` when training)."""
    raw = load_raw(cfg.dataset, cfg.data_dir, cfg.download)
    train, val, val_name = split_train_val(raw, cfg.val_split, cfg.holdout, cfg.seed, cfg.holdout_pick)
    train, _ = _limit(train, cfg.limit_train, cfg.seed, "train")
    val, note = _limit(val, cfg.limit_val, cfg.seed, "val")
    return _with_transforms(cfg, raw, train, val, val_name + note, img_size)


def build_test(cfg, img_size: int, classes: list[str] | None, own_only: bool = False,
               limit: int = 0) -> DataSplits | None:
    """Every sample of the labelled set ``cfg.data_dir`` (``spikingformer eval --data``), ``train`` ``None``:
    the set's own test (or val) split where it is a dataset root with one (CIFAR's batches, N-MNIST's
    ``Test/``, DVS128 Gesture's test trials, ``DIR/val/``), else all of it (class folders, N-MNIST
    recordings with a label list, CIFAR10-DVS class folders), named ``test (DIR, N images)``.  ``None``
    for a root holding training data only (``DIR/train/``), and with ``own_only`` for any set without a test
    split of its own.  Labels are mapped by class name onto ``classes``, the model's (``None``: the set's
    own order); a class the model does not know is an error naming both.  ``limit``: a seeded class-balanced
    subset of that many samples, named so."""
    raw = load_labelled(cfg.dataset, cfg.data_dir)
    if raw.val is not None:
        test, name = raw.val, raw.val_name
    elif raw.train_only or own_only:
        return None
    else:
        unit = "recordings" if raw.events else "images"
        test, name = raw.train, f"test ({cfg.data_dir}, {len(raw.train)} {unit})"
    if classes is not None:
        test = Relabelled(test, _class_table(raw.classes, list(classes), cfg.data_dir))
    test, note = _limit(test, limit, cfg.seed, "test")
    # the model's normalisation (a CIFAR model's statistics on a folder of CIFAR images, not ImageNet's)
    mean, std = DATASET_STATS.get(cfg.dataset, (raw.mean, raw.std))
    raw = replace(raw, classes=list(classes or raw.classes), mean=mean, std=std)
    return _with_transforms(cfg, raw, None, test, name + note, img_size)


def _class_table(theirs: list[str], ours: list[str], where: str) -> list[int]:
    """Each of a test set's classes (``theirs``, by index) as an index into the model's ``ours``, by name."""
    unknown = [c for c in theirs if c not in ours]
    if unknown:
        raise DataError(f"{where} has classes {_few(theirs)} ({len(theirs)}), of which {_few(unknown)} are none "
                        f"of the model's {_few(ours)} ({len(ours)})")
    return [ours.index(c) for c in theirs]


def _few(names: list[str]) -> str:
    return str(names[:10])[:-1] + ", ...]" if len(names) > 10 else str(names)


def scored_split(cfg, data_dir: str | None, split: str | None, classes: list[str] | None, img_size: int,
                given: dict | None = None) -> tuple:
    """``(data, folder, notes)``: the split ``eval`` scores (``data.val``), the folder it is read from and notes.

    ``data_dir`` ``None``, or the run's own ``cfg.data_dir`` (or its ``train/``), gives the run's validation
    split (``build_data``: the seeded held-out one, or the dataset's own, as the config says); another folder
    is a labelled test set, scored whole (``build_test``: class folders, recordings with a label list, or a
    dataset root's own test split).  ``split="val"`` reads ``data_dir`` as the run's dataset root,
    ``split="test"`` as a test set; the run's own data has a test split only where the dataset has one."""
    if cfg.dataset in BUNDLED_DATASETS:  # nothing to read from a folder: the bundled set's val split
        if split == "test":
            raise DataError(f"{cfg.dataset} is bundled with scikit-learn and has no test split: eval scores its "
                            "held-out val split")
        return build_data(cfg, img_size), None, unread_data_note(cfg.dataset, data_dir)
    ours = data_dir is None or _same_folder(data_dir, cfg.data_dir)
    at = replace(cfg, data_dir=data_dir or cfg.data_dir)
    if split == "val" or (split is None and ours):
        try:
            data = build_data(at, img_size)
        except DataError as e:
            if ours:
                raise
            raise DataError(f"{e} (--split val holds the run's validation split out of {at.data_dir} as its "
                            "config says; without it eval scores all of a labelled test set)") from None
        return data, at.data_dir, _unused_val_note(data, at, data_dir is not None and ours, given or {})
    # a test set is scored whole: the run's own limit_val (a smoke test's) does not reach it, --set limit_val does
    limit = at.limit_val if "limit_val" in (given or {}) else 0
    test = build_test(at, img_size, classes, own_only=ours, limit=limit)
    if test is not None:
        return test, at.data_dir, []
    if ours:
        raise DataError(f"{at.data_dir}, which this run was trained from, has no test split of its own: eval "
                        "scores its held-out val split without --split; --data DIR scores a labelled test set DIR")
    why = f"{at.data_dir} holds training images only ({at.data_dir}/train/), no test split"
    if split == "test":
        raise DataError(f"{why}: --data {at.data_dir}/train scores all of them as a test set")
    return build_data(at, img_size), at.data_dir, [f"{why}: scored the held-out val split the config names; "
                                                  f"--data {at.data_dir}/train scores all of them"]


def _same_folder(data_dir: str, root: str) -> bool:
    """Whether ``data_dir`` is the run's data folder ``root`` or its ``train/`` (the same images either way)."""
    here = os.path.realpath(os.path.expanduser(data_dir))
    return here in {os.path.realpath(os.path.expanduser(p)) for p in (root, os.path.join(root, "train"))}


def _unused_val_note(data, cfg, named: bool, given: dict) -> list[str]:
    """A run that held out of its train split keeps doing so on its own data, named by ``--data`` (numbers stay
    comparable with the run's), even where that data has a test split of its own, which nothing would show."""
    if not named or data.own_val is None or cfg.val_split != "holdout" or "val_split" in given:
        return []
    return [f"{cfg.data_dir} has a split of its own ({data.own_val}), but the run held out its val split "
            f"({data.val_name}), which this scores; --split test scores {cfg.data_dir}'s own instead"]


def _with_transforms(cfg, raw: RawData, train: Dataset | None, val: Dataset, val_name: str,
                     img_size: int) -> DataSplits:
    """``train`` (``None`` for a test set) and ``val`` with the transforms of ``cfg`` at ``img_size``."""
    if raw.events:
        return _event_splits(cfg, raw, train, val, val_name, img_size)
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg.mean is not None else (raw.mean, raw.std)
    if len(mean) != raw.in_chans or len(std) != raw.in_chans:
        raise DataError(f"mean/std need {raw.in_chans} values (one per channel of {cfg.dataset}), "
                        f"got mean={mean}, std={std}")
    if raw.tensor_images and img_size != raw.native_size:
        raise DataError(f"{cfg.dataset} images are {raw.native_size}x{raw.native_size}; "
                        f"the model/img_size asks for {img_size}")
    return DataSplits(
        train=None if train is None else SeededTransform(train, train_transform(cfg, img_size, mean, std,
                                                                                raw.tensor_images)),
        val=SeededTransform(val, eval_transform(cfg, img_size, mean, std, raw.tensor_images)),
        val_name=val_name, classes=raw.classes, in_chans=raw.in_chans, img_size=img_size,
        mean=mean, std=std, own_val=raw.val_name)


def _model_T(cfg) -> int:
    """The model's own ``T``: event recordings are integrated into exactly that many frames."""
    import torch


    with torch.device("meta"):
        return create_model(cfg.model, **cfg.model_args).cfg.T


def _event_splits(cfg, raw: RawData, train: Dataset | None, val: Dataset, val_name: str, img_size: int) -> DataSplits:
    T = _model_T(cfg)
    aug = EventAugment(cfg.hflip, cfg.event_roll, cfg.event_policy) if cfg.event_aug else None
    return DataSplits(
        train=None if train is None else SeededTransform(train, EventFrames(T, cfg.split_by, raw.native_size, img_size,
                                                                            aug)),
        val=SeededTransform(val, EventFrames(T, cfg.split_by, raw.native_size, img_size)),
        val_name=val_name, classes=raw.classes, in_chans=raw.in_chans, img_size=img_size,
        mean=raw.mean, std=raw.std, collate=event_collate, own_val=raw.val_name)


def load_raw(dataset: str, data_dir: str, download: bool = False) -> RawData:
    """A dataset's train and test (or validation) parts as read from ``data_dir``: images or event recordings."""
    if dataset in EVENT_DATASETS:
        return load_event_raw(dataset, data_dir)
    return load_images(dataset, data_dir, download)


def load_labelled(dataset: str, data_dir: str) -> RawData:
    """A labelled set that a model trained on ``dataset`` is scored on (``build_test``): read as ``dataset`` is,
    but a CIFAR model's test set may also be class folders of images (the CIFAR-10 JPEG copy's layout)."""
    if dataset in EVENT_DATASETS:
        return load_event_raw(dataset, data_dir)
    return load_labelled_images(dataset, data_dir)
