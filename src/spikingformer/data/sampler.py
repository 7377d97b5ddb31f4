"""Deterministic, resumable, shardable data order, and augmentation that depends on nothing else.

A run killed mid-epoch must resume onto exactly the batches (and the exact augmentations)
the uninterrupted run would have seen.  So the order of epoch ``e`` is a permutation seeded
by ``(seed, e)`` alone, it can start at any step, and each sample's augmentation is seeded
by ``(seed, e, index)``: independent of worker count, worker scheduling and global RNG state.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSampler", "SeededTransform", "ShardSampler"]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class EpochSampler(Sampler):
    """Shuffled training order for one process of ``world``; yields ``(index, sample_seed)``.

    Every epoch uses ``steps_per_epoch * batch_size * world`` images of a ``(seed, epoch)``
    permutation (the remainder is dropped, as with ``drop_last``); process ``rank`` takes
    every ``world``-th of them, as ``DistributedSampler`` does.  Step ``i`` of every
    process together therefore covers exactly positions ``[i*B, (i+1)*B)`` of the
    permutation, with ``B`` the global batch: the same images a single process with batch
    ``B`` sees.  ``set_epoch(e, start_step)`` skips the steps already done.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        super().__init__()
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps_per_epoch = n // (batch_size * world)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{n} training images cannot fill one global batch of {batch_size} x {world} "
                             "processes: lower batch_size or use more data")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = _epoch_generator(self.seed, self.epoch)
        perm = torch.randperm(self.n, generator=g)
        sample_seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        mine = perm[: self.steps_per_epoch * self.batch_size * self.world][self.rank:: self.world]
        for i in mine[self.start_step * self.batch_size:].tolist():
            yield i, int(sample_seeds[i])


class ShardSampler(Sampler):
    """Evaluation order: process ``rank`` takes indices ``rank, rank + world, ...`` (no padding, no duplicates)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        super().__init__()
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class SeededTransform(Dataset):
    """Wrap ``base`` (yielding ``(image, target)``); ``ds[(index, seed)]`` applies ``transform``
    with Python's, NumPy's and torch's RNGs seeded by ``seed``, restoring them afterwards
    (timm's RandAugment and random erasing draw from all three)."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, target = self.base[index]
        if seed is None:
            return self.transform(img), target
        py, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # CPU only: never touch a CUDA RNG
            try:
                return self.transform(img), target
            finally:
                random.setstate(py)
                np.random.set_state(np_state)
