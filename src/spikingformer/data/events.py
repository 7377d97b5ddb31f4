"""Event-camera data: raw recordings -> ``[T, 2, H, W]`` frames -> time-major batches ``[T, B, 2, H, W]``.

Recordings are read by ``event_formats`` (structured arrays of ``EVENT_DTYPE``: ``t`` in µs, ``x``, ``y``, ``p``
with 1 = ON, as SpikingJelly 2.0's loaders; re-exported here); DVS128 Gesture windows go through the lazy
on-disk cache of ``event_cache``.

Layouts (``load_event_raw``), each also accepted as SpikingJelly's extracted ``events_np/``
copy (``.npz`` with ``t, x, y, p``):
- ``nmnist``: the release's ``Train/<digit>/*.bin`` + ``Test/<digit>/*.bin`` (official test
  split), or a subset folder ``N.bs2`` + a ``#sample #class`` list (held-out split);
- ``dvs128_gesture``: ``DvsGesture/userXX_<light>.aedat`` + ``_labels.csv``, split by
  ``trials_to_train.txt`` / ``trials_to_test.txt`` (the official split);
- ``cifar10_dvs``: ``<class>/*.aedat`` (AEDAT 2.0), no official split (held out).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..utils.errors import DataError, InputError
from .event_cache import GestureWindows, cache_root
from .event_formats import (
    EVENT_DTYPE,
    GESTURE_CLASSES,
    make_events,
    read_aedat3,
    read_cifar10_dvs_aedat,
    read_gesture_labels,
    read_nmnist_bin,
    read_npz_events,
)
from .sources import RawData
from .text import read_text

__all__ = ["EVENT_DTYPE", "make_events", "read_nmnist_bin", "read_aedat3", "read_gesture_labels",
           "read_cifar10_dvs_aedat", "read_npz_events", "segment_bounds", "integrate_frames", "EventRecordings",
           "EventFrames", "EventAugment", "wide_op", "time_major", "event_collate", "load_event_raw", "on_sensor",
           "not_a_sample", "read_sample", "nmnist_label_list", "SAMPLE_READERS", "SENSOR_SIZE", "GESTURE_CLASSES",
           "CIFAR10_DVS_CLASSES"]

SENSOR_SIZE = {"nmnist": 34, "dvs128_gesture": 128, "cifar10_dvs": 128}  # square sensors (get_H_W in SpikingJelly)
CIFAR10_DVS_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The files that hold one sample of each dataset, by suffix (``read_sample``, for ``spikingformer predict``).
SAMPLE_READERS = {
    "nmnist": {".bin": read_nmnist_bin, ".bs2": read_nmnist_bin, ".npz": read_npz_events},
    "dvs128_gesture": {".npz": read_npz_events},
    "cifar10_dvs": {".aedat": read_cifar10_dvs_aedat, ".npz": read_npz_events},
}
# Why a dataset's own recording files are not samples: a Gesture sample is one labelled window of a recording.
_NOT_A_SAMPLE = {"dvs128_gesture": "a raw DVS128 Gesture recording (.aedat) holds many labelled gestures, not one "
                                   "sample: give one window as an .npz (SpikingJelly's events_np, or a "
                                   "<recording>_<start>_<end>.npz of the event cache)"}


# ----------------------------------------------------------------------------- frames

def segment_bounds(t: np.ndarray, T: int, split_by: str) -> tuple[np.ndarray, np.ndarray]:
    """Event index ranges ``[j_l, j_r)`` of the ``T`` frames, as SpikingJelly's
    ``cal_fixed_frames_number_segment_index``: ``number`` gives each frame ``N // T`` events and the
    last one the rest; ``time`` splits ``[t_0, t_0 + T * dt)``, ``dt = (t_{N-1} - t_0) // T``, into
    ``T`` windows (the first and last event inside each) and ends the last frame at ``N``.  Where
    SpikingJelly fails (an empty time window, no events) the frame is empty instead.  Sorted timestamps
    (every reader's) take one binary search per window edge; others the reference scan, same result."""
    n = len(t)
    j_l, j_r = np.zeros(T, np.int64), np.zeros(T, np.int64)
    if split_by == "number":
        di = n // T
        j_l[:] = np.arange(T) * di
        j_r[:] = j_l + di
    elif split_by == "time":
        if n and bool(np.all(t[1:] >= t[:-1])):
            t0, dt = int(t[0]), (int(t[-1]) - int(t[0])) // T
            # in t's own dtype, as the scan's comparisons with Python ints (integer edges lie in [int(t_0), t_{N-1}])
            edge = np.array([t0 + dt * i for i in range(T + 1)], t.dtype)
            lo, hi = np.searchsorted(t, edge[:-1]), np.searchsorted(t, edge[1:])  # first index with t >= edge
            full = hi > lo
            j_l[full], j_r[full] = lo[full], hi[full]
            if not full[-1]:
                j_l[-1] = lo[-1]  # an empty last window still starts at its first later event (or N)
        elif n:
            _scan_time_windows(t, T, j_l, j_r)
    else:
        raise InputError(f"split_by must be 'number' or 'time', got {split_by!r}")
    j_r[-1] = n
    return j_l, j_r


def _scan_time_windows(t: np.ndarray, T: int, j_l: np.ndarray, j_r: np.ndarray) -> None:
    """``segment_bounds(split_by="time")`` for unsorted timestamps: one pass over all events per window."""
    dt = (int(t[-1]) - int(t[0])) // T
    for i in range(T):
        t_l = int(t[0]) + dt * i
        idx = np.flatnonzero((t >= t_l) & (t < t_l + dt))
        if len(idx):
            j_l[i], j_r[i] = idx[0], idx[-1] + 1
        elif i == T - 1:
            j_l[i] = np.argmax(t >= t_l) if (t >= t_l).any() else len(t)


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
    """Event-frame augmentation, the same for all ``T`` frames and both polarities of a sample: a
    horizontal flip with probability ``hflip``, then ``policy``:

    - ``roll``: ``torch.roll`` by independent shifts in ``[-max_shift, max_shift]`` along y and x
      (NDA's roll, Li et al. 2022);
    - ``wide``: one operation drawn uniformly from identity, x-shear, x- or y-translation,
      rotation and erasing, at a magnitude drawn from 31 levels spanning +-0.3 (shear), +-5 px
      (translation) or +-30 degrees (rotation), nearest-neighbour, zero fill; erasing zeroes one
      rectangle of 5-33 % of the area, aspect 0.2-5.  This is the TrivialAugment-Wide variant for
      event frames (``SNNAugmentWide``) of the official Spikingformer CIFAR10-DVS code.

    Draws from torch's RNG, which ``SeededTransform`` seeds per (index, seed).
    """

    WIDE_OPS = ("identity", "shear_x", "translate_x", "translate_y", "rotate", "erase")
    WIDE_RANGE = {"shear_x": 0.3, "translate_x": 5.0, "translate_y": 5.0, "rotate": 30.0}
    WIDE_LEVELS = 31

    def __init__(self, hflip: float = 0.5, max_shift: int = 5, policy: str = "roll"):
        if policy not in ("roll", "wide"):
            raise InputError(f"event augmentation policy must be 'roll' or 'wide', got {policy!r}")
        self.hflip, self.max_shift, self.policy = hflip, max_shift, policy

    def __call__(self, frames: Tensor) -> Tensor:
        if torch.rand(()) < self.hflip:
            frames = frames.flip(-1)
        if self.policy == "wide":
            op = self.WIDE_OPS[int(torch.randint(len(self.WIDE_OPS), ()))]
            span = self.WIDE_RANGE.get(op, 0.0)
            level = float(torch.linspace(-span, span, self.WIDE_LEVELS)[torch.randint(self.WIDE_LEVELS, ())])
            return wide_op(frames, op, level)
        if self.max_shift:
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            frames = frames.roll((dy, dx), dims=(-2, -1))
        return frames

    def __repr__(self) -> str:
        extra = f", max_shift={self.max_shift}" if self.policy == "roll" else ""
        return f"EventAugment(hflip={self.hflip}, policy={self.policy}{extra})"


def wide_op(frames: Tensor, op: str, level: float) -> Tensor:
    """One ``EventAugment`` ``wide`` operation on ``[..., C, H, W]`` frames: ``level`` is the shear factor,
    the shift in pixels (truncated) or the angle in degrees; ``erase`` draws its rectangle from torch's RNG."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import RandomErasing
    from torchvision.transforms.v2 import functional as F

    nearest = InterpolationMode.NEAREST
    if op == "identity":
        return frames
    if op == "shear_x":
        return F.affine(frames, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(level), 0.0],
                        interpolation=nearest, fill=0.0)
    if op in ("translate_x", "translate_y"):
        shift = [int(level), 0] if op == "translate_x" else [0, int(level)]
        return F.affine(frames, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest,
                        fill=0.0)
    if op == "rotate":
        return F.rotate(frames, level, interpolation=nearest, fill=0.0)
    if op == "erase":
        return RandomErasing(p=1.0, scale=(0.05, 0.33), ratio=(0.2, 5.0), value=0.0)(frames)
    raise InputError(f"unknown wide operation {op!r}; valid: {', '.join(EventAugment.WIDE_OPS)}")


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


def time_major(frames: list[Tensor]) -> Tensor:
    """Samples ``[T, 2, H, W]`` -> the time-major batch ``[T, B, 2, H, W]`` the models take (SPEC §1:
    loaders give ``[B, T, ...]``; this is the one place it is transposed)."""
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise DataError(f"event frames of one batch differ in shape: {sorted(shapes)}")
    return torch.stack(frames, dim=1)


def event_collate(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """``(frames, target)`` samples -> the time-major batch ``[T, B, 2, H, W]`` and targets ``[B]``."""
    frames, targets = zip(*batch)
    return time_major(list(frames)), torch.tensor(targets, dtype=torch.long)


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
        return on_sensor(reader(path, *args), path, self.sensor), self.targets[i]


def on_sensor(ev: np.ndarray, path, sensor: int) -> np.ndarray:
    """``ev``, whose events must lie on the ``sensor x sensor`` grid that frames integrate them on."""
    if len(ev) and (ev["x"].max() >= sensor or ev["y"].max() >= sensor):
        raise DataError(f"{path}: event at x={ev['x'].max()} / y={ev['y'].max()} outside the "
                        f"{sensor}x{sensor} sensor")
    return ev


def not_a_sample(dataset: str, path) -> str | None:
    """Why the file ``path`` is not one that ``read_sample`` reads a sample of ``dataset`` from, judged by its
    suffix; ``None`` if it is."""
    if Path(path).suffix.lower() in SAMPLE_READERS[dataset]:
        return None
    note = _NOT_A_SAMPLE.get(dataset)
    return (f"{path}: {dataset} samples are read from {', '.join(SAMPLE_READERS[dataset])} files"
            + (f"; {note}" if note else ""))


def read_sample(dataset: str, path) -> np.ndarray:
    """The events of one sample of ``dataset`` held by the file ``path``, read as its suffix says
    (``SAMPLE_READERS``) and as evaluation reads that sample."""
    why = not_a_sample(dataset, path)
    if why:
        raise DataError(why)
    return on_sensor(SAMPLE_READERS[dataset][Path(path).suffix.lower()](path), path, SENSOR_SIZE[dataset])


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
    for i, f, cls in nmnist_label_list(lists[0]):
        if not f.is_file():
            raise DataError(f"{lists[0]} line {i}: no recording {f} (or .bin)")
        items.append((read_nmnist_bin, f, ()))
        targets.append(cls)
    return EventRecordings(items, targets, s), None


def nmnist_label_list(path: Path) -> list[tuple[int, Path, int]]:
    """``(line, recording, class)`` of an N-MNIST subset's ``'#sample #class'`` list: sample ``N`` is the file
    ``N.bs2`` (or ``N.bin``) beside it, whether or not it exists."""
    out = []
    for i, line in enumerate(read_text(path, DataError).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            sample, cls = (int(v) for v in line.split())
        except ValueError:
            raise DataError(f"{path} line {i}: expected '<sample> <class>', got {line!r}") from None
        if not 0 <= cls <= 9:
            raise DataError(f"{path} line {i}: class {cls} outside 0..9")
        root = Path(path).parent
        out.append((i, next((f for f in (root / f"{sample}.bs2", root / f"{sample}.bin") if f.is_file()),
                            root / f"{sample}.bs2"), cls))
    return out


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
    splits, windows = [], {}
    for name in ("trials_to_train.txt", "trials_to_test.txt"):
        if not (raw / name).is_file():
            raise DataError(f"{root}: expected the DvsGesture release (DvsGesture/{name} with userXX_<light>.aedat "
                            "and _labels.csv files) or SpikingJelly's events_np/{train,test}/<label>/*.npz")
        items = []
        for trial in read_text(raw / name, DataError).split():
            aedat = raw / trial
            rows = read_gesture_labels(aedat.with_name(aedat.stem + "_labels.csv"))
            windows[str(aedat)] = [(start, end) for _, start, end in rows]
            items += [(aedat, (start, end), label) for label, start, end in rows]
        splits.append(items)
    reader = GestureWindows(raw, windows, cache_root())  # one parse per recording writes all its windows
    train, test = (EventRecordings([(reader, f, w) for f, w, _ in items], [y for *_, y in items], s)
                   for items in splits)
    return train, test


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
    name = None if val is None else f"test (official {title} test split of {root}, {len(val)} recordings)"
    # mean 0 / std 1: frames are raw event counts, as in SpikingJelly and the official code (no normalization).
    return RawData(train, val, name, classes, 2, SENSOR_SIZE[dataset], (0.0, 0.0), (1.0, 1.0), events=True)
