"""Train/eval transforms through timm's ``create_transform`` (RandAugment, random erasing, crops)."""
from __future__ import annotations

import torch

__all__ = ["train_transform", "eval_transform", "Normalize", "posterize_zero_bits_black"]


class Normalize:
    """``(x - mean) / std`` per channel, for datasets whose images already are tensors (digits)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def posterize_zero_bits_black(img, bits_to_keep, **kwargs):
    """timm's posterize op, giving for 0 bits what it gave on the Pillow the official runs used.

    RandAugment's ``PosterizeIncreasing`` keeps ``4 - int(m / 10 * 4)`` bits, so 0 at the largest
    magnitude, which magnitude noise (``mstd``) reaches now and then (``Posterize`` keeps 0 at magnitude
    0).  Pillow before 13 posterized with the mask ``~(2 ** (8 - bits) - 1)``, which for 0 bits is
    ``~255``: every pixel value becomes 0, an all-black image.  Pillow 13 refuses 0 bits (``ValueError``)
    in the middle of an epoch; this reproduces the black image, on every Pillow, with the same point
    table; other bit counts go to timm's op unchanged.
    """
    from timm.data.auto_augment import posterize

    if bits_to_keep < 1:
        return img.point([0] * (256 * len(img.getbands())))
    return posterize(img, bits_to_keep, **kwargs)


def _augment_ops(transform):
    """Every timm ``AugmentOp`` inside ``transform`` (RandAugment's ``ops``, AutoAugment's ``policy``, ...)."""
    from timm.data.auto_augment import AugmentOp

    stack = [transform]
    while stack:
        t = stack.pop()
        if isinstance(t, AugmentOp):
            yield t
        elif isinstance(t, (list, tuple)):
            stack.extend(t)
        else:
            stack.extend(getattr(t, name) for name in ("transforms", "ops", "policy") if hasattr(t, name))


def _posterize_as_pillow_12(transform):
    """Point ``transform``'s posterize ops at ``posterize_zero_bits_black`` (their draws are untouched)."""
    from timm.data.auto_augment import posterize

    for op in _augment_ops(transform):
        if op.aug_fn is posterize:
            op.aug_fn = posterize_zero_bits_black
    return transform


def train_transform(cfg, img_size: int, mean, std, tensor_images: bool = False):
    """Random-resized crop (``scale``/``ratio``), flip, RandAugment (``aa``), normalize, random erasing.
    RandAugment's posterize gives a black image at 0 bits, as the papers' runs had it on Pillow < 13
    (``posterize_zero_bits_black``)."""
    if tensor_images:  # 8x8 digits: nothing to crop or augment at this size
        return Normalize(mean, std)
    from timm.data import create_transform

    return _posterize_as_pillow_12(create_transform(
        input_size=img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip,
        color_jitter=cfg.color_jitter, auto_augment=cfg.aa, interpolation=cfg.interpolation,
        mean=tuple(mean), std=tuple(std), re_prob=cfg.reprob, re_mode=cfg.remode, re_count=1))


def eval_transform(cfg, img_size: int, mean, std, tensor_images: bool = False):
    """Resize to ``img_size / crop_pct``, center-crop ``img_size``, normalize."""
    if tensor_images:
        return Normalize(mean, std)
    from timm.data import create_transform

    return create_transform(input_size=img_size, is_training=False, interpolation=cfg.interpolation,
                            mean=tuple(mean), std=tuple(std), crop_pct=cfg.crop_pct)
