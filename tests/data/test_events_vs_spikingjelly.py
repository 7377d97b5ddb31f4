"""Our event readers and frame integration against SpikingJelly 2.0's, on the same bytes.

Users compare with SpikingJelly's datasets, so every recording here is written as raw bytes in its format
(built below, in ``tmp_path``; nothing is downloaded) and decoded by both libraries:

- N-MNIST ``.bs2``/``.bin`` (``load_ATIS_bin``), DVS128 Gesture AEDAT 3.1 (``load_aedat_v3``) and CIFAR10-DVS
  AEDAT 2.0 (``cifar10_dvs._load_origin_data``) give the same ``t, x, y, p``; our ``.npz`` reader reads
  SpikingJelly's extracted ``events_np`` files back to the same events;
- frames ``[T, 2, H, W]`` equal ``integrate_events_by_fixed_frames_number`` for ``split_by`` ``number`` and
  ``time``, on each dataset's sensor (34x34, 128x128, 128x128), for T that do and do not divide the event count;
- DVS128 Gesture windows cut by the labels CSV (``start <= t < end``) hold the events SpikingJelly's
  ``_split_aedat_files_to_np`` writes, overlapping and repeated-label rows included.

Differences, deliberate and asserted as such (not forced to equality):

1. N-MNIST timestamp-overflow markers (``y == 240``): ours drops them and adds 2**13 µs to every later
   timestamp, as the dataset authors' reader (Orchard's ``Read_Ndataset.m``) and tonic do; SpikingJelly keeps
   them as events at ``y = 240``, outside the 34x34 sensor.  Without markers (the recordings seen so far) the
   two agree.
2. ``split_by="time"`` is SpikingJelly's *fixed frames number* time split (``cal_fixed_frames_number_segment_index``:
   ``dt = (t_{N-1} - t_0) // T``, windows ``[t_0 + i dt, t_0 + (i + 1) dt)``, the last frame runs to the last
   event), not ``integrate_events_by_fixed_duration``, which fixes ``dt`` and returns ``ceil((t_{N-1} - t_0) / dt)``
   frames.  With ``duration = dt`` the two agree on frames ``0 .. T-2`` and SpikingJelly's remaining frames sum
   to our last one (the same count, T, exactly when T divides ``t_{N-1} - t_0``).
3. A time window without events (a pause in the recording, or fewer than T microseconds in all): SpikingJelly's
   time split raises ``IndexError``; ours gives an empty frame.
"""
import struct

import numpy as np
import pytest

from spikingformer.data.events import (
    SENSOR_SIZE,
    EventFrames,
    integrate_frames,
    load_event_raw,
    make_events,
    read_aedat3,
    read_cifar10_dvs_aedat,
    read_nmnist_bin,
    read_npz_events,
)


def random_events(n, size, seed, t_max=300_000, t_min=0):
    rng = np.random.default_rng(seed)
    return make_events(np.sort(rng.integers(t_min, t_max, n)), rng.integers(0, size, n), rng.integers(0, size, n),
                       rng.integers(0, 2, n))


def assert_same_events(ours, ref, msg=""):
    """``ours`` (structured array) holds exactly the events of SpikingJelly's ``{t, x, y, p}`` dict, in order."""
    assert len(ours) == len(ref["t"]), msg
    for k in "txyp":
        np.testing.assert_array_equal(ours[k].astype(np.int64), np.asarray(ref[k]).astype(np.int64),
                                      err_msg=f"{msg} field {k}")


def as_dict(ev):
    return {k: ev[k] for k in "txyp"}


# ----------------------------------------------------------------------------- the formats, as bytes

def nmnist_bytes(ev) -> bytes:
    """5 bytes per event: x | y | p (1 bit) t[22:16] (7 bits) | t[15:8] | t[7:0]."""
    t = ev["t"].astype(np.int64)
    cols = [ev["x"], ev["y"], (ev["p"].astype(np.int64) << 7) | (t >> 16), t >> 8, t]
    return np.stack([np.asarray(c, np.int64) & 0xFF for c in cols], 1).astype(np.uint8).tobytes()


