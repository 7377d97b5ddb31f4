"""The DVS128 Gesture window cache: one parse per recording, the same frames as a direct parse, atomic files,
stale or corrupt files rebuilt, an unwritable cache falls back to parsing."""
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from spikingformer.data import event_cache, event_formats, load_raw
from spikingformer.data.event_cache import GestureWindows, cache_root
from spikingformer.data.events import EventFrames, read_aedat3

from .test_events import encode_aedat3, random_events

WINDOWS = [(0, 2000), (2500, 5000), (5000, 9000)]  # three labelled gestures per recording


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", str(d))
    return d


@pytest.fixture
def parses(monkeypatch):
    """Counts recordings parsed (by path)."""
    calls = []

    def counting(path):
        calls.append(Path(path).name)
        return read_aedat3(path)

    monkeypatch.setattr(event_formats, "read_aedat3", counting)
    event_cache._parsed_aedat3.cache_clear()
    yield calls
    event_cache._parsed_aedat3.cache_clear()


def write_gesture(root: Path, users=("user01_led", "user02_natural", "user03_lab"), n=3000) -> Path:
    raw = root / "DvsGesture"
    raw.mkdir(parents=True, exist_ok=True)
    for k, user in enumerate(users):
        a, b = random_events(n, 128, seed=10 + k, t_max=6000), random_events(n // 2, 128, seed=20 + k, t_max=9000)
        b["t"] = np.sort(b["t"]) + 6000
        (raw / f"{user}.aedat").write_bytes(encode_aedat3([(1, 0, a), (2, 0, a[:7]), (1, 0, b)]))
        rows = "".join(f"{c + 1 + k},{s},{e}\n" for c, (s, e) in enumerate(WINDOWS))
        (raw / f"{user}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + rows)
    (raw / "trials_to_train.txt").write_text("".join(f"{u}.aedat\n" for u in users[:-1]))
    (raw / "trials_to_test.txt").write_text(f"{users[-1]}.aedat\n")
    return root


def direct(ds, i):
    """The window cut from a fresh parse, as before the cache."""
    _, path, (start, end) = ds.items[i]
    ev = read_aedat3(path)
    return ev[(ev["t"] >= start) & (ev["t"] < end)]


def test_cached_windows_and_frames_equal_a_direct_parse(tmp_path, cache, parses):
    write_gesture(tmp_path)
    frames = EventFrames(T=8, split_by="time", sensor=128, size=128)
    for run in ("cold", "warm"):
        r = load_raw("dvs128_gesture", str(tmp_path))
        for ds in (r.train, r.val):
            for i in reversed(range(len(ds))):
                ev, target = ds[i]
                ref = direct(ds, i)
                assert ev.dtype == ref.dtype and len(ev) > 100, run
                np.testing.assert_array_equal(ev, ref, err_msg=f"{run} sample {i}")
                np.testing.assert_array_equal(frames(ev).numpy(), frames(ref).numpy())
    assert r.train.targets == [0, 1, 2, 1, 2, 3] and r.val.targets == [2, 3, 4]
    assert len(list(cache.rglob("*.npz"))) == 9 and not list(cache.rglob("*.tmp"))


def test_each_recording_is_parsed_once_for_all_its_windows(tmp_path, cache, parses):
    write_gesture(tmp_path)
    ds = load_raw("dvs128_gesture", str(tmp_path)).train
    for i in np.random.default_rng(0).permutation(len(ds)).tolist() * 2:  # shuffled, two epochs
        ds[i]
    assert sorted(parses) == ["user01_led.aedat", "user02_natural.aedat"]
    later_run = pickle.loads(pickle.dumps(load_raw("dvs128_gesture", str(tmp_path)).train))  # as a worker gets it
    for i in range(len(later_run)):
        later_run[i]
    assert len(parses) == 2
    reader = ds.items[0][0]
    assert isinstance(reader, GestureWindows) and reader.dir.parent == cache / "dvs128_gesture"


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "garbage", "stale_mtime", "other_window"])
def test_damaged_or_stale_cache_files_are_rebuilt_not_trusted(tmp_path, cache, parses, damage):
    write_gesture(tmp_path)
    ds = load_raw("dvs128_gesture", str(tmp_path)).train
    ref = ds[1][0]
    _, path, (start, end) = ds.items[1]
    f = ds.items[1][0].file(path, start, end)
    data = f.read_bytes()
    if damage == "truncated":
        f.write_bytes(data[:len(data) // 2])
    elif damage == "flipped_byte":  # inside the events payload: only the zip CRC can tell
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "garbage":
        f.write_bytes(b"PK\x03\x04" + os.urandom(100))
    elif damage == "stale_mtime":  # the recording was replaced (same size, new mtime)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:  # a well-formed file holding another window's events
        f.write_bytes(ds.items[0][0].file(path, *ds.items[0][2]).read_bytes())
    assert parses == ["user01_led.aedat"]
    np.testing.assert_array_equal(ds[1][0], ref)
    assert parses == ["user01_led.aedat"] * 2  # rebuilt from the recording
    np.testing.assert_array_equal(ds[1][0], ref)
    assert len(parses) == 2  # and trusted again once rewritten


def test_a_rewritten_recording_gives_its_new_events(tmp_path, cache, parses):
    write_gesture(tmp_path)
    ds = load_raw("dvs128_gesture", str(tmp_path)).train
    old = ds[0][0]
    ev = random_events(500, 128, seed=99, t_max=2000)
    ds.items[0][1].write_bytes(encode_aedat3([(1, 0, ev)]))
    new = ds[0][0]
    assert len(new) == 500 != len(old)
    np.testing.assert_array_equal(new, direct(ds, 0))


def test_an_unwritable_cache_falls_back_to_parsing_with_one_warning(tmp_path, monkeypatch, parses):
    write_gesture(tmp_path)
    (tmp_path / "not_a_dir").write_text("")
    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", str(tmp_path / "not_a_dir" / "cache"))
    ds = load_raw("dvs128_gesture", str(tmp_path)).train
    with pytest.warns(RuntimeWarning, match="cannot be written") as rec:
        outs = [ds[i][0] for i in range(len(ds))]
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    for i, ev in enumerate(outs):
        np.testing.assert_array_equal(ev, direct(ds, i))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[0]


def test_a_write_killed_midway_leaves_no_cache_file(tmp_path, cache, parses, monkeypatch):
    write_gesture(tmp_path)
    ds = load_raw("dvs128_gesture", str(tmp_path)).train

    def dies_midway(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(event_cache.np, "savez", dies_midway)
    with pytest.warns(RuntimeWarning, match="No space left"):
        ev = ds[0][0]
    np.testing.assert_array_equal(ev, direct(ds, 0))
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no half file, no temporary left behind


def test_leftover_temporary_files_are_never_read(tmp_path, cache, parses):
    write_gesture(tmp_path)
    ds = load_raw("dvs128_gesture", str(tmp_path)).train
    _, path, (start, end) = ds.items[0]
    f = ds.items[0][0].file(path, start, end)
    f.parent.mkdir(parents=True)
    (f.parent / f".{f.name}.abc123.tmp").write_bytes(b"half")  # a killed writer's leftover
    np.testing.assert_array_equal(ds[0][0], direct(ds, 0))
    assert f.is_file() and parses == ["user01_led.aedat"]


def test_cache_off_writes_nothing_and_the_default_is_the_user_cache(tmp_path, monkeypatch, parses):
    write_gesture(tmp_path / "data")
    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", "off")
    ds = load_raw("dvs128_gesture", str(tmp_path / "data")).train
    assert [len(ds[i][0]) for i in range(len(ds))] == [len(direct(ds, i)) for i in range(len(ds))]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".aedat", ".csv",
                                                                                          ".txt")) == []
    monkeypatch.delenv("SPIKINGFORMER_EVENT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "spikingformer" / "events"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "spikingformer" / "events"
    assert cache_root("off") is None and cache_root(tmp_path / "x") == tmp_path / "x"
