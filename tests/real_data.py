"""Small fixtures cut from the real data beside the repository (../shared/data), for tests that run as a user does."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CIFAR_JPEG = SHARED / "cifar10-train-jpeg.tar.gz"


def cifar_jpeg_tree(root: Path, per_class: int) -> Path:
    """``root/train/CLASS/NNNN.jpg``: the first ``per_class`` real CIFAR-10 JPEGs of every class, unpacked from
    the tarball (skips the test where it is not available).  Returns ``root``."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} not available")
    with tarfile.open(CIFAR_JPEG) as tar:
        wanted = [m for m in tar if m.isfile() and Path(m.name).stem.isdigit() and int(Path(m.name).stem) < per_class]
        tar.extractall(root, members=wanted, filter="data")
    return root