AEDAT3_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-18 16:12:02\r\n" \
                b"#!END-HEADER\r\n"


def aedat3_packet(ev=None, overflow=0, event_type=1, raw=None, size=8, valid_bit=1) -> bytes:
    """One packet: 28-byte little-endian header (type, source, size, ts offset, ts overflow, capacity, number,
    valid), then ``capacity * size`` bytes.  Polarity events: ``x << 17 | y << 2 | p << 1 | valid``, then the
    low 31 bits of ``t`` (``t >> 31`` is the packet's ``overflow``)."""
    if raw is None:
        assert (ev["t"] >> 31 == overflow).all()
        data = (ev["x"].astype(np.uint32) << 17) | (ev["y"].astype(np.uint32) << 2) | \
               (ev["p"].astype(np.uint32) << 1) | valid_bit
        raw = np.stack([data, (ev["t"] & 0x7FFFFFFF).astype(np.uint32)], 1).astype("<u4").tobytes()
    n = len(raw) // size
    return struct.pack("<HHIIIIII", event_type, 1, size, 4, overflow, n, n, n) + raw


def aedat2_bytes(x_raw, y_raw, pol_raw, t, flags=0) -> bytes:
    """AEDAT 2.0 as CIFAR10-DVS stores it: '#' header lines, then big-endian (address, timestamp) uint32 pairs
    with ``address = y_raw << 8 | x_raw << 1 | pol_raw`` (+ ``flags`` in bits outside those fields)."""
    addr = (np.asarray(y_raw, np.uint32) << 8) | (np.asarray(x_raw, np.uint32) << 1) | np.asarray(pol_raw, np.uint32)
    words = np.stack([addr | np.uint32(flags), np.asarray(t, np.uint32)], 1).astype(">u4").tobytes()
    return (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
            b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
            b"# Timestamps tick is 1 us\r\n# created Sat Jan 07 12:07:55 CST 2017\r\n") + words


# ----------------------------------------------------------------------------- decoders

def test_sensor_sizes_are_spikingjellys(sj):
    assert (SENSOR_SIZE["nmnist"],) * 2 == sj.n_mnist.NMNIST.get_H_W() == (34, 34)
    assert (SENSOR_SIZE["dvs128_gesture"],) * 2 == sj.dvs128_gesture.DVS128Gesture.get_H_W() == (128, 128)
    assert (SENSOR_SIZE["cifar10_dvs"],) * 2 == sj.cifar10_dvs.CIFAR10DVS.get_H_W() == (128, 128)


@pytest.mark.parametrize("suffix", [".bs2", ".bin"])
def test_nmnist_decoding_matches(tmp_path, sj, suffix):
    ev = random_events(997, 34, seed=1, t_max=2**23)
    ev[0], ev[-1] = (0, 0, 0, 0), (2**23 - 1, 33, 33, 1)  # the fields' extremes
    f = tmp_path / f"00001{suffix}"
    f.write_bytes(nmnist_bytes(ev))
    ours, ref = read_nmnist_bin(f), sj.utils.load_ATIS_bin(f)
    assert_same_events(ours, ref)
    assert_same_events(ours, as_dict(ev))  # and both are the events written


def test_nmnist_overflow_markers_are_dropped_by_us_kept_by_spikingjelly(tmp_path, sj):
    """Difference 1 of the module docstring: ours = SpikingJelly's minus the ``y == 240`` markers, every later
    timestamp shifted by 2**13 µs per marker before it."""
    ev = random_events(60, 34, seed=2, t_max=2**23 - 3 * 2**13)
    markers = [10, 11, 40]
    for i in markers:
        ev[i]["x"], ev[i]["y"], ev[i]["p"] = 0, 240, 0
    f = tmp_path / "1.bs2"
    f.write_bytes(nmnist_bytes(ev))
    ours, ref = read_nmnist_bin(f), sj.utils.load_ATIS_bin(f)
    assert len(ref["t"]) == 60 and (ref["y"] == 240).sum() == 3  # SpikingJelly: markers are events
    keep = ref["y"] != 240
    shift = np.cumsum(~keep)[keep] << 13
    assert_same_events(ours, {"t": ref["t"][keep] + shift, "x": ref["x"][keep], "y": ref["y"][keep],
                              "p": ref["p"][keep]})
    assert ours["y"].max() < 34


