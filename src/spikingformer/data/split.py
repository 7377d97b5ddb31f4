"""Seeded, class-balanced subsets: the held-out validation split, smoke-test limits and the samples that
figures read off part of a split are computed on."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset, Subset

from ..utils.errors import InputError

__all__ = ["balanced_split", "holdout_name", "split_sample"]


def balanced_split(targets: Sequence[int], n_pick: int, seed: int, pick: str = "random") -> tuple[list[int], list[int]]:
    """Pick ``n_pick`` indices with every class in proportion to its share; return ``(rest, picked)``.

    Each class gets ``n_pick * count_c / N`` rounded by largest remainder (ties to the
    smaller class index), so a balanced dataset yields exactly equal shares.  Within a
    class the choice is a seeded permutation (``pick="random"``): the same ``(targets,
    n_pick, seed)`` gives the same split on every machine; or the class's last indices
    (``pick="last"``), which for files listed by name is the split of the official
    Spikformer/Spikingformer CIFAR10-DVS code (the last 10 % of each class).  Both lists are sorted.
    """
    if pick not in ("random", "last"):
        raise InputError(f"pick must be 'random' or 'last', got {pick!r}")
    t = torch.as_tensor(list(targets), dtype=torch.long)
    n = len(t)
    if not 0 < n_pick < n:
        raise InputError(f"cannot pick {n_pick} of {n} images: need 0 < count < {n}")
    classes, counts = torch.unique(t, return_counts=True)
    exact = counts.double() * n_pick / n
    share = exact.floor().long()
    short = n_pick - int(share.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - share[i]).item(), i))
    for i in order[:short]:
        share[i] += 1
    g = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    for c, k in zip(classes.tolist(), share.tolist()):
        idx = torch.nonzero(t == c).flatten()
        picked += (idx[len(idx) - k:] if pick == "last" else idx[torch.randperm(len(idx), generator=g)[:k]]).tolist()
    chosen = set(picked)
    return [i for i in range(n) if i not in chosen], sorted(picked)


def holdout_name(n_val: int, n_total: int, seed: int, pick: str = "random") -> str:
    """The name every report gives a held-out split, so nobody mistakes it for an official one."""
    how = f"seed {seed}" if pick == "random" else "the last of each class by file name"
    return f"val (held-out {n_val} of {n_total} train images, class-balanced, {how})"


def split_sample(ds: Dataset, n: int, seed: int) -> tuple[Dataset, str]:
    """A seeded, class-balanced sample of ``n`` items of the split ``ds`` (all of it when ``n`` covers it), and
    how reports name it: ``"256 of 5000 images, class-balanced, seed 0"`` or ``"all 5000 images"``.

    Splits are stored class by class (a class-folder tree, a held-out split's sorted indices), so their first
    batches are one class: a figure read off them (firing rate, energy) is that class's, not the split's."""
    targets = _targets(ds)
    if n >= len(targets):
        return ds, f"all {len(targets)} images"
    _, picked = balanced_split(targets, n, seed)
    return Subset(ds, picked), f"{n} of {len(targets)} images, class-balanced, seed {seed}"


def _targets(ds: Dataset) -> Sequence[int]:
    """The labels of ``ds``, or of the dataset it wraps (``SeededTransform`` and the like: ``base``)."""
    while not hasattr(ds, "targets"):
        ds = ds.base
    return ds.targets
