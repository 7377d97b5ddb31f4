"""Progress of every command's loops: a tqdm bar on a terminal, plain periodic lines in a log.

A bar redraws itself with carriage returns, which turn a redirected log (``spikingformer train ... >
run.log 2>&1``) into one long line of overwritten text.  So ``progress_bar`` draws a bar only where
stderr is a terminal; elsewhere it writes a plain line such as
``epoch 3/10: 120/703 (17 %), 41.2 it/s, 14 s left, loss=2.113`` every ``every`` seconds.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable

__all__ = ["progress_bar", "LOG_EVERY_S"]

LOG_EVERY_S = 30.0


def progress_bar(iterable: Iterable, desc: str, *, total: int | None = None, initial: int = 0,
                 enabled: bool = True, every: float | None = None):
    """``iterable`` behind a progress display on stderr: a tqdm bar on a terminal, else a line every ``every``
    seconds (default ``LOG_EVERY_S``; none at all when not ``enabled``).  ``total`` counts from 0 and ``initial`` items are already done,
    as tqdm takes them.  Both have ``set_postfix(**kw)`` and ``write(msg)`` (to stdout, shown either way)."""
    if total is None and hasattr(iterable, "__len__"):
        total = initial + len(iterable)
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm  # a training extra: a plain library call (enabled=False, or a log) does not need it

        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True)
    return _Lines(iterable, desc, total, initial, (LOG_EVERY_S if every is None else every) if enabled else None)


class _Lines:
    """What ``progress_bar`` gives where stderr is not a terminal."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int, every: float | None):
        self.iterable, self.desc, self.total, self.initial, self.every = iterable, desc, total, initial, every
        self.postfix = ""

    def __iter__(self):
        last, n_last = time.monotonic(), self.initial
        n = self.initial
        for item in self.iterable:
            yield item
            n += 1
            now = time.monotonic()
            if self.every is not None and now - last >= self.every:
                print(self._line(n, n - n_last, now - last), file=sys.stderr, flush=True)
                last, n_last = now, n

    def _line(self, n: int, done: int, seconds: float) -> str:
        """Where the loop stands, at the rate of the ``done`` items of the last ``seconds`` (a first step that
        compiles, or a machine that got busier, fades out of the estimate of the time left)."""
        rate = done / seconds if seconds > 0 else 0.0
        where = f"{n}/{self.total} ({100 * n / self.total:.0f} %)" if self.total else f"{n}"
        left = f", {(self.total - n) / rate:.0f} s left" if self.total and rate > 0 else ""
        return f"{self.desc}: {where}, {rate:.3g} it/s{left}" + (f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    @staticmethod
    def write(msg: str) -> None:
        print(msg, flush=True)