def test_nmnist_reads_spikingjellys_extracted_npz(tmp_path, sj):
    ev = random_events(300, 34, seed=3, t_max=2**23)
    f = tmp_path / "5.bin"
    f.write_bytes(nmnist_bytes(ev))
    sj.utils._save_atis_bin_as_npz(f, tmp_path / "5.npz")  # what NMNIST writes to events_np/
    assert_same_events(read_npz_events(tmp_path / "5.npz"), sj.utils.load_ATIS_bin(f))


def test_aedat3_decoding_matches(tmp_path, sj):
    """Several polarity packets (the second and third past a timestamp overflow), skipped non-polarity packets
    (special events, 8 bytes; IMU6, 36 bytes), and events whose valid bit is 0 (both readers keep every slot)."""
    a = random_events(50, 128, seed=4, t_min=2**31 - 10_000, t_max=2**31)
    b = random_events(40, 128, seed=5, t_min=2**31, t_max=2**31 + 5_000)
    c = random_events(30, 128, seed=6, t_min=3 * 2**31, t_max=3 * 2**31 + 5_000)
    a[0], a[1] = (2**31 - 20_000, 0, 0, 0), (2**31 - 19_999, 127, 127, 1)
    special = random_events(4, 128, seed=7)
    imu = bytes(range(36)) * 2
    data = AEDAT3_HEADER + aedat3_packet(a) + aedat3_packet(special, event_type=0) + aedat3_packet(b, overflow=1) \
        + aedat3_packet(raw=imu, event_type=3, size=36, overflow=1) + aedat3_packet(c, overflow=3, valid_bit=0)
    f = tmp_path / "user01_fluorescent.aedat"
    f.write_bytes(data)
    ours, ref = read_aedat3(f), sj.utils.load_aedat_v3(f)
    assert_same_events(ours, ref)
    assert_same_events(ours, as_dict(np.concatenate([a, b, c])))


def test_cifar10_dvs_decoding_matches(tmp_path, sj):
    """Random raw fields, flag bits outside them (bit 15, bit 31: external/special events are kept by both),
    timestamps up to 2**32 - 1."""
    rng = np.random.default_rng(8)
    n = 500
    x_raw, y_raw, pol, t = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), \
        np.sort(rng.integers(0, 2**32, n))
    f = tmp_path / "cifar10_airplane_0.aedat"
    f.write_bytes(aedat2_bytes(x_raw, y_raw, pol, t, flags=(1 << 15) | (1 << 31)))
    ours, ref = read_cifar10_dvs_aedat(f), sj.cifar10_dvs._load_origin_data(f)
    assert_same_events(ours, ref)
    # the convention both follow: transposed and rotated sensor, raw polarity 0 = ON
    assert_same_events(ours, {"t": t, "x": 127 - y_raw, "y": 127 - x_raw, "p": 1 - pol})
    sj.cifar10_dvs._read_aedat_save_to_np(f, tmp_path / "cifar10_airplane_0.npz")  # SpikingJelly's events_np/
    assert_same_events(read_npz_events(tmp_path / "cifar10_airplane_0.npz"), ref)


def test_cifar10_dvs_one_event_by_hand(tmp_path, sj):
    # address 0x0903 = y_raw 9, x_raw 1, raw polarity 1  ->  x = 127 - 9, y = 127 - 1, p = 0 (OFF)
    f = tmp_path / "one.aedat"
    f.write_bytes(b"#!AER-DAT2.0\r\n" + struct.pack(">II", 0x0903, 123456))
    ours = read_cifar10_dvs_aedat(f)
    assert ours.tolist() == [(123456, 118, 126, 0)]
    assert_same_events(ours, sj.cifar10_dvs._load_origin_data(f))


# ----------------------------------------------------------------------------- frames

