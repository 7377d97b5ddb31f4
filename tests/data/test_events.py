"""Event data: raw-format readers (against encoders written here and SpikingJelly's loaders), frame
integration, augmentation, the time-major collate, dataset layouts, and a 1-epoch training run."""
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spikingformer.data import DataError, SeededTransform, build_data, load_raw
from spikingformer.data.events import (
    CIFAR10_DVS_CLASSES,
    EVENT_DTYPE,
    EventAugment,
    EventFrames,
    _scan_time_windows,
    event_collate,
    integrate_frames,
    make_events,
    read_aedat3,
    read_cifar10_dvs_aedat,
    read_nmnist_bin,
    read_npz_events,
    segment_bounds,
    wide_op,
)
from spikingformer.train.config import ConfigError, TrainConfig

REAL_NMNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nmnist-small-train.tar.gz"


def random_events(n, size, seed=0, t_max=300_000):
    rng = np.random.default_rng(seed)
    return make_events(np.sort(rng.integers(0, t_max, n)), rng.integers(0, size, n), rng.integers(0, size, n),
                       rng.integers(0, 2, n))


def assert_same_events(ev, t, x, y, p):
    assert ev.dtype == EVENT_DTYPE
    for k, v in zip("txyp", (t, x, y, p)):
        np.testing.assert_array_equal(ev[k], np.asarray(v).astype(np.int64), err_msg=k)


# ----------------------------------------------------------------------------- encoders (the formats' specs)

def encode_nmnist(ev) -> bytes:
    """5 bytes per event, big-endian: x (8) | y (8) | p (1) | t (23)."""
    word = (ev["x"].astype(np.uint64) << 32) | (ev["y"].astype(np.uint64) << 24) | \
           (ev["p"].astype(np.uint64) << 23) | ev["t"].astype(np.uint64)
    return word.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 3:].tobytes()


