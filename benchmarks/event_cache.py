"""DVS128 Gesture sample loading with and without the window cache, in one run.

Writes a synthetic Gesture release (AEDAT 3.1 recordings of ``--events`` events, 11 labelled
windows each, the layout of IBM's files) and times one shuffled pass over its training samples:

- ``no cache`` (the baseline): ``SPIKINGFORMER_EVENT_CACHE=off``, every sample parses its recording;
- ``cold``: an empty cache, the first sample of each recording parses it and writes all its windows;
- ``warm``: a second pass, every sample is one cached window file.

``--frames`` also integrates ``T`` = 16 frames per sample (``split_by: time``), as training does.

    python benchmarks/event_cache.py --recordings 8 --json event_cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WINDOWS, WINDOW_US, GAP_US = 11, 6_000_000, 200_000


def write_gesture(root: Path, recordings: int, events: int, per_packet: int = 200) -> Path:
    """``root/DvsGesture``: ``userNN_led.aedat`` + ``_labels.csv`` + the two trial lists."""
    raw = root / "DvsGesture"
    raw.mkdir(parents=True, exist_ok=True)
    names = []
    for r in range(recordings):
        rng = np.random.default_rng(r)
        t = np.sort(rng.integers(0, WINDOWS * (WINDOW_US + GAP_US), events)).astype(np.int64)
        x, y, p = rng.integers(0, 128, events), rng.integers(0, 128, events), rng.integers(0, 2, events)
        chunks = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"]
        for i in range(0, events, per_packet):
            sl = slice(i, i + per_packet)
            data = (x[sl].astype(np.uint32) << 17) | (y[sl].astype(np.uint32) << 2) | (p[sl].astype(np.uint32) << 1) | 1
            body = np.stack([data, t[sl].astype(np.uint32)], 1).astype("<u4").tobytes()
            n = len(data)  # polarity event packet header: type 1, source 1, size 8, ts offset 4, overflow 0
            chunks.append(struct.pack("<HHIIIIII", 1, 1, 8, 4, 0, n, n, n) + body)
        name = f"user{r + 1:02d}_led"
        (raw / f"{name}.aedat").write_bytes(b"".join(chunks))
        rows = ["class,startTime_usec,endTime_usec"]
        rows += [f"{k + 1},{k * (WINDOW_US + GAP_US)},{k * (WINDOW_US + GAP_US) + WINDOW_US}" for k in range(WINDOWS)]
        (raw / f"{name}_labels.csv").write_text("\n".join(rows) + "\n")
        names.append(f"{name}.aedat")
    (raw / "trials_to_train.txt").write_text("\n".join(names) + "\n")
    (raw / "trials_to_test.txt").write_text(names[0] + "\n")
    return root


def one_pass(root: Path, cache: str, frames: bool, seed: int) -> dict:
    """One shuffled pass over the training samples, with a fresh dataset (nothing kept in memory)."""
    from spikingformer.data.event_cache import CACHE_ENV, _parsed_aedat3
    from spikingformer.data.events import EventFrames
    from spikingformer.data import load_raw

    os.environ[CACHE_ENV] = cache
    _parsed_aedat3.cache_clear()
    ds = load_raw("dvs128_gesture", str(root)).train
    integrate = EventFrames(16, "time", 128, 128) if frames else None
    order = np.random.default_rng(seed).permutation(len(ds))
    start, n_events = time.perf_counter(), 0
    for i in order:
        ev, _ = ds[int(i)]
        n_events += len(ev)
        if integrate is not None:
            integrate(ev)
    seconds = time.perf_counter() - start
    return {"samples": len(ds), "events": n_events, "seconds": seconds, "ms_per_sample": 1000 * seconds / len(ds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", type=int, default=4, help="synthetic recordings (11 samples each; default 4)")
    ap.add_argument("--events", type=int, default=1_000_000, help="events per recording (default 1e6)")
    ap.add_argument("--frames", action="store_true", help="also integrate T=16 frames per sample (split_by time)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.dir or tmp)
        root = write_gesture(work / "gesture", a.recordings, a.events)
        cache = work / "cache"
        rows = {"no cache": one_pass(root, "off", a.frames, 0),
                "cold": one_pass(root, str(cache), a.frames, 1),
                "warm": one_pass(root, str(cache), a.frames, 2)}
        cache_mb = sum(f.stat().st_size for f in cache.rglob("*.npz")) / 1e6
        data_mb = sum(f.stat().st_size for f in (root / "DvsGesture").glob("*.aedat")) / 1e6
    base = rows["no cache"]["ms_per_sample"]
    print(f"{a.recordings} recordings x {a.events} events, {rows['cold']['samples']} samples"
          f"{', with T=16 frames' if a.frames else ''}")
    print(f"{'pass':10s} {'ms/sample':>10s} {'speed-up':>9s}")
    for name, r in rows.items():
        r["speedup"] = base / r["ms_per_sample"]
        print(f"{name:10s} {r['ms_per_sample']:10.2f} {r['speedup']:8.1f}x")
    print(f"cache {cache_mb:.1f} MB for {data_mb:.1f} MB of recordings")
    if a.json:
        Path(a.json).write_text(json.dumps({"recordings": a.recordings, "events": a.events, "frames": a.frames,
                                            "passes": rows, "cache_MB": cache_mb, "recordings_MB": data_mb},
                                           indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
