"""Small fixtures cut from the real data beside the repository (../shared/data), for tests that run as a user does."""
from __future__ import annotations

import atexit
import functools
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CIFAR_JPEG = SHARED / "cifar10-train-jpeg.tar.gz"


CACHED_PER_CLASS = 30  # the most any test takes; one pass over the 16 MB tarball costs about 1.6 s


def _wanted(tar: tarfile.TarFile, per_class: int) -> list[tarfile.TarInfo]:
    return [m for m in tar if m.isfile() and Path(m.name).stem.isdigit() and int(Path(m.name).stem) < per_class]


@functools.lru_cache(maxsize=None)
def _unpacked_once() -> Path:
    """The first ``CACHED_PER_CLASS`` JPEGs of every class, unpacked once per test session into a folder
    removed at exit: the tests copy theirs from it (the same files, modes and times as the tarball's)."""
    root = Path(tempfile.mkdtemp(prefix="cifar10-jpeg-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    with tarfile.open(CIFAR_JPEG) as tar:
        tar.extractall(root, members=_wanted(tar, CACHED_PER_CLASS), filter="data")
    return root


def cifar_jpeg_tree(root: Path, per_class: int) -> Path:
    """``root/train/CLASS/NNNN.jpg``: the first ``per_class`` real CIFAR-10 JPEGs of every class, unpacked from
    the tarball (skips the test where it is not available).  Returns ``root``."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} not available")
    if per_class > CACHED_PER_CLASS:
        with tarfile.open(CIFAR_JPEG) as tar:
            tar.extractall(root, members=_wanted(tar, per_class), filter="data")
        return root
    cache = _unpacked_once()
    for f in sorted(cache.rglob("*.jpg")):
        if int(f.stem) < per_class:
            (root / f.relative_to(cache)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, root / f.relative_to(cache))
    return root