def encode_aedat3(packets) -> bytes:
    """``packets``: ``(type, ts_overflow, events)``; polarity events as 8-byte (data, ts) little-endian."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#!END-HEADER\r\n"]
    for typ, overflow, ev in packets:
        data = (ev["x"].astype(np.uint32) << 17) | (ev["y"].astype(np.uint32) << 2) | \
               (ev["p"].astype(np.uint32) << 1) | 1
        body = np.stack([data, (ev["t"] & 0x7FFFFFFF).astype(np.uint32)], 1).astype("<u4").tobytes()
        out.append(struct.pack("<HHIIIIII", typ, 1, 8, 4, overflow, len(ev), len(ev), len(ev)) + body)
    return b"".join(out)


def encode_cifar10_dvs(ev, flags: int = 0) -> bytes:
    """AEDAT 2.0 as CIFAR10-DVS stores it: raw x = 127 - y, raw y = 127 - x, raw polarity = 1 - p;
    ``flags`` sets address bits outside those fields (which the reader must ignore)."""
    addr = ((127 - ev["x"].astype(np.uint32)) << 8) | ((127 - ev["y"].astype(np.uint32)) << 1) | \
           (1 - ev["p"].astype(np.uint32)) | flags
    words = np.stack([addr, ev["t"].astype(np.uint32)], 1).astype(">u4").tobytes()
    return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + words


@pytest.fixture(autouse=True)
def _event_cache(tmp_path, monkeypatch):
    """Gesture windows are cached under tmp_path, never in the home directory."""
    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", str(tmp_path / "event-cache"))


# ----------------------------------------------------------------------------- readers

def test_nmnist_reader_returns_the_written_events_and_matches_spikingjelly(tmp_path, sj):
    ev = random_events(500, 34, t_max=2**23)
    f = tmp_path / "1.bs2"
    f.write_bytes(encode_nmnist(ev))
    got = read_nmnist_bin(f)
    assert_same_events(got, ev["t"], ev["x"], ev["y"], ev["p"])
    ref = sj.utils.load_ATIS_bin(f)
    assert_same_events(got, ref["t"], ref["x"], ref["y"], ref["p"])


def test_nmnist_overflow_events_are_dropped_and_shift_later_timestamps(tmp_path):
    ev = make_events(t=[10, 20, 0, 30, 0, 0, 40], x=[1, 2, 0, 3, 0, 0, 4], y=[5, 6, 240, 7, 240, 240, 8],
                     p=[1, 0, 0, 1, 0, 0, 1])  # y = 240: an overflow marker
    f = tmp_path / "o.bin"
    f.write_bytes(encode_nmnist(ev))
    assert_same_events(read_nmnist_bin(f), [10, 20, 30 + 8192, 40 + 3 * 8192], [1, 2, 3, 4], [5, 6, 7, 8], [1, 0, 1, 1])


def test_aedat3_reader_returns_the_written_events_and_matches_spikingjelly(tmp_path, sj):
    a, b = random_events(40, 128, seed=1), random_events(30, 128, seed=2)
    other = random_events(5, 128, seed=3)  # a non-polarity packet (type 2: special events) is skipped
    f = tmp_path / "user01_led.aedat"
    f.write_bytes(encode_aedat3([(1, 0, a), (2, 0, other), (1, 1, b)]))
    got = read_aedat3(f)
    assert_same_events(got, np.r_[a["t"], b["t"] + 2**31], np.r_[a["x"], b["x"]], np.r_[a["y"], b["y"]],
                       np.r_[a["p"], b["p"]])
    ref = sj.utils.load_aedat_v3(f)
    assert_same_events(got, ref["t"], ref["x"], ref["y"], ref["p"])


def test_cifar10_dvs_reader_returns_the_written_events_and_matches_spikingjelly(tmp_path, sj):
    ev = random_events(300, 128, seed=4, t_max=2**32 - 1)
    f = tmp_path / "cifar10_cat_0.aedat"
    f.write_bytes(encode_cifar10_dvs(ev, flags=(1 << 15) | (1 << 31)))
    got = read_cifar10_dvs_aedat(f)
    assert_same_events(got, ev["t"], ev["x"], ev["y"], ev["p"])
    ref = sj.cifar10_dvs._load_origin_data(f)
    assert_same_events(got, ref["t"], ref["x"], ref["y"], ref["p"])


def test_npz_reader_reads_spikingjellys_arrays_and_never_unpickles(tmp_path):
    ev = random_events(50, 128, seed=5)
    np.savez(tmp_path / "s.npz", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
    assert_same_events(read_npz_events(tmp_path / "s.npz"), ev["t"], ev["x"], ev["y"], ev["p"])
    np.savez(tmp_path / "obj.npz", t=np.array([object()]), x=ev["x"], y=ev["y"], p=ev["p"])
    with pytest.raises(DataError, match="obj.npz: it holds pickled Python objects, which are never loaded") as e:
        read_npz_events(tmp_path / "obj.npz")
    assert "allow_pickle" not in str(e.value)
    for name, content in (("text.npz", b"hi\n"), ("pickle.npz", b"\x80\x04N.")):  # np.load would try these
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=f"{name}: not an .npz archive") as e:
            read_npz_events(tmp_path / name)
        assert "allow_pickle" not in str(e.value)
    np.savez(tmp_path / "nop.npz", t=ev["t"], x=ev["x"], y=ev["y"])
    with pytest.raises(DataError, match=r"nop.npz: event .npz lacks array\(s\) \['p'\]"):
        read_npz_events(tmp_path / "nop.npz")
    # a window of the DVS128 Gesture event cache: one structured array (and the cache's own meta)
    np.savez(tmp_path / "cached.npz", meta=np.arange(7), events=ev)
    assert_same_events(read_npz_events(tmp_path / "cached.npz"), ev["t"], ev["x"], ev["y"], ev["p"])
    np.savez(tmp_path / "noy.npz", events=ev[["t", "x", "p"]])
    with pytest.raises(DataError, match=r"noy.npz: the array events lacks field\(s\) \['y'\]"):
        read_npz_events(tmp_path / "noy.npz")


def _corrupt(tmp_path, kind):
    ev = random_events(20, 34)
    f = tmp_path / f"{kind}.bin"
    if kind == "nmnist_truncated":
        f.write_bytes(encode_nmnist(ev)[:-2])
        return read_nmnist_bin, f, "not a whole number of 5-byte events"
    if kind == "nmnist_empty":
        f.write_bytes(b"")
        return read_nmnist_bin, f, "empty N-MNIST file"
    if kind == "aedat3_truncated":
        f.write_bytes(encode_aedat3([(1, 0, ev)])[:-5])
        return read_aedat3, f, "truncated AEDAT 3 packet"
    if kind == "aedat3_no_header_end":
        f.write_bytes(encode_aedat3([(1, 0, ev)]).replace(b"#!END-HEADER\r\n", b""))
        return read_aedat3, f, "lacks its #!END-HEADER line"
    if kind == "aedat2_truncated":
        f.write_bytes(encode_cifar10_dvs(ev)[:-4])
        return read_cifar10_dvs_aedat, f, "not a whole number of 8-byte"
    f.write_bytes(b"PK\x03\x04 not really a zip")
    return read_npz_events, f, "cannot read event file"


@pytest.mark.parametrize("kind", ["nmnist_truncated", "nmnist_empty", "aedat3_truncated", "aedat3_no_header_end",
                                  "aedat2_truncated", "npz_garbage"])
def test_corrupt_files_raise_data_error_naming_the_file(tmp_path, kind):
    reader, f, msg = _corrupt(tmp_path, kind)
    with pytest.raises(DataError, match=msg) as e:
        reader(f)
    assert str(f) in str(e.value)


# ----------------------------------------------------------------------------- frames

@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("T", [3, 7, 16])
def test_integration_equals_spikingjelly(sj, split_by, T):
    ev = random_events(1001, 34, seed=T)
    ref = sj.utils.integrate_events_by_fixed_frames_number({k: ev[k] for k in "txyp"}, split_by, T, 34, 34)
    got = integrate_frames(ev, T, split_by, 34, 34)
    assert got.shape == (T, 2, 34, 34) and got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_integration_counts_events_per_polarity_and_pixel():
    # 9 events, T = 2 by number: frames get events [0, 4) and [4, 9); channel 0 = OFF, 1 = ON
    ev = make_events(range(9), [0, 0, 1, 0, 2, 2, 2, 3, 3], [0, 0, 0, 1, 1, 1, 1, 2, 2], [1, 1, 0, 0, 1, 0, 1, 1, 1])
    f = integrate_frames(ev, 2, "number", 3, 4)
    assert f[0, 1, 0, 0] == 2 and f[0, 0, 0, 1] == 1 and f[0, 0, 1, 0] == 1 and f[0].sum() == 4
    assert f[1, 1, 1, 2] == 2 and f[1, 0, 1, 2] == 1 and f[1, 1, 2, 3] == 2 and f[1].sum() == 5


def test_time_split_leaves_empty_windows_empty_where_spikingjelly_fails():
    t = np.array([0, 1, 2, 97, 98, 100])  # dt = 25: windows [0,25) [25,50) [50,75) [75,100) + the tail
    j_l, j_r = segment_bounds(t, 4, "time")
    assert j_l.tolist() == [0, 0, 0, 3] and j_r.tolist() == [3, 0, 0, 6]


def segment_bounds_by_scan(t, T):
    """The time split as first written, one boolean pass per window (tested equal to SpikingJelly's,
    and kept in events.py for unsorted timestamps): the oracle of the binary search."""
    n = len(t)
    j_l, j_r = np.zeros(T, np.int64), np.zeros(T, np.int64)
    if n:
        _scan_time_windows(t, T, j_l, j_r)
    j_r[-1] = n
    return j_l, j_r


def test_time_split_by_binary_search_equals_the_scan_on_random_inputs():
    rng = np.random.default_rng(0)
    kinds = {"sparse": lambda n: rng.integers(0, 10 * n + 1, n),  # many empty windows
             "dups": lambda n: rng.integers(0, 4, n),              # heavy duplicates, dt often 0
             "bursts": lambda n: np.repeat(rng.integers(0, 10**6, 3), [n // 3, n // 3, n - 2 * (n // 3)]),
             "huge": lambda n: rng.integers(2**31, 2**33, n)}      # Gesture's overflowed timestamps
    checked = 0
    for trial in range(400):
        kind = list(kinds)[trial % len(kinds)]
        n = int(rng.choice([0, 1, 2, 3, int(rng.integers(4, 40)), int(rng.integers(40, 3000))]))
        t = np.sort(kinds[kind](n)).astype(rng.choice([np.int64, np.int32]) if kind != "huge" else np.int64)
        for T in (1, 2, 3, int(rng.integers(4, 33))):
            got, ref = segment_bounds(t, T, "time"), segment_bounds_by_scan(t, T)
            for g, r in zip(got, ref):
                np.testing.assert_array_equal(g, r, err_msg=f"{kind} n={n} T={T} t={t.tolist()[:20]}")
            checked += 1
    assert checked == 1600


def test_event_frames_center_crop_and_refuse_upscaling():
    ev = make_events([0, 1], [0, 1], [0, 1], [1, 1])  # (0, 0) is cropped away, (1, 1) becomes (0, 0)
    f = EventFrames(T=1, split_by="number", sensor=34, size=32)(ev)
    assert f.shape == (1, 2, 32, 32) and f.sum() == 1 and f[0, 1, 0, 0] == 1
    with pytest.raises(DataError, match="img_size 64 exceeds the 34x34 sensor"):
        EventFrames(T=1, split_by="number", sensor=34, size=64)


def test_augmentation_is_flip_and_roll_seeded_per_sample():
    frames = torch.arange(2 * 2 * 8 * 8, dtype=torch.float32).view(2, 2, 8, 8)
    torch.testing.assert_close(EventAugment(hflip=1.0, max_shift=0)(frames), frames.flip(-1))
    data = [(frames, 0)]
    ds = SeededTransform(data, EventAugment(hflip=0.5, max_shift=3))
    outs = [ds[(0, s)][0] for s in range(12)]
    torch.testing.assert_close(ds[(0, 5)][0], outs[5])  # same (index, seed): same augmentation
    assert len({tuple(o.flatten()[:20].tolist()) for o in outs}) > 3
    for o in outs:  # a permutation of pixels, the same for every frame and polarity
        assert torch.equal(o.flatten().sort().values, frames.flatten())
        assert torch.equal(o[1] - o[0], torch.full_like(o[0], 128.0))


def test_wide_policy_applies_one_geometric_op_to_every_frame_alike():
    """Each sample gets one of the six operations; whatever it is, every frame and polarity moves the same
    way (frame t is (t + 1) x frame 0 before, so it must be after), and the same (index, seed) repeats it."""
    base = torch.rand(2, 16, 16).round()
    frames = torch.stack([base * (t + 1) for t in range(3)])  # [T=3, 2, 16, 16]
    ds = SeededTransform([(frames, 0)], EventAugment(hflip=0.5, policy="wide"))
    outs = [ds[(0, s)][0] for s in range(40)]
    torch.testing.assert_close(ds[(0, 7)][0], outs[7])
    assert len({tuple(o.flatten().tolist()) for o in outs}) > 10
    for o in outs:
        assert o.shape == frames.shape
        for t in range(3):
            assert torch.equal(o[t], o[0] * (t + 1))


def test_wide_operations():
    frames = torch.zeros(2, 2, 12, 12)
    frames[:, :, 4:8, 4:8] = 1.0
    assert torch.equal(wide_op(frames, "identity", 0.0), frames)
    assert torch.equal(wide_op(frames, "translate_x", 2.9), frames.roll(2, dims=-1))  # truncated, zero fill
    assert torch.equal(wide_op(frames, "translate_y", -3.0), frames.roll(-3, dims=-2))
    assert torch.equal(wide_op(frames, "rotate", 90.0), frames.rot90(1, dims=(-2, -1)))
    bar = torch.zeros(1, 1, 12, 12)
    bar[..., 5] = 1.0  # a vertical bar: under an x-shear each row slides by its own amount
    sheared = wide_op(bar, "shear_x", 0.3)
    assert not torch.equal(sheared, bar) and torch.equal(sheared.sum(-1), bar.sum(-1))  # one pixel per row
    torch.manual_seed(0)
    erased = wide_op(torch.ones(2, 2, 20, 20), "erase", 0.0)
    hole = (erased[0, 0] == 0).float().mean()
    assert 0.05 <= hole <= 0.33 and torch.equal(erased[0], erased[1]) and torch.equal(erased[0, 0], erased[0, 1])
    with pytest.raises(ValueError, match="unknown wide operation"):
        wide_op(frames, "invert", 0.0)
    with pytest.raises(ValueError, match="'roll' or 'wide'"):
        EventAugment(policy="nda")


def test_mixup_of_event_frames_mixes_samples_not_time_steps():
    from timm.data import Mixup

    from spikingformer.train.classify import classification_loss

    seen = {}

    def model(x):
        seen["x"] = x
        return torch.zeros(x.shape[1], 3)

    x = torch.arange(4.0).view(1, 4, 1, 1, 1).expand(2, 4, 2, 3, 3).clone()  # [T=2, B=4, ...]: sample b is b
    x[1] += 10  # step 1 differs from step 0: mixing steps would show
    mixup = Mixup(mixup_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=3)
    classification_loss(mixup, torch.nn.CrossEntropyLoss())(model, x.clone(), torch.tensor([0, 1, 2, 0]))
    out = seen["x"]
    assert out.shape == x.shape and not torch.allclose(out, x)  # it did mix (lam ~ Beta(1, 1) is never 1)
    assert torch.allclose(out[1] - out[0], torch.full_like(out[0], 10.0))  # the steps keep their offset
    mixed = out[0, :, 0, 0, 0]  # lam * b + (1 - lam) * (3 - b): samples paired with the flipped batch
    assert torch.allclose(mixed + mixed.flip(0), torch.full((4,), 3.0))


def test_collate_gives_time_major_batches():
    samples = [(torch.full((3, 2, 4, 4), float(b)) + torch.arange(3.0).view(3, 1, 1, 1) * 10, b) for b in range(5)]
    x, y = event_collate(samples)
    assert x.shape == (3, 5, 2, 4, 4) and y.tolist() == [0, 1, 2, 3, 4] and y.dtype == torch.long
    for t in range(3):
        for b in range(5):
            assert torch.equal(x[t, b], samples[b][0][t])
    with pytest.raises(DataError, match="differ in shape"):
        event_collate([samples[0], (torch.zeros(2, 2, 4, 4), 1)])


# ----------------------------------------------------------------------------- layouts and build_data

def write_nmnist_subset(root: Path, per_class=4, classes=3, events=2000, seed=0) -> Path:
    """``N.bs2`` + ``train1K.txt``: class ``c`` fires in its own horizontal band of the 34x34 sensor."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["#sample\t#class"]
    for i in range(per_class * classes):
        c, n = i % classes, events
        y = rng.integers(2 + 10 * c, 10 + 10 * c, n)
        ev = make_events(np.sort(rng.integers(0, 300_000, n)), rng.integers(1, 33, n), y, rng.integers(0, 2, n))
        (root / f"{i + 1}.bs2").write_bytes(encode_nmnist(ev))
        lines.append(f"{i + 1}\t{c}")
    (root / "train1K.txt").write_text("\n".join(lines) + "\n")
    return root


