"""Lazy on-disk cache of DVS128 Gesture's labelled windows: each shuffled sample is one small file load.

A Gesture sample is one labelled window (~6 s) of an AEDAT 3.1 recording that holds ~11 of them (~1e6 events):
parsing the recording for every shuffled sample costs ~45 ms, loading one cut window ~1 ms.  So, like
SpikingJelly's one-time ``events_np`` extraction but lazily, the first time any window of a recording is needed the
recording is parsed once and ALL its labelled windows are written; later reads (any worker, any later run) load
one file.  The windows are cut exactly as without the cache (``start <= t < end``), so frames do not change.

Where: ``$SPIKINGFORMER_EVENT_CACHE`` when set (``off`` disables the cache), else
``${XDG_CACHE_HOME:-~/.cache}/spikingformer/events``; below it ``dvs128_gesture/<folder>-<hash>/`` where the hash
is of the recordings folder's absolute path, one ``<recording>_<start>_<end>.npz`` per window.  Not beside the
data: dataset folders are often read-only or shared between users, and the release folder stays as downloaded.

Safety: a file is an uncompressed ``.npz`` of ``events`` (``EVENT_DTYPE``) and ``meta`` = (format version, size
and mtime_ns of the recording, start, end, event count), written to a temporary file in the same folder and
``os.replace``d into place, so concurrent DataLoader workers and a killed run leave a whole file or none (a
leftover ``.*.tmp`` is never read).  It is read back with ``allow_pickle=False``; one whose ``meta`` disagrees
with the recording now on disk (stale) or that fails to load (truncated, zip CRC mismatch) is rebuilt, never
trusted.  If the folder cannot be written, samples are parsed from the recordings (one warning per process).
CIFAR10-DVS (one AEDAT 2.0 file per sample, parsed about as fast as its cached copy would load) and N-MNIST
(tiny files, parsed faster than an ``.npz`` loads) gain too little to be worth the disk, so they read directly.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import event_formats
from .event_formats import EVENT_DTYPE

__all__ = ["CACHE_ENV", "cache_root", "GestureWindows"]

CACHE_ENV = "SPIKINGFORMER_EVENT_CACHE"
_VERSION = 1            # bump when the files' content or layout changes: older files then count as stale
_unwritable: set[str] = set()  # cache folders this process failed to write (warned once, then parse-only)


def cache_root(value: str | os.PathLike | None = None) -> Path | None:
    """The event cache's root: ``value``, else ``$SPIKINGFORMER_EVENT_CACHE``, else the user cache folder;
    ``None`` (no cache) for ``off``."""
    value = os.environ.get(CACHE_ENV) if value is None else os.fspath(value)
    if value is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        return (base / "spikingformer" / "events").absolute()
    if value.strip().lower() in ("off", "none", "0", ""):
        return None
    return Path(value).expanduser().absolute()


@functools.lru_cache(maxsize=1)
def _parsed_aedat3(path: str) -> np.ndarray:
    """Without a usable cache: one parsed recording per process (helps evaluation, which reads a recording's
    windows back to back; shuffled training parses one recording per sample)."""
    return event_formats.read_aedat3(path)


def _cut(ev: np.ndarray, start: int, end: int) -> np.ndarray:
    return ev[(ev["t"] >= start) & (ev["t"] < end)]


class GestureWindows:
    """DVS128 Gesture sample reader: ``self(recording, start, end)`` gives the recording's events with
    ``start <= t < end``.  ``windows`` maps each recording (``str(path)``) to all its labelled ``(start, end)``,
    written together on first use; ``cache``: the cache root (``cache_root()``), ``None`` to always parse."""

    def __init__(self, raw_dir: Path, windows: dict[str, list[tuple[int, int]]], cache: Path | None):
        self.windows = {str(k): [(int(s), int(e)) for s, e in v] for k, v in windows.items()}
        raw_dir = Path(raw_dir).resolve()
        key = hashlib.sha256(str(raw_dir).encode()).hexdigest()[:16]
        self.dir = None if cache is None else Path(cache) / "dvs128_gesture" / f"{raw_dir.name}-{key}"

    def __repr__(self) -> str:
        return f"GestureWindows(cache={str(self.dir) if self.dir else None!r}, recordings={len(self.windows)})"

    def file(self, path, start: int, end: int) -> Path:
        return self.dir / f"{Path(path).stem}_{int(start)}_{int(end)}.npz"

    def __call__(self, path, start: int, end: int) -> np.ndarray:
        path = Path(path)
        if self.dir is None:
            return _cut(_parsed_aedat3(str(path)), start, end)
        try:
            st = path.stat()
        except OSError:  # the reader names the missing recording
            return _cut(_parsed_aedat3(str(path)), start, end)
        source = (st.st_size, st.st_mtime_ns)
        ev = _load(self.file(path, start, end), (_VERSION, *source, int(start), int(end)))
        if ev is not None:
            return ev
        if str(self.dir) in _unwritable:
            return _cut(_parsed_aedat3(str(path)), start, end)
        return self._build(path, source, int(start), int(end))

    def _build(self, path: Path, source: tuple[int, int], start: int, end: int) -> np.ndarray:
        """Parse the recording once, write all its labelled windows (and the asked one), return the asked one."""
        ev = event_formats.read_aedat3(path)
        wanted = _cut(ev, start, end)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for s, e in dict.fromkeys([(start, end)] + self.windows.get(str(path), [])):
                w = wanted if (s, e) == (start, end) else _cut(ev, s, e)
                _store(self.file(path, s, e), (_VERSION, *source, s, e, len(w)), w)
        except OSError as err:
            _unwritable.add(str(self.dir))
            warnings.warn(f"event cache {self.dir} cannot be written ({type(err).__name__}: {err}); DVS128 Gesture "
                          f"samples are parsed from their recordings instead (slow for shuffled training). Set "
                          f"{CACHE_ENV} to a writable folder, or to 'off' to silence this.", RuntimeWarning,
                          stacklevel=3)
        return wanted


def _load(f: Path, meta: tuple[int, ...]) -> np.ndarray | None:
    """The cached window, or ``None`` when missing, unreadable, truncated, stale (``meta`` differs) or malformed."""
    try:
        with np.load(f, allow_pickle=False) as z:
            stored, ev = z["meta"], z["events"]  # reading a member whole checks its zip CRC
    except Exception:  # FileNotFoundError, BadZipFile (truncated, CRC), ValueError, KeyError, EOFError
        return None
    if stored.shape != (len(meta) + 1,) or tuple(stored[:-1].tolist()) != meta:
        return None
    if ev.dtype != EVENT_DTYPE or ev.shape != (int(stored[-1]),):
        return None
    return ev


def _store(f: Path, meta: tuple[int, ...], events: np.ndarray) -> None:
    """Write ``f`` atomically: a temporary file in the same folder, then ``os.replace`` (no fsync: a file torn by
    a power loss fails its CRC or ``meta`` check on reading and is rebuilt)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".tmp", dir=f.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
            np.savez(fh, meta=np.asarray(meta, np.int64), events=events)
        os.replace(tmp, f)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
