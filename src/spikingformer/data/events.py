"""Event-camera data: raw recordings -> ``[T, 2, H, W]`` frames -> time-major batches ``[T, B, 2, H, W]``.

Readers return structured arrays of ``EVENT_DTYPE`` (fields ``t`` in microseconds, ``x``,
``y``, ``p`` with 1 = ON) and follow SpikingJelly 2.0's loaders (``spikingjelly.datasets``)
bit for bit; where they depart from it, the docstring says so and why.  Files are read with
NumPy only (``np.fromfile``/``np.frombuffer``, ``np.load(allow_pickle=False)``); a truncated or
malformed file raises ``DataError`` naming the file and what is wrong with it.

Layouts (``load_event_raw``), each also accepted as SpikingJelly's extracted ``events_np/``
copy (``.npz`` with ``t, x, y, p``):
- ``nmnist``: the release's ``Train/<digit>/*.bin`` + ``Test/<digit>/*.bin`` (official test
  split), or a subset folder ``N.bs2`` + a ``#sample #class`` list (held-out split);
- ``dvs128_gesture``: ``DvsGesture/userXX_<light>.aedat`` + ``_labels.csv``, split by
  ``trials_to_train.txt`` / ``trials_to_test.txt`` (the official split);
- ``cifar10_dvs``: ``<class>/*.aedat`` (AEDAT 2.0), no official split (held out).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .sources import DataError, RawData

__all__ = ["EVENT_DTYPE", "make_events", "read_nmnist_bin", "read_aedat3", "read_gesture_labels",
           "read_cifar10_dvs_aedat", "read_npz_events", "segment_bounds", "integrate_frames", "EventRecordings",
           "EventFrames", "EventAugment", "event_collate", "load_event_raw", "SENSOR_SIZE", "GESTURE_CLASSES",
           "CIFAR10_DVS_CLASSES"]

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
SENSOR_SIZE = {"nmnist": 34, "dvs128_gesture": 128, "cifar10_dvs": 128}  # square sensors (get_H_W in SpikingJelly)
# gesture_mapping.csv of the release: class k is label k - 1.
GESTURE_CLASSES = ["hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                   "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise", "arm_roll",
                   "air_drums", "air_guitar", "other_gestures"]
CIFAR10_DVS_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def read_npz_events(path) -> np.ndarray:
    """SpikingJelly's extracted ``events_np`` sample: an ``.npz`` holding arrays ``t, x, y, p``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"t", "x", "y", "p"} - set(z.files))
            if missing:
                raise DataError(f"{path}: event .npz lacks array(s) {missing} (has {sorted(z.files)})")
            t, x, y, p = (np.asarray(z[k]).ravel() for k in ("t", "x", "y", "p"))
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled objects), OSError, EOFError
        raise DataError(f"cannot read event file {path}: {type(e).__name__}: {e}") from None
    if not len(t) == len(x) == len(y) == len(p):
        raise DataError(f"{path}: arrays t, x, y, p differ in length ({len(t)}, {len(x)}, {len(y)}, {len(p)})")
    return make_events(t, x, y, p != 0)


@functools.lru_cache(maxsize=1)
def _cached_aedat3(path: str) -> np.ndarray:
    """One parsed Gesture recording per process: evaluation reads a recording's ~11 samples back to back.
    Shuffled training parses one recording per sample; SpikingJelly's extracted ``events_np`` copy reads faster."""
    return read_aedat3(path)


def _gesture_window(path: Path, start: int, end: int) -> np.ndarray:
    ev = _cached_aedat3(str(path))
    return ev[(ev["t"] >= start) & (ev["t"] < end)]


# ----------------------------------------------------------------------------- frames

def segment_bounds(t: np.ndarray, T: int, split_by: str) -> tuple[np.ndarray, np.ndarray]:
    """Event index ranges ``[j_l, j_r)`` of the ``T`` frames, as SpikingJelly's
    ``cal_fixed_frames_number_segment_index``: ``number`` gives each frame ``N // T`` events and the
    last one the rest; ``time`` splits ``[t_0, t_0 + T * dt)``, ``dt = (t_{N-1} - t_0) // T``, into
    ``T`` windows (the first and last event inside each) and ends the last frame at ``N``.  Where
    SpikingJelly fails (an empty time window, no events) the frame is empty instead."""
    n = len(t)
    j_l, j_r = np.zeros(T, np.int64), np.zeros(T, np.int64)
    if split_by == "number":
        di = n // T
        j_l[:] = np.arange(T) * di
        j_r[:] = j_l + di
    elif split_by == "time":
        if n:
            dt = (int(t[-1]) - int(t[0])) // T
            for i in range(T):
                t_l = int(t[0]) + dt * i
                idx = np.flatnonzero((t >= t_l) & (t < t_l + dt))
                if len(idx):
                    j_l[i], j_r[i] = idx[0], idx[-1] + 1
                elif i == T - 1:
                    j_l[i] = np.argmax(t >= t_l) if (t >= t_l).any() else n
    else:
        raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
    j_r[-1] = n
    return j_l, j_r