def test_nmnist_subset_holds_out_a_named_split_with_the_models_T(tmp_path):
    write_nmnist_subset(tmp_path, per_class=4)
    cfg = TrainConfig(model="spikingformer_dvs_2_256", model_args={"T": 3}, dataset="nmnist", data_dir=str(tmp_path),
                      val_split="holdout", holdout=3, workers=0)
    d = build_data(cfg, img_size=32)
    assert d.val_name == "val (held-out 3 of 12 train images, class-balanced, seed 0)"
    assert len(d.train) == 9 and d.in_chans == 2 and d.collate is event_collate and d.classes == list("0123456789")
    x, y = d.val[0]
    assert x.shape == (3, 2, 32, 32) and x.dtype == torch.float32 and x.sum() == 2000 and isinstance(y, int)


def test_gesture_release_uses_the_official_trial_split(tmp_path):
    raw = tmp_path / "DvsGesture"
    raw.mkdir()
    ev = random_events(400, 128, seed=7, t_max=1000)
    for user in ("user01_led", "user02_natural"):
        (raw / f"{user}.aedat").write_bytes(encode_aedat3([(1, 0, ev)]))
    (raw / "user01_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,0,500\n11,500,1000\n")
    (raw / "user02_natural_labels.csv").write_text("class,startTime_usec,endTime_usec\n3,100,300\n")
    (raw / "trials_to_train.txt").write_text("user01_led.aedat\n")
    (raw / "trials_to_test.txt").write_text("user02_natural.aedat\n")
    r = load_raw("dvs128_gesture", str(tmp_path))
    assert r.train.targets == [0, 10] and r.val.targets == [2] and r.native_size == 128 and len(r.classes) == 11
    assert r.val_name == f"test (official DVS128 Gesture test split of {tmp_path}, 1 recordings)"
    window, label = r.val[0]
    assert label == 2 and window["t"].min() >= 100 and window["t"].max() < 300
    assert len(window) == ((ev["t"] >= 100) & (ev["t"] < 300)).sum()


