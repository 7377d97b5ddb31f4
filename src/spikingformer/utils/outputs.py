"""Files written whole or not at all: the writers every command's ``--json``, ``--csv`` and ``--plot`` files,
checkpoints and run records go through (``atomic_write``: a temporary file renamed into place), and the check
those paths pass before a command's work (``check_output``)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import InputError

__all__ = ["write_json", "write_csv", "atomic_write", "output_path", "check_output",
           "save_figure", "FIGURE_SUFFIXES"]


@contextlib.contextmanager
def writing(path: Path | str):
    """Report a failed write (a full disk, a read-only file system) as ``OSError("cannot write PATH: why")``,
    naming the file asked for rather than the temporary file it was being written through."""
    try:
        yield
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from e


def atomic_write(path: Path | str, write: Callable) -> None:
    """Write ``path`` all or nothing: ``write(f)`` fills a temporary file (binary) in the same folder, which
    is flushed to disk and renamed over ``path``; a reader, or a run killed mid-write, never sees half a
    file, and a failed write leaves no temporary file behind (``OSError("cannot write PATH: why")``)."""
    with writing(path):
        path = output_path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; these are ordinary files
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_path(path: Path | str) -> Path:
    """``path`` of a file to write, its folder created first: a missing folder must not lose the work
    done before writing (a training run, an energy estimate)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# what save_figure writes, by the file's suffix
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_output(option: str, path: Path | str | None, folder: bool = False, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, as ``ValueError("OPTION PATH: why")``, an output file (a folder when ``folder``) that could not
    be written, or whose suffix is none of ``suffixes`` (when given): a command calls this before its work,
    so that a bad path does not lose that work.
    Nothing is created: the writers make missing folders, so the nearest existing one must take them."""
    if not path:
        return
    named, path = f"{option} {path}", Path(path)
    if path.is_dir() and not folder:
        raise InputError(f"{named}: is a folder, not a file")
    if path.exists() and not path.is_dir() and folder:
        raise InputError(f"{named}: is a file, not a folder")
    base = path if path.is_dir() else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise InputError(f"{named}: {base} is a file, not a folder")
    try:  # by trying: permissions do not tell, for root, a read-only file system or /proc
        tempfile.TemporaryFile(dir=base).close()
    except OSError as e:
        raise InputError(f"{named}: cannot write in {base}: {e.strerror or e}") from None
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{named}: the file's name must end in {', '.join(suffixes)}")


def _strict(obj):
    """``obj`` with NaN and infinities as ``null``: strict JSON readers (JavaScript's, jq) reject Python's
    ``NaN``, and a diverged loss must not make the whole file unreadable."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path: Path | str, obj, lines: bool = False) -> None:
    """Write ``obj`` (a list of records when ``lines``) via a temp file and rename: never half a file."""
    obj = _strict(obj)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in obj) if lines else \
        json.dumps(obj, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_csv(path: Path | str, header: list[str], rows) -> None:
    """Write a header and ``rows`` (sequences) as CSV, atomically."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str, dpi: int = 100) -> None:
    """Write ``fig`` atomically (a reader never sees half a file) as its suffix says (``FIGURE_SUFFIXES``;
    PNG for any other) and close it."""
    fig.tight_layout()
    fmt = Path(path).suffix.lower()[1:] if Path(path).suffix.lower() in FIGURE_SUFFIXES else "png"
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt))
    finally:
        pyplot().close(fig)
