"""Train/eval transforms through timm's ``create_transform`` (RandAugment, random erasing, crops)."""
from __future__ import annotations

import torch

__all__ = ["train_transform", "eval_transform", "Normalize"]


class Normalize:
    """``(x - mean) / std`` per channel, for datasets whose images already are tensors (digits)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def train_transform(cfg, img_size: int, mean, std, tensor_images: bool = False):
    """Random-resized crop (``scale``/``ratio``), flip, RandAugment (``aa``), normalize, random erasing."""
    if tensor_images:  # 8x8 digits: nothing to crop or augment at this size
        return Normalize(mean, std)
    from timm.data import create_transform

    return create_transform(
        input_size=img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip,
        color_jitter=cfg.color_jitter, auto_augment=cfg.aa, interpolation=cfg.interpolation,
        mean=tuple(mean), std=tuple(std), re_prob=cfg.reprob, re_mode=cfg.remode, re_count=1)


def eval_transform(cfg, img_size: int, mean, std, tensor_images: bool = False):
    """Resize to ``img_size / crop_pct``, center-crop ``img_size``, normalize."""
    if tensor_images:
        return Normalize(mean, std)
    from timm.data import create_transform

    return create_transform(input_size=img_size, is_training=False, interpolation=cfg.interpolation,
                            mean=tuple(mean), std=tuple(std), crop_pct=cfg.crop_pct)