def test_cifar10_dvs_layouts_and_missing_classes(tmp_path):
    ev = random_events(64, 128, seed=8)
    for c in CIFAR10_DVS_CLASSES:
        (tmp_path / c).mkdir()
        for i in range(2):
            (tmp_path / c / f"cifar10_{c}_{i}.aedat").write_bytes(encode_cifar10_dvs(ev))
    r = load_raw("cifar10_dvs", str(tmp_path))
    assert len(r.train) == 20 and r.val is None and r.train.targets[:4] == [0, 0, 1, 1]
    assert_same_events(r.train[5][0], ev["t"], ev["x"], ev["y"], ev["p"])
    (tmp_path / "truck" / "cifar10_truck_0.aedat").rename(tmp_path / "x")
    for f in (tmp_path / "truck").iterdir():
        f.unlink()
    (tmp_path / "truck").rmdir()
    with pytest.raises(DataError, match=r"missing class folder\(s\) \['truck'\]"):
        load_raw("cifar10_dvs", str(tmp_path))


def test_events_outside_the_sensor_are_named(tmp_path):
    write_nmnist_subset(tmp_path, per_class=1)
    (tmp_path / "2.bs2").write_bytes(encode_nmnist(make_events([0], [40], [1], [1])))
    r = load_raw("nmnist", str(tmp_path))
    with pytest.raises(DataError, match=r"2.bs2: event at x=40 / y=1 outside the 34x34 sensor"):
        r.train[1]