def _recording(tmp_path, sj, dataset, n, seed):
    """``n`` events written in ``dataset``'s format; returns (our events, SpikingJelly's dict) for that file."""
    ev = random_events(n, SENSOR_SIZE[dataset], seed)
    if dataset == "nmnist":
        f = tmp_path / f"{seed}.bin"
        f.write_bytes(nmnist_bytes(ev))
        return read_nmnist_bin(f), sj.utils.load_ATIS_bin(f)
    if dataset == "dvs128_gesture":
        f = tmp_path / f"user{seed:02d}_led.aedat"
        f.write_bytes(AEDAT3_HEADER + aedat3_packet(ev[:n // 2]) + aedat3_packet(ev[n // 2:]))
        return read_aedat3(f), sj.utils.load_aedat_v3(f)
    f = tmp_path / f"cifar10_cat_{seed}.aedat"
    f.write_bytes(aedat2_bytes(127 - ev["y"], 127 - ev["x"], 1 - ev["p"], ev["t"]))
    return read_cifar10_dvs_aedat(f), sj.cifar10_dvs._load_origin_data(f)


DATASETS = ["nmnist", "dvs128_gesture", "cifar10_dvs"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("split_by", ["number", "time"])
def test_frames_match_spikingjelly(tmp_path, sj, dataset, split_by):
    """1009 events (prime: no T > 1 divides it) on the dataset's sensor; the same bytes through each library's
    loader and integration, and through ``EventFrames`` (the datasets' transform) at full sensor size."""
    size = SENSOR_SIZE[dataset]
    ours, ref = _recording(tmp_path, sj, dataset, 1009, seed=DATASETS.index(dataset))
    for T in (1, 3, 7, 10, 16):
        want = sj.utils.integrate_events_by_fixed_frames_number(ref, split_by, T, size, size)
        got = integrate_frames(ours, T, split_by, size, size)
        assert got.shape == (T, 2, size, size) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=f"T={T}")
        np.testing.assert_array_equal(EventFrames(T, split_by, size, size)(ours).numpy(), want, err_msg=f"T={T}")
        assert got.sum() == 1009
    if split_by == "number":  # 1009 // 16 = 63 per frame, the last one takes the 64 left over
        assert got[:-1].sum(axis=(1, 2, 3)).tolist() == [63] * 15 and got[-1].sum() == 1009 - 15 * 63


@pytest.mark.parametrize("dataset", DATASETS)
def test_more_frames_than_events_by_number(tmp_path, sj, dataset):
    """N < T: ``N // T = 0`` events per frame, all of them in the last (both libraries)."""
    size = SENSOR_SIZE[dataset]
    ours, ref = _recording(tmp_path, sj, dataset, 5, seed=11)
    want = sj.utils.integrate_events_by_fixed_frames_number(ref, "number", 8, size, size)
    got = integrate_frames(ours, 8, "number", size, size)
    np.testing.assert_array_equal(got, want)
    assert got[:-1].sum() == 0 and got[-1].sum() == 5


@pytest.mark.parametrize("split_by", ["number", "time"])
def test_frames_match_on_timestamps_out_of_order(tmp_path, sj, split_by):
    """AEDAT 3 packets that overlap in time (the second starts before the first ends) and a few swapped
    neighbours: the time split then takes, as SpikingJelly's, each window's first to last event by index."""
    a, b = random_events(400, 128, seed=13, t_max=200_000), random_events(400, 128, seed=14, t_min=150_000)
    for i in (5, 77, 301):
        a[i], a[i + 1] = a[i + 1].copy(), a[i].copy()
    f = tmp_path / "user03_lab.aedat"
    f.write_bytes(AEDAT3_HEADER + aedat3_packet(a) + aedat3_packet(b))
    ours, ref = read_aedat3(f), sj.utils.load_aedat_v3(f)
    assert (np.diff(ours["t"]) < 0).sum() == 4
    for T in (2, 5, 9):
        np.testing.assert_array_equal(integrate_frames(ours, T, split_by, 128, 128),
                                      sj.utils.integrate_events_by_fixed_frames_number(ref, split_by, T, 128, 128))


def test_frames_from_spikingjellys_saved_files_match(tmp_path, sj):
    """SpikingJelly's own file pipeline (events .npz -> frames .npz, as its frame datasets build them) gives our
    frames for the raw recording."""
    ev = random_events(777, 34, seed=12)
    f = tmp_path / "3.bin"
    f.write_bytes(nmnist_bytes(ev))
    sj.utils._save_atis_bin_as_npz(f, tmp_path / "3.npz")
    (tmp_path / "frames").mkdir()

    def loader(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    for split_by in ("number", "time"):
        sj.utils.integrate_events_file_to_frames_file_by_fixed_frames_number(
            loader, str(tmp_path / "3.npz"), str(tmp_path / "frames"), split_by, 10, 34, 34)
        want = sj.utils.load_npz_frames(tmp_path / "frames" / "3.npz")
        np.testing.assert_array_equal(integrate_frames(read_nmnist_bin(f), 10, split_by, 34, 34), want)


@pytest.mark.parametrize("T, span", [(4, 400_000), (4, 400_003), (7, 300_000), (16, 299_999)])
def test_time_split_vs_spikingjellys_fixed_duration(sj, T, span):
    """Difference 2 of the module docstring, asserted: with ``duration = (t_{N-1} - t_0) // T``, SpikingJelly's
    fixed-duration frames 0..T-2 are ours, the rest sum to our last frame; the counts agree iff T | span."""
    ev = random_events(2000, 128, seed=T, t_min=1000, t_max=1000 + span)
    ev["t"][0], ev["t"][-1] = 1000, 1000 + span
    dt = span // T
    got = integrate_frames(ev, T, "time", 128, 128)
    by_duration = sj.utils.integrate_events_by_fixed_duration(as_dict(ev), dt, 128, 128)
    assert len(by_duration) == -(-span // dt) and (len(by_duration) == T) == (span % T == 0)
    np.testing.assert_array_equal(got[:-1], by_duration[:T - 1])
    np.testing.assert_array_equal(got[-1], by_duration[T - 1:].sum(0))


def test_empty_time_window_is_an_empty_frame_where_spikingjelly_raises(sj):
    """Difference 3: a pause longer than dt leaves window 1 of 3 without events."""
    ev = make_events([0, 10, 20, 250, 260, 300], [1, 2, 3, 4, 5, 6], [0] * 6, [1, 0, 1, 0, 1, 1])  # dt = 100
    with pytest.raises(IndexError):
        sj.utils.integrate_events_by_fixed_frames_number(as_dict(ev), "time", 3, 34, 34)
    got = integrate_frames(ev, 3, "time", 34, 34)
    assert got.sum(axis=(1, 2, 3)).tolist() == [3, 0, 3]
    assert got[0, 1, 0, 1] == 1 and got[0, 0, 0, 2] == 1 and got[0, 1, 0, 3] == 1  # channel p, row y, column x
    with pytest.raises(IndexError):  # a span of 20 µs in T = 40 frames: dt = 0, every window is empty
        sj.utils.integrate_events_by_fixed_frames_number(as_dict(ev[:3]), "time", 40, 34, 34)
    got = integrate_frames(ev[:3], 40, "time", 34, 34)
    assert got[:-1].sum() == 0 and got[-1].sum() == 3  # ours: the last frame runs to the last event


# ----------------------------------------------------------------------------- DVS128 Gesture segmentation

def test_gesture_windows_are_spikingjellys_samples(tmp_path, sj, monkeypatch):
    """Our DVS128 Gesture samples (raw release layout, labels CSV) against SpikingJelly's
    ``_split_aedat_files_to_np`` for the same recordings: row by row, the same events (``start <= t < end``),
    with events exactly on the window edges, overlapping windows (as user22_led's classes 9/10), a label that
    repeats (as user26_fluorescent), a window past a timestamp overflow and an empty window.  The cached copy
    (second read) and SpikingJelly's extracted ``.npz`` read by us hold the same events too."""
    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "DvsGesture"
    raw.mkdir()
    a = random_events(1500, 128, seed=20, t_min=1_000_000, t_max=9_000_000)
    b = random_events(300, 128, seed=21, t_min=2**31, t_max=2**31 + 400_000)
    a["t"][:4] = [1_000_000, 2_000_000, 2_000_000, 2_999_999]  # on the edges of rows 1-2 below
    a = np.sort(a, order="t", kind="stable")
    csvs = {"user01_fluorescent": "class,startTime_usec,endTime_usec\n"
                                  "1,1000000,2000000\n"        # ends where the next starts
                                  "2,2000000,3000000\n"
                                  "9,3500000,5200000\n"        # overlaps the next row
                                  "10,5000000,6000000\n"
                                  "8,6000000,7000000\n8,7100000,8000000\n"  # the same label twice
                                  "11,9500000,9600000\n"       # after the last event: empty
                                  f"3,{2**31 - 1000},{2**31 + 200_000}\n",  # crosses the overflow
            "user02_led": "class,startTime_usec,endTime_usec\n4,1200000,4000000\n5,4000000,8900000\n"}
    (raw / "user01_fluorescent.aedat").write_bytes(AEDAT3_HEADER + aedat3_packet(a[:700]) + aedat3_packet(a[700:])
                                                   + aedat3_packet(b, overflow=1))
    (raw / "user02_led.aedat").write_bytes(AEDAT3_HEADER + aedat3_packet(a[::3]))
    for name, text in csvs.items():
        (raw / f"{name}_labels.csv").write_text(text)
    (raw / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n")
    (raw / "trials_to_test.txt").write_text("user02_led.aedat\n")

    data = load_event_raw("dvs128_gesture", str(tmp_path))
    for split, name in ((data.train, "user01_fluorescent"), (data.val, "user02_led")):
        out = tmp_path / "events_np" / ("train" if split is data.train else "test")
        for label in range(11):
            (out / str(label)).mkdir(parents=True)
        sj.dvs128_gesture._split_aedat_files_to_np(name, raw / f"{name}.aedat", raw / f"{name}_labels.csv", out)
        rows = [line.split(",") for line in csvs[name].splitlines()[1:]]
        assert len(split) == len(rows)
        seen = [0] * 11
        for i, row in enumerate(rows):
            label = int(row[0]) - 1
            sj_file = out / str(label) / f"{name}_{seen[label]}.npz"
            seen[label] += 1
            with np.load(sj_file) as z:
                ref = {k: z[k] for k in "txyp"}
            for attempt in ("parsed", "cached"):
                ours, target = split[i]
                assert target == label
                assert_same_events(ours, ref, f"{name} row {i} ({attempt})")
            assert_same_events(read_npz_events(sj_file), ref)
            np.testing.assert_array_equal(integrate_frames(ours, 4, "number", 128, 128),
                                          sj.utils.integrate_events_by_fixed_frames_number(ref, "number", 4, 128, 128))
    train = [split_ev for split_ev, _ in data.train]
    assert [len(w) for w in train][-2] == 0 and train[-1]["t"].max() >= 2**31  # the empty and the overflow window
    assert train[0]["t"].min() == 1_000_000 and 2_000_000 not in train[0]["t"] and 2_000_000 in train[1]["t"]
    assert len(np.intersect1d(train[2]["t"], train[3]["t"])) > 0  # overlapping rows share events

    # SpikingJelly's extracted copy (events_np/{train,test}/<label>/*.npz, now beside DvsGesture/) read by us:
    # the same samples per label, in the labels CSV's order
    extracted = load_event_raw("dvs128_gesture", str(tmp_path))
    for split_raw, split_np in ((data.train, extracted.train), (data.val, extracted.val)):
        assert sorted(split_np.targets) == sorted(split_raw.targets) and len(split_np) == len(split_raw)
        for label in set(split_raw.targets):
            want = [split_raw[i][0] for i, y in enumerate(split_raw.targets) if y == label]
            got = [split_np[i][0] for i, y in enumerate(split_np.targets) if y == label]
            for g, w in zip(got, want, strict=True):
                assert_same_events(g, as_dict(w), f"label {label}")
