"""Tiny image fixtures written on the fly: never depend on downloaded data in tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("cat", "dog", "frog")


def write_class_tree(root: Path, per_class: int = 6, size: int = 16, classes=CLASSES, fmt: str = "png",
                     seed: int = 0) -> Path:
    """``root/<class>/<i>.<fmt>``: noisy images whose mean colour depends on the class (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3))
            base[..., c % 3] = 200
            img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.{fmt}")
    return root