def integrate_frames(events: np.ndarray, T: int, split_by: str, H: int, W: int) -> np.ndarray:
    """``[T, 2, H, W]`` float32 event counts: channel ``p`` (0 OFF, 1 ON) of frame ``i`` counts the
    events ``[j_l[i], j_r[i])`` at each pixel (SpikingJelly's ``integrate_events_by_fixed_frames_number``)."""
    j_l, j_r = segment_bounds(events["t"], T, split_by)
    pos = ((events["p"] != 0).astype(np.int64) * H + events["y"].astype(np.int64)) * W + events["x"]
    frames = np.zeros((T, 2 * H * W), np.float32)
    for i in range(T):
        frames[i] = np.bincount(pos[j_l[i]:j_r[i]], minlength=2 * H * W)
    return frames.reshape(T, 2, H, W)


class EventAugment:
    """Event-frame augmentation, the same for all ``T`` frames of a sample: a horizontal flip with
    probability ``hflip``, then ``torch.roll`` by independent shifts in ``[-max_shift, max_shift]``
    along y and x (the flip and roll of NDA, Li et al. 2022, used by the official Spikformer
    CIFAR10-DVS code).  Draws from torch's RNG, which ``SeededTransform`` seeds per (index, seed)."""

    def __init__(self, hflip: float = 0.5, max_shift: int = 5):
        self.hflip, self.max_shift = hflip, max_shift

    def __call__(self, frames: Tensor) -> Tensor:
        if torch.rand(()) < self.hflip:
            frames = frames.flip(-1)
        if self.max_shift:
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            frames = frames.roll((dy, dx), dims=(-2, -1))
        return frames

    def __repr__(self) -> str:
        return f"EventAugment(hflip={self.hflip}, max_shift={self.max_shift})"


class EventFrames:
    """Events -> ``[T, 2, size, size]`` float32 tensor: integrate on the ``sensor x sensor`` grid, center-crop
    to ``size`` (N-MNIST: 34 -> 32, one pixel off each border, so a patch-4 tokenizer fits), augment."""

    def __init__(self, T: int, split_by: str, sensor: int, size: int, augment: Callable | None = None):
        if size > sensor:
            raise DataError(f"img_size {size} exceeds the {sensor}x{sensor} sensor; event frames are only "
                            f"center-cropped, never upscaled: set img_size <= {sensor}")
        self.T, self.split_by, self.sensor, self.size, self.augment = T, split_by, sensor, size, augment

    def __call__(self, events: np.ndarray) -> Tensor:
        frames = torch.from_numpy(integrate_frames(events, self.T, self.split_by, self.sensor, self.sensor))
        o = (self.sensor - self.size) // 2
        frames = frames[..., o:o + self.size, o:o + self.size]
        return self.augment(frames) if self.augment is not None else frames


