"""Datasets for training and evaluation: ``build_data(cfg)`` gives train/val splits with transforms.

Sources (``cfg.dataset``): ``cifar10``/``cifar100`` in torchvision's canonical format,
``folder`` (any class-folder tree: ImageNet's ``train/`` + ``val/``, or the CIFAR-10 JPEG
copy's ``train/``), ``digits`` (scikit-learn's bundled 8x8 digits), and the event datasets
``nmnist``, ``dvs128_gesture``, ``cifar10_dvs`` (``events``: recordings integrated into the
model's ``T`` frames, batched time-major by ``collate``).  A dataset without a
validation split gets a seeded class-balanced held-out one, and its name says so
(``val_name``) in every report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch.utils.data import Dataset

from .sampler import EpochSampler, GuardedLoader, SampleFailure, SeededTransform, ShardSampler
from .sources import DATASET_STATS, DataError, RawData, Subset, load_raw
from .split import balanced_split, holdout_name

__all__ = ["DataSplits", "build_data", "DataError", "EpochSampler", "ShardSampler", "SeededTransform",
           "GuardedLoader", "SampleFailure", "balanced_split", "holdout_name", "load_raw", "DATASET_STATS"]


@dataclass
class DataSplits:
    train: SeededTransform   # index with (index, seed) for seeded augmentation
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
    from .transforms import eval_transform, train_transform

    raw = load_raw(cfg.dataset, cfg.data_dir, cfg.download)
    train, val, val_name = split_train_val(raw, cfg.val_split, cfg.holdout, cfg.seed, cfg.holdout_pick)
    train, _ = _limit(train, cfg.limit_train, cfg.seed, "train")
    val, note = _limit(val, cfg.limit_val, cfg.seed, "val")
    if raw.events:
        return _event_splits(cfg, raw, train, val, val_name + note, img_size)
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg.mean is not None else (raw.mean, raw.std)
    if len(mean) != raw.in_chans or len(std) != raw.in_chans:
        raise DataError(f"mean/std need {raw.in_chans} values (one per channel of {cfg.dataset}), "
                        f"got mean={mean}, std={std}")
    if raw.tensor_images and img_size != raw.native_size:
        raise DataError(f"{cfg.dataset} images are {raw.native_size}x{raw.native_size}; "
                        f"the model/img_size asks for {img_size}")
    return DataSplits(
        train=SeededTransform(train, train_transform(cfg, img_size, mean, std, raw.tensor_images)),
        val=SeededTransform(val, eval_transform(cfg, img_size, mean, std, raw.tensor_images)),
        val_name=val_name + note, classes=raw.classes, in_chans=raw.in_chans, img_size=img_size,
        mean=mean, std=std, own_val=raw.val_name)


def _model_T(cfg) -> int:
    """The model's own ``T``: event recordings are integrated into exactly that many frames."""
    import torch

    from .. import create_model

    with torch.device("meta"):
        return create_model(cfg.model, **cfg.model_args).cfg.T


def _event_splits(cfg, raw: RawData, train: Dataset, val: Dataset, val_name: str, img_size: int) -> DataSplits:
    from .events import EventAugment, EventFrames, event_collate

    T = _model_T(cfg)
    aug = EventAugment(cfg.hflip, cfg.event_roll, cfg.event_policy) if cfg.event_aug else None
    return DataSplits(
        train=SeededTransform(train, EventFrames(T, cfg.split_by, raw.native_size, img_size, aug)),
        val=SeededTransform(val, EventFrames(T, cfg.split_by, raw.native_size, img_size)),
        val_name=val_name, classes=raw.classes, in_chans=raw.in_chans, img_size=img_size,
        mean=raw.mean, std=raw.std, collate=event_collate, own_val=raw.val_name)