def test_event_configs_refuse_image_only_options():
    with pytest.raises(ConfigError, match="cutmix is not implemented for event frames"):
        TrainConfig(dataset="cifar10_dvs", mixup=0.5, cutmix=1.0)
    assert TrainConfig(dataset="cifar10_dvs", mixup=0.5).mixup_active  # mixup mixes whole samples: allowed
    with pytest.raises(ConfigError, match="event_policy must be one of roll, wide"):
        TrainConfig(dataset="cifar10_dvs", event_aug=True, event_policy="nda")
    with pytest.raises(ConfigError, match="holdout_pick must be one of random, last"):
        TrainConfig(holdout_pick="first")
    with pytest.raises(ConfigError, match="left- and right-hand classes"):
        TrainConfig(dataset="dvs128_gesture", event_aug=True)
    with pytest.raises(ConfigError, match="split_by must be one of number, time"):
        TrainConfig(dataset="nmnist", split_by="frames")
    with pytest.raises(ConfigError, match="event_aug applies to the event datasets"):
        TrainConfig(dataset="cifar10", event_aug=True)


def test_shipped_event_configs_load():
    from spikingformer.train.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    for name, T in (("dvs128_gesture", 16), ("cifar10_dvs", 16), ("nmnist", 4)):
        cfg = load_config(root / f"{name}.yaml")
        assert cfg.dataset == name and cfg.model_args["T"] == T and cfg.mixup_active == (name == "cifar10_dvs")
    official = load_config(root / "cifar10_dvs.yaml")  # zhouchenlin2096/Spikingformer cifar10-dvs/train.py
    assert (official.event_policy, official.holdout_pick, official.mixup, official.mixup_prob,
            official.mixup_off_epoch, official.total_epochs, official.weight_decay) == \
           ("wide", "last", 0.5, 0.5, 75, 106, 0.06)


