"""Data sources, held-out splits, deterministic resumable sampling and seeded augmentation."""
import pickle
import random

import numpy as np
import pytest
import torch

from spikingformer.data import (
    DataError,
    EpochSampler,
    SeededTransform,
    ShardSampler,
    balanced_split,
    build_data,
    holdout_name,
    load_raw,
)
from spikingformer.train.config import TrainConfig

from .helpers import CLASSES, write_class_tree


def cfg(**kw):
    return TrainConfig(**{"workers": 0, "holdout": 6, **kw})


# ---------------------------------------------------------------- held-out split

def test_balanced_split_is_class_balanced_disjoint_and_seeded():
    targets = [c for c in range(10) for _ in range(50)]
    rest, val = balanced_split(targets, 100, seed=0)
    assert sorted(rest + val) == list(range(500))
    assert np.bincount([targets[i] for i in val]).tolist() == [10] * 10
    assert balanced_split(targets, 100, seed=0) == (rest, val)
    assert balanced_split(targets, 100, seed=1)[1] != val


def test_balanced_split_uneven_classes_uses_largest_remainder():
    targets = [0] * 70 + [1] * 20 + [2] * 10
    _, val = balanced_split(targets, 11, seed=0)
    assert np.bincount([targets[i] for i in val]).tolist() == [8, 2, 1]  # 7.7, 2.2, 1.1


def test_balanced_split_can_hold_out_each_class_last_items():
    """pick="last": the official CIFAR10-DVS split (the last 10 % of each class in file order), seed-free."""
    targets = [c for c in range(3) for _ in range(20)]
    rest, val = balanced_split(targets, 6, seed=0, pick="last")
    assert val == [18, 19, 38, 39, 58, 59] and sorted(rest + val) == list(range(60))
    assert balanced_split(targets, 6, seed=1, pick="last") == (rest, val)
    assert holdout_name(6, 60, 0, "last") == "val (held-out 6 of 60 train images, class-balanced, " \
                                             "the last of each class by file name)"
    with pytest.raises(ValueError, match="pick must be 'random' or 'last'"):
        balanced_split(targets, 6, seed=0, pick="first")


@pytest.mark.parametrize("n", [0, 500])
def test_balanced_split_rejects_impossible_sizes(n):
    with pytest.raises(ValueError, match="need 0 < count < 500"):
        balanced_split([0, 1] * 250, n, seed=0)


# ---------------------------------------------------------------- sources

def test_folder_without_val_holds_out_and_names_it(tmp_path):
    write_class_tree(tmp_path / "train", per_class=6)
    d = build_data(cfg(dataset="folder", data_dir=str(tmp_path), holdout=6), img_size=16)
    assert d.classes == sorted(CLASSES) and len(d.train) == 12 and len(d.val) == 6
    assert d.val_name == "val (held-out 6 of 18 train images, class-balanced, seed 0)"
    assert sorted(np.bincount(d.val.base.targets).tolist()) == [2, 2, 2]
    x, y = d.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)


def test_folder_with_val_uses_it_and_accepts_jpeg(tmp_path):
    write_class_tree(tmp_path / "train", per_class=4, fmt="jpg")
    write_class_tree(tmp_path / "val", per_class=2, fmt="jpg")
    d = build_data(cfg(dataset="folder", data_dir=str(tmp_path)), img_size=16)
    assert len(d.train) == 12 and len(d.val) == 6 and d.val_name.startswith("val (") and "held-out" not in d.val_name
    d = build_data(cfg(dataset="folder", data_dir=str(tmp_path), val_split="holdout", holdout=3), img_size=16)
    assert len(d.val) == 3 and "held-out 3 of 12" in d.val_name


def kaggle_imagenet(top, wnids=("n01440764", "n01443537", "n01484850"), labels=None):
    """Kaggle's ImageNet release in miniature: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/*.JPEG}`` and
    ``LOC_val_solution.csv`` at the top; val image i is of class ``i % 3``.  Returns the data_dir."""
    from PIL import Image

    root = top / "ILSVRC" / "Data" / "CLS-LOC"
    write_class_tree(root / "train", per_class=2, classes=wnids, fmt="jpg")
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i in range(6):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        Image.new("RGB", (16, 16), ((60 * i) % 255, 0, 0)).save(root / "val" / f"{name}.JPEG")
        rows.append(f"{name},{wnids[i % 3]} 1 2 10 12 {wnids[i % 3]} 0 0 5 5 ")
    (top / "LOC_val_solution.csv").write_text("\n".join(labels or rows) + "\n")
    return root


