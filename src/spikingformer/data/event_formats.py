"""Event-camera file formats: each reader returns a structured array of ``EVENT_DTYPE`` (fields ``t`` in
microseconds, ``x``, ``y``, ``p`` with 1 = ON) and follows SpikingJelly 2.0's loaders (``spikingjelly.datasets``)
bit for bit; where it departs from them, its docstring says so and why.  Files are read with NumPy only
(``np.fromfile``/``np.frombuffer``, ``np.load(allow_pickle=False)``); a truncated or malformed file raises
``DataError`` naming the file and what is wrong with it.  Datasets and frames: ``spikingformer.data.events``.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..utils.errors import DataError

__all__ = ["EVENT_DTYPE", "GESTURE_CLASSES", "make_events", "read_nmnist_bin", "read_aedat3", "read_gesture_labels",
           "read_cifar10_dvs_aedat", "read_npz_events"]

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
# gesture_mapping.csv of the release: class k is label k - 1.
GESTURE_CLASSES = ["hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                   "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise", "arm_roll",
                   "air_drums", "air_guitar", "other_gestures"]


def make_events(t, x, y, p) -> np.ndarray:
    ev = np.empty(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read event file {path}: {e}") from None


# ----------------------------------------------------------------------------- readers

def read_nmnist_bin(path) -> np.ndarray:
    """N-MNIST / ATIS binary (``.bin``, ``.bs2``): 5 bytes per event, big-endian 40 bits =
    x (8) | y (8) | polarity (1) | timestamp in µs (23), as SpikingJelly's ``load_ATIS_bin``.

    Timestamp-overflow events (``y == 240``) are handled as the dataset authors' reader
    (Orchard's ``Read_Ndataset.m``/``eventvision.py``, also tonic's): dropped, each adding
    2**13 µs to every later timestamp.  SpikingJelly 2.0 leaves them in as events at ``y = 240``
    (outside the 34x34 sensor); the recordings seen so far hold none, where both readers agree.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if raw.size == 0:
        raise DataError(f"{path}: empty N-MNIST file (no events)")
    if raw.size % 5:
        raise DataError(f"{path}: truncated N-MNIST file: {raw.size} bytes is not a whole number of "
                        "5-byte events")
    raw = raw.reshape(-1, 5).astype(np.int64)
    x, y, p = raw[:, 0], raw[:, 1], raw[:, 2] >> 7
    t = ((raw[:, 2] & 127) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    overflow = y == 240
    if overflow.any():
        t = t + (np.cumsum(overflow) << 13)
        keep = ~overflow
        x, y, t, p = x[keep], y[keep], t[keep], p[keep]
    return make_events(t, x, y, p)


def _aedat_header_end(data: bytes, path: Path, end_marker: bytes | None) -> int:
    """Offset of the first byte after the ``#`` comment lines of an AEDAT header."""
    pos = 0
    while data.startswith(b"#", pos):
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise DataError(f"{path}: AEDAT header never ends (no newline after a '#' line)")
        line, pos = data[pos:nl + 1], nl + 1
        if end_marker is not None and line.rstrip(b"\r\n") == end_marker:
            return pos
    if end_marker is not None:
        raise DataError(f"{path}: AEDAT 3 header lacks its {end_marker.decode()} line (not an AEDAT 3.1 file?)")
    return pos


_AEDAT3_HEADER = np.dtype([("type", "<u2"), ("source", "<u2"), ("size", "<u4"), ("ts_offset", "<u4"),
                           ("ts_overflow", "<u4"), ("capacity", "<u4"), ("number", "<u4"), ("valid", "<u4")])
_AEDAT3_POLARITY = np.dtype([("data", "<u4"), ("ts", "<u4")])


def read_aedat3(path) -> np.ndarray:
    """AEDAT 3.1 (DVS128 Gesture): ``#`` header up to ``#!END-HEADER``, then packets of a 28-byte
    little-endian header and ``capacity * size`` bytes of events.  Polarity packets (type 1, 8-byte
    events): ``x = data >> 17 & 0x7FFF``, ``y = data >> 2 & 0x7FFF``, ``p = data >> 1 & 1``,
    ``t = ts | ts_overflow << 31``; other packet types are skipped.  As SpikingJelly's
    ``load_aedat_v3``, every slot of the packet is kept (the valid bit is not consulted)."""
    path = Path(path)
    data = _read_bytes(path).tobytes()
    pos = _aedat_header_end(data, path, b"#!END-HEADER")
    chunks = []
    while pos < len(data):
        if len(data) - pos < _AEDAT3_HEADER.itemsize:
            raise DataError(f"{path}: truncated AEDAT 3 packet header at byte {pos}")
        h = np.frombuffer(data, _AEDAT3_HEADER, 1, pos)[0]
        pos += _AEDAT3_HEADER.itemsize
        n_bytes = int(h["capacity"]) * int(h["size"])
        if pos + n_bytes > len(data):
            raise DataError(f"{path}: truncated AEDAT 3 packet at byte {pos}: header announces {n_bytes} bytes, "
                            f"{len(data) - pos} remain")
        if h["type"] == 1:
            if h["size"] != 8:
                raise DataError(f"{path}: polarity packet with {h['size']}-byte events at byte {pos} (expected 8)")
            ev = np.frombuffer(data, _AEDAT3_POLARITY, int(h["capacity"]), pos)
            chunks.append((ev, int(h["ts_overflow"])))
        pos += n_bytes
    if not chunks:
        raise DataError(f"{path}: AEDAT 3 file holds no polarity events")
    d = np.concatenate([c["data"] for c, _ in chunks]).astype(np.int64)
    t = np.concatenate([c["ts"].astype(np.int64) | (o << 31) for c, o in chunks])
    return make_events(t, (d >> 17) & 0x7FFF, (d >> 2) & 0x7FFF, (d >> 1) & 1)


def read_gesture_labels(path) -> list[tuple[int, int, int]]:
    """``userXX_<light>_labels.csv``: a header line, then ``class,startTime_usec,endTime_usec`` rows.
    Returns ``(label, start, end)`` with ``label = class - 1`` (SpikingJelly's 0-based labels); a
    sample is the events with ``start <= t < end``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()[1:]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read gesture label file {path}: {e}") from None
    rows = []
    for i, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            cls, start, end = (int(v) for v in line.split(","))
        except ValueError:
            raise DataError(f"{path} line {i}: expected class,startTime_usec,endTime_usec, got {line!r}") from None
        if not 1 <= cls <= len(GESTURE_CLASSES):
            raise DataError(f"{path} line {i}: class {cls} outside 1..{len(GESTURE_CLASSES)}")
        rows.append((cls - 1, start, end))
    return rows


def read_cifar10_dvs_aedat(path) -> np.ndarray:
    """CIFAR10-DVS, AEDAT 2.0: ``#`` header lines, then big-endian uint32 pairs (address, timestamp).
    As SpikingJelly's ``cifar10_dvs._load_origin_data``: raw ``x = addr >> 1 & 0x7F``,
    ``y = addr >> 8 & 0x7F``, ``pol = addr & 1``; returned as ``x = 127 - y``, ``y = 127 - x``,
    ``p = 1 - pol`` (the sensor is mounted transposed and rotated)."""
    path = Path(path)
    data = _read_bytes(path).tobytes()
    pos = _aedat_header_end(data, path, None)
    body = len(data) - pos
    if body == 0:
        raise DataError(f"{path}: AEDAT 2 file holds no events")
    if body % 8:
        raise DataError(f"{path}: truncated AEDAT 2 file: {body} bytes of events is not a whole number of "
                        "8-byte (address, timestamp) pairs")
    words = np.frombuffer(data, ">u4", offset=pos).reshape(-1, 2).astype(np.int64)
    addr, t = words[:, 0], words[:, 1]
    return make_events(t, 127 - ((addr >> 8) & 0x7F), 127 - ((addr >> 1) & 0x7F), 1 - (addr & 1))


def _is_zip(path: Path) -> bool:
    """Whether ``path`` begins as a zip archive, as np.load tells an .npz (``zipfile.is_zipfile`` reads the end
    record instead, and raises BadZipFile itself on some damaged ones)."""
    with open(path, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")  # an empty archive is its end record alone


_DEFLATE_MAX_RATIO = 1032  # deflate expands at most this much (a 258-byte match per 2 bits)


def _check_npy_sizes(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse an array whose ``.npy`` header claims more bytes than its archive member can hold: numpy allocates
    the claimed shape before it reads (a header claiming 2**40 events would reserve 8 TiB)."""
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):  # np.load reads only these
            continue
        stored = min(info.compress_size, path.stat().st_size)  # the zip directory's sizes are claims too
        room = min(info.file_size, stored * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO))
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            room -= f.tell()
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > room:
            raise DataError(f"{path}: array {info.filename} claims shape {shape} of {dtype} ({claimed} bytes), but "
                            f"its archive member holds at most {max(room, 0)} bytes of data (damaged or forged file)")