@pytest.mark.skipif(not REAL_NMNIST.exists(), reason="../shared/data/nmnist-small-train.tar.gz not present")
def test_real_nmnist_recordings(tmp_path, sj):
    with tarfile.open(REAL_NMNIST) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(("/1.bs2", "/2.bs2", "/train1K.txt"))]
        tar.extractall(tmp_path, members=members, filter="data")
    f = next(tmp_path.rglob("1.bs2"))
    ev, ref = read_nmnist_bin(f), sj.utils.load_ATIS_bin(f)
    assert_same_events(ev, ref["t"], ref["x"], ref["y"], ref["p"])
    assert len(ev) > 1000 and ev["x"].max() < 34 and ev["y"].max() < 34 and (np.diff(ev["t"]) >= 0).all()
    assert next(tmp_path.rglob("train1K.txt")).read_text().splitlines()[1:3] == ["1\t5", "2\t0"]


# ----------------------------------------------------------------------------- training end to end

@pytest.mark.parametrize("recipe", [dict(event_policy="roll", event_roll=2, batch_size=3),
                                    dict(event_policy="wide", holdout_pick="last", mixup=0.5, mixup_prob=0.5,
                                         batch_size=4)], ids=["roll", "official-cifar10-dvs"])
def test_one_epoch_on_synthetic_events_is_spike_driven(tmp_path, recipe):
    from spikingformer.train.classify import run

    torch.set_num_threads(1)
    write_nmnist_subset(tmp_path / "nmnist", per_class=4)
    cfg = TrainConfig(model="spikingformer_dvs_2_256", dataset="nmnist", data_dir=str(tmp_path / "nmnist"),
                      model_args=dict(depth=1, dim=32, num_heads=2, T=2, downsample=[False, False, True, True]),
                      img_size=32, val_split="holdout", holdout=3, event_aug=True, hflip=0.5, val_batch_size=3,
                      workers=0, epochs=1, warmup_epochs=0, cooldown_epochs=0, output=str(tmp_path / "run"),
                      progress=False, **recipe)
    s = run(cfg)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_val_acc"] == s["final_val_acc"]
    assert s["dataset"] == "nmnist" and s["val_split"].startswith("val (held-out 3 of 12")
    assert s["val_split"].endswith("by file name)") == (cfg.holdout_pick == "last")
    assert s["spike_driven"] is True and s["non_spike_layers"] == [] and 0.0 < s["firing_rate"] < 1.0
    assert s["params"] > 0 and s["epochs"] == 1