def test_kaggles_flat_imagenet_val_is_labelled_by_its_csv(tmp_path):
    root = kaggle_imagenet(tmp_path)
    d = build_data(cfg(dataset="folder", data_dir=str(root)), img_size=16)
    assert d.classes == ["n01440764", "n01443537", "n01484850"] and len(d.train) == 6 and len(d.val) == 6
    assert d.val_name == f"val ({root / 'val'}, 6 images labelled by {tmp_path / 'LOC_val_solution.csv'})"
    assert d.val.base.targets == [0, 1, 2, 0, 1, 2]
    x, y = d.val[4]
    assert x.shape == (3, 16, 16) and y == 1


def test_kaggles_csv_saved_with_a_bom_and_windows_line_ends_reads(tmp_path):
    """A spreadsheet's "CSV UTF-8" starts with a byte-order mark; the header is still ImageId,PredictionString."""
    root = kaggle_imagenet(tmp_path)
    csv_file = tmp_path / "LOC_val_solution.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes().replace(b"\n", b"\r\n"))
    assert load_raw("folder", str(root)).val.targets == [0, 1, 2, 0, 1, 2]


def test_kaggles_csv_is_found_above_a_relative_data_dir(tmp_path, monkeypatch):
    """Run from the release's ILSVRC/Data/ with data_dir CLS-LOC: the CSV two folders up is still found."""
    root = kaggle_imagenet(tmp_path)
    monkeypatch.chdir(root.parent)
    assert load_raw("folder", "CLS-LOC").val.targets == [0, 1, 2, 0, 1, 2]


def test_a_val_folder_half_sorted_into_class_folders_is_named(tmp_path):
    """valprep.sh stopped midway: ImageFolder would validate on the sorted images alone, silently."""
    root = kaggle_imagenet(tmp_path)
    for i, wnid in enumerate(("n01440764", "n01443537", "n01484850"), 1):
        (root / "val" / wnid).mkdir()
        (root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").rename(root / "val" / wnid / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DataError, match=r"holds class folders and 3 images outside them .*ILSVRC2012_val_00000004"):
        load_raw("folder", str(root))


@pytest.mark.parametrize("labels,msg", [
    (None, r"has no class folders: sort its images into .*/val/<class>/ .*valprep.sh.*LOC_val_solution.csv"),
    (["ImageId,PredictionString", "ILSVRC2012_val_00000001,n01440764 1 2 3 4"],
     r"does not match .*LOC_val_solution.csv: 5 images without a label \(e.g. \['ILSVRC2012_val_00000002.JPEG'"),
    (["ImageId,PredictionString"] + [f"ILSVRC2012_val_{i:08d},n09999999 1 2 3 4" for i in range(1, 7)],
     r"classes that are no train folder: \['n09999999'\]"),
    (["id,label", "ILSVRC2012_val_00000001,n01440764"], r"expected Kaggle's ImageNet labels, a header ImageId"),
])
def test_a_flat_val_folder_without_matching_labels_is_named(tmp_path, labels, msg):
    root = kaggle_imagenet(tmp_path, labels=labels)
    if labels is None:
        (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataError, match=msg):
        load_raw("folder", str(root))


def test_bare_class_tree_is_the_training_set(tmp_path):
    write_class_tree(tmp_path, per_class=3)
    assert len(build_data(cfg(dataset="folder", data_dir=str(tmp_path), holdout=3), 16).train) == 6


def test_limits_are_balanced_and_named(tmp_path):
    write_class_tree(tmp_path / "train", per_class=8)
    d = build_data(cfg(dataset="folder", data_dir=str(tmp_path), holdout=6, limit_train=9, limit_val=3), 16)
    assert len(d.train) == 9 and len(d.val) == 3 and d.val_name.endswith("limited to 3 val images")


@pytest.mark.parametrize("make,msg", [
    (lambda p: None, "does not exist: expected a class-folder tree"),
    (lambda p: p.mkdir(), "expected one folder per class"),
    (lambda p: (p / "train" / "cat").mkdir(parents=True), "expected one folder per class"),
])
def test_missing_folder_data_says_what_was_expected_where(tmp_path, make, msg):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=msg) as e:
        load_raw("folder", str(root))
    assert str(root) in str(e.value)


def test_corrupt_image_is_named(tmp_path):
    write_class_tree(tmp_path / "train", per_class=2)
    (tmp_path / "train" / "cat" / "000.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot decode image .*cat/000\.png"):
        load_raw("folder", str(tmp_path))