def read_npz_events(path) -> np.ndarray:
    """One sample as an ``.npz``: SpikingJelly's extracted ``events_np`` (arrays ``t, x, y, p``), or a DVS128
    Gesture window of the event cache (``event_cache``: a structured array ``events`` with those fields)."""
    path = Path(path)
    if path.is_file() and not _is_zip(path):  # np.load would read on as .npy or pickle, and say so
        raise DataError(f"cannot read event file {path}: not an .npz archive (a zip of numpy arrays)")
    try:
        with zipfile.ZipFile(path) as zf:
            _check_npy_sizes(zf, path)
        with np.load(path, allow_pickle=False) as z:
            cached = z["events"] if "events" in z.files else None
            have = (cached.dtype.names or ()) if cached is not None else z.files
            missing = sorted({"t", "x", "y", "p"} - set(have))
            if missing:
                what = "the array events lacks field(s)" if cached is not None else "event .npz lacks array(s)"
                raise DataError(f"{path}: {what} {missing} (has {sorted(have)})")
            source = z if cached is None else cached
            t, x, y, p = (np.asarray(source[k]).ravel() for k in ("t", "x", "y", "p"))
    except DataError:
        raise
    except ValueError as e:
        if "pickle" not in str(e):
            raise DataError(f"cannot read event file {path}: {e}") from None
        # numpy's message offers allow_pickle=True, which would run whatever the file holds: never passed on
        raise DataError(f"cannot read event file {path}: it holds pickled Python objects, which are never "
                        "loaded; events are arrays of numbers") from None
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError
        raise DataError(f"cannot read event file {path}: {type(e).__name__}: {e}") from None
    not_numbers = {k: str(a.dtype) for k, a in zip("txyp", (t, x, y, p)) if a.dtype.kind not in "biuf"}
    if not_numbers:
        raise DataError(f"{path}: event arrays must hold numbers; {not_numbers} do not")
    if not len(t) == len(x) == len(y) == len(p):
        raise DataError(f"{path}: arrays t, x, y, p differ in length ({len(t)}, {len(x)}, {len(y)}, {len(p)})")
    return make_events(t, x, y, p != 0)