def test_eval_feeds_frames_at_the_T_of_the_model_it_runs(tmp_path, monkeypatch):
    """An event run evaluated at another T (exported with --t, or --set model_args.T) is fed frames at that T."""
    from spikingformer import cli
    from spikingformer.train import scoring
    from spikingformer.train.classify import run
    from spikingformer.weights.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    write_nmnist_subset(tmp_path / "nmnist", per_class=2)
    run(TrainConfig(model="spikingformer_dvs_2_256", dataset="nmnist", data_dir=str(tmp_path / "nmnist"),
                    model_args=dict(depth=1, dim=32, num_heads=2, T=2, downsample=[False, False, True, True]),
                    img_size=32, val_split="holdout", holdout=3, batch_size=3, val_batch_size=3, workers=0,
                    epochs=1, warmup_epochs=0, cooldown_epochs=0, output=str(tmp_path / "run"), progress=False))
    steps, evaluate = [], scoring.evaluate

    def spy(model, loader, *args, **kwargs):
        steps.append((next(iter(loader))[0].shape[0], model.cfg.T))
        return evaluate(model, loader, *args, **kwargs)

    monkeypatch.setattr(scoring, "evaluate", spy)
    last, exported = tmp_path / "run" / "last.pt", tmp_path / "t3.safetensors"
    assert cli.main(["export", "--checkpoint", str(last), "--out", str(exported), "--t", "3"]) == 0
    assert cli.main(["eval", "--checkpoint", str(exported)]) == 0
    assert cli.main(["eval", "--checkpoint", str(last), "--set", "model_args.T=4"]) == 0
    assert cli.main(["eval", "--checkpoint", str(last)]) == 0
    recipe = tmp_path / "recipe.yaml"  # the run's own config, at T = 2: the weights' T = 3 wins, --set over both
    recipe.write_text(json.dumps(load_checkpoint(last)["config"]))
    assert cli.main(["eval", "--checkpoint", str(exported), "--config", str(recipe)]) == 0
    assert cli.main(["eval", "--checkpoint", str(exported), "--config", str(recipe), "--set", "model_args.T=4"]) == 0
    assert steps == [(3, 3), (4, 4), (2, 2), (3, 3), (4, 4)]  # (frames fed, model's T)