def test_a_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    from PIL import Image

    write_class_tree(tmp_path / "train", per_class=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16x16 = 256 pixels > 2 x 100: PIL refuses to decode
    with pytest.raises(DataError, match=r"cannot decode image .*cat/000\.png: .*decompression bomb"):
        load_raw("folder", str(tmp_path))


def test_val_classes_must_match_train(tmp_path):
    write_class_tree(tmp_path / "train", per_class=2)
    write_class_tree(tmp_path / "val", per_class=1, classes=("cat", "dog", "horse"))
    with pytest.raises(DataError, match=r"same class folders.*\['frog', 'horse'\]"):
        load_raw("folder", str(tmp_path))


def test_missing_cifar_names_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py/ \(data_batch_1\.\.5.*set download: true"):
        load_raw("cifar10", str(tmp_path))
    with pytest.raises(DataError, match=r"cifar-100-python/"):
        load_raw("cifar100", str(tmp_path))


def test_cifar_pointed_at_class_folders_says_dataset_folder_reads_them(tmp_path):
    """The CIFAR-10 JPEG copy (train/<class>/*.jpg) given to a cifar10 recipe: the error says what reads it."""
    write_class_tree(tmp_path / "train", per_class=1, fmt="jpg")
    with pytest.raises(DataError, match=r"cifar-10-batches-py/ \(.*\); .*train holds class folders, which "
                                        r"dataset: folder reads \(as configs/cifar10_jpeg.yaml"):
        load_raw("cifar10", str(tmp_path))
    (tmp_path / "damaged" / "cifar-10-batches-py").mkdir(parents=True)  # the right layout, files missing
    with pytest.raises(DataError, match=r"set download: true"):
        load_raw("cifar10", str(tmp_path / "damaged"))


def test_cifar_canonical_format(tmp_path, monkeypatch):
    """torchvision's pickled batches (checksums are checked against the real files, so skip that here)."""
    import torchvision

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 5)]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = build_data(cfg(dataset="cifar10", data_dir=str(tmp_path)), img_size=32)
    assert len(d.train) == 20 and d.val_name == f"test (official CIFAR10 test split of {tmp_path}, 5 images)"
    assert d.val[0][0].shape == (3, 32, 32)
    d = build_data(cfg(dataset="cifar10", data_dir=str(tmp_path), val_split="holdout", holdout=10), img_size=32)
    assert len(d.train) == 10 and "held-out 10 of 20" in d.val_name


def test_digits_hold_out_a_named_split():
    d = build_data(cfg(dataset="digits", holdout=360), img_size=8)
    assert (len(d.train), len(d.val), d.in_chans) == (1437, 360, 1)
    assert d.val_name == "val (held-out 360 of 1797 train images, class-balanced, seed 0)"
    with pytest.raises(DataError, match="8x8"):
        build_data(cfg(dataset="digits"), img_size=16)
    with pytest.raises(DataError, match="holdout > 0"):
        build_data(cfg(dataset="digits", holdout=0), img_size=8)


# ---------------------------------------------------------------- sampling and augmentation

def test_epoch_sampler_is_deterministic_and_resumable():
    s = EpochSampler(100, batch_size=8, seed=3)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 96 == len(set(i for i, _ in full))  # 12 full batches, remainder dropped
    assert full == list(s)
    s.set_epoch(2, start_step=5)
    assert list(s) == full[40:] and len(s) == 56
    s.set_epoch(3)
    assert list(s) != full


def test_shards_together_cover_the_single_process_batches():
    """Step i of every process = batch i of one process with the global batch: what makes DDP match."""
    one = EpochSampler(64, batch_size=8, seed=0)
    one.set_epoch(1)
    single = [i for i, _ in one]
    shards = []
    for rank in range(2):
        s = EpochSampler(64, batch_size=4, seed=0, rank=rank, world=2)
        s.set_epoch(1)
        shards.append([i for i, _ in s])
    for step in range(8):
        both = shards[0][step * 4:(step + 1) * 4] + shards[1][step * 4:(step + 1) * 4]
        assert sorted(both) == sorted(single[step * 8:(step + 1) * 8])
    assert sorted(sum((list(ShardSampler(10, r, 3)) for r in range(3)), [])) == list(range(10))


def test_seeded_augmentation_ignores_global_rng_and_leaves_it_alone(tmp_path):
    write_class_tree(tmp_path / "train", per_class=2)
    d = build_data(cfg(dataset="folder", data_dir=str(tmp_path), holdout=3, aa="rand-m9-n1-mstd0.4-inc1",
                       reprob=0.5, scale=(0.3, 1.0)), img_size=16)
    assert isinstance(d.train, SeededTransform)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    a = d.train[(0, 1234)][0]
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    b = d.train[(0, 1234)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, d.train[(0, 999)][0])
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    d.train[(0, 1234)]
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
    assert (np.random.get_state()[1] == state[2]).all()
