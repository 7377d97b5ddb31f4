"""Deterministic, resumable, shardable data order, and augmentation that depends on nothing else.

A run killed mid-epoch must resume onto exactly the batches (and the exact augmentations)
the uninterrupted run would have seen.  So the order of epoch ``e`` is a permutation seeded
by ``(seed, e)`` alone, it can start at any step, and each sample's augmentation is seeded
by ``(seed, e, index)``: independent of worker count, worker scheduling and global RNG state.
The same seeding lets ``GuardedLoader`` name the sample that broke a batch: loaded again, it fails again.
"""
from __future__ import annotations

import itertools
import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..utils.errors import DataError, InputError
from .sources import sample_source

__all__ = ["EpochSampler", "SeededTransform", "ShardSampler", "GuardedLoader", "SampleFailure"]


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
            raise InputError(f"{n} training images cannot fill one global batch of {batch_size} x {world} "
                             "processes: lower batch_size or use more data")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise InputError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
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

    def source(self, key) -> str:
        """Where sample ``key`` (an index, or ``(index, seed)``) is read from: its file, where it has one."""
        return sample_source(self.base, key[0] if isinstance(key, tuple) else key)

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


class SampleFailure(DataError):
    """A sample failed to load or transform in the middle of a run; the message names it and says why."""


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def failing_sample(loader, batch: int, error: Exception) -> str:
    """Which sample of batch ``batch`` of ``loader`` fails, and why, in one line.  The batch's samples
    are loaded again here, one by one (seeded, so a failure repeats), so the message is the sample's own
    error, never a DataLoader worker's traceback; ``error``'s first line if all of them load (a worker
    that the system killed, say)."""
    keys = next(itertools.islice(loader.batch_sampler, batch, None), [])
    for key in keys:
        try:
            loader.dataset[key]
        except Exception as e:  # whatever a file or a transform raises: reported, with the sample named
            source, why = loader.dataset.source(key), _first_line(e)
            return why if source in why else f"{source}: {type(e).__name__}: {why}"
    return f"loading the batch failed: {_first_line(error)}"


class GuardedLoader:
    """A ``DataLoader`` of a ``SeededTransform`` whose iteration raises ``SampleFailure`` naming the sample
    when a batch fails to load (``failing_sample``); every other attribute is the loader's."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        for i in itertools.count():
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:  # a worker re-raises whatever the sample raised, its traceback in the message
                why = failing_sample(self.loader, i, e)
                e.__traceback__ = None  # PyTorch's re-raise leaves the error in a cycle with frames holding the workers
                break
            yield batch
        # Stop the workers now: an iterator kept alive until garbage collection waits there 5 s on each worker.
        del batches
        raise SampleFailure(why)