def event_collate(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Samples ``[T, 2, H, W]`` -> the time-major batch ``[T, B, 2, H, W]`` the models take (SPEC §1:
    loaders give ``[B, T, ...]``; this is the one place it is transposed) and targets ``[B]``."""
    frames, targets = zip(*batch)
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise DataError(f"event frames of one batch differ in shape: {sorted(shapes)}")
    return torch.stack(frames, dim=1), torch.tensor(targets, dtype=torch.long)


# ----------------------------------------------------------------------------- datasets

class EventRecordings(Dataset):
    """Labelled recordings: ``ds[i]`` reads ``(events, target)`` on demand; ``targets`` for class-balanced splits.
    ``items[i]`` is ``(reader, path, args)``: the events are ``reader(path, *args)``."""

    def __init__(self, items: list[tuple[Callable, Path, tuple]], targets: list[int], sensor: int):
        self.items, self.targets, self.sensor = items, list(targets), sensor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        reader, path, args = self.items[i]
        ev = reader(path, *args)
        if len(ev) and (ev["x"].max() >= self.sensor or ev["y"].max() >= self.sensor):
            raise DataError(f"{path}: event at x={ev['x'].max()} / y={ev['y'].max()} outside the "
                            f"{self.sensor}x{self.sensor} sensor")
        return ev, self.targets[i]


def _class_folders(root: Path, classes: list[str], ext: str, reader: Callable, sensor: int) -> EventRecordings:
    """``root/<class>/*.<ext>`` for every name in ``classes`` (label = its position there)."""
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise DataError(f"{root}: missing class folder(s) {missing}; expected {root}/<class>/*{ext} for "
                        f"classes {classes}")
    items, targets = [], []
    for label, c in enumerate(classes):
        files = sorted((root / c).glob(f"*{ext}"))
        items += [(reader, f, ()) for f in files]
        targets += [label] * len(files)
    if not items:
        raise DataError(f"{root}: no *{ext} recordings in the class folders")
    return EventRecordings(items, targets, sensor)


def _events_np(root: Path) -> Path:
    return root / "events_np" if (root / "events_np").is_dir() else root


def _nmnist(root: Path) -> tuple:
    digits = [str(d) for d in range(10)]
    s = SENSOR_SIZE["nmnist"]
    np_root = _events_np(root)
    if (np_root / "train").is_dir() and (np_root / "test").is_dir():
        return (_class_folders(np_root / "train", digits, ".npz", read_npz_events, s),
                _class_folders(np_root / "test", digits, ".npz", read_npz_events, s))
    if (root / "Train").is_dir() and (root / "Test").is_dir():
        return (_class_folders(root / "Train", digits, ".bin", read_nmnist_bin, s),
                _class_folders(root / "Test", digits, ".bin", read_nmnist_bin, s))
    lists = sorted(root.glob("*.txt")) if root.is_dir() else []
    if len(lists) != 1:
        raise DataError(f"{root}: expected an N-MNIST layout: Train/<digit>/*.bin + Test/<digit>/*.bin, "
                        "SpikingJelly's events_np/{train,test}/<digit>/*.npz, or N.bs2 files with one "
                        f"'#sample #class' list (*.txt); found {len(lists)} .txt files")
    items, targets = [], []
    for i, line in enumerate(lists[0].read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            sample, cls = (int(v) for v in line.split())
        except ValueError:
            raise DataError(f"{lists[0]} line {i}: expected '<sample> <class>', got {line!r}") from None
        f = next((root / f"{sample}{e}" for e in (".bs2", ".bin") if (root / f"{sample}{e}").is_file()), None)
        if f is None or not 0 <= cls <= 9:
            raise DataError(f"{lists[0]} line {i}: " + (f"class {cls} outside 0..9" if f else
                                                         f"no recording {root}/{sample}.bs2 (or .bin)"))
        items.append((read_nmnist_bin, f, ()))
        targets.append(cls)
    return EventRecordings(items, targets, s), None


def _gesture(root: Path) -> tuple:
    s = SENSOR_SIZE["dvs128_gesture"]
    labels = [str(k) for k in range(len(GESTURE_CLASSES))]
    np_root = _events_np(root)
    if (np_root / "train").is_dir() and (np_root / "test").is_dir():
        # Folder k holds label k, as SpikingJelly writes them (its DatasetFolder would sort "10" before "2";
        # we keep the numeric label so raw and extracted copies agree).
        return (_class_folders(np_root / "train", labels, ".npz", read_npz_events, s),
                _class_folders(np_root / "test", labels, ".npz", read_npz_events, s))
    raw = root / "DvsGesture" if (root / "DvsGesture").is_dir() else root
    splits = []
    for name in ("trials_to_train.txt", "trials_to_test.txt"):
        if not (raw / name).is_file():
            raise DataError(f"{root}: expected the DvsGesture release (DvsGesture/{name} with userXX_<light>.aedat "
                            "and _labels.csv files) or SpikingJelly's events_np/{train,test}/<label>/*.npz")
        items, targets = [], []
        for trial in (raw / name).read_text().split():
            aedat = raw / trial
            for label, start, end in read_gesture_labels(aedat.with_name(aedat.stem + "_labels.csv")):
                items.append((_gesture_window, aedat, (start, end)))
                targets.append(label)
        splits.append(EventRecordings(items, targets, s))
    return splits[0], splits[1]


def load_event_raw(dataset: str, data_dir: str) -> RawData:
    """The train (and official test) recordings of an event dataset, as ``RawData`` of ``(events, target)``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data_dir {root} does not exist (dataset {dataset})")
    if dataset == "nmnist":
        (train, val), classes = _nmnist(root), [str(d) for d in range(10)]
    elif dataset == "dvs128_gesture":
        (train, val), classes = _gesture(root), list(GESTURE_CLASSES)
    elif dataset == "cifar10_dvs":
        np_root = _events_np(root)
        npz = (np_root / CIFAR10_DVS_CLASSES[0]).is_dir() and any((np_root / CIFAR10_DVS_CLASSES[0]).glob("*.npz"))
        train = (_class_folders(np_root, CIFAR10_DVS_CLASSES, ".npz", read_npz_events, 128) if npz else
                 _class_folders(root, CIFAR10_DVS_CLASSES, ".aedat", read_cifar10_dvs_aedat, 128))
        val, classes = None, list(CIFAR10_DVS_CLASSES)
    else:
        raise DataError(f"unknown event dataset {dataset!r}")
    title = {"nmnist": "N-MNIST", "dvs128_gesture": "DVS128 Gesture"}.get(dataset)
    name = None if val is None else f"test (official {title} test split, {len(val)} recordings)"
    # mean 0 / std 1: frames are raw event counts, as in SpikingJelly and the official code (no normalization).
    return RawData(train, val, name, classes, 2, SENSOR_SIZE[dataset], (0.0, 0.0), (1.0, 1.0), events=True)
