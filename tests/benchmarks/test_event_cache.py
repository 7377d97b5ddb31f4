"""The event-cache benchmark, smoke-tested: its three passes read the same samples."""
import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "event_cache.py"


def test_three_passes_read_the_same_events(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("event_cache_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", "off")  # main() sets it per pass; restored afterwards
    out = tmp_path / "r.json"
    assert bench.main(["--recordings", "2", "--events", "20000", "--frames", "--dir", str(tmp_path / "w"),
                       "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    passes = r["passes"]
    assert list(passes) == ["no cache", "cold", "warm"]
    assert {p["samples"] for p in passes.values()} == {22}
    assert len({p["events"] for p in passes.values()}) == 1 and passes["warm"]["events"] > 0
    assert r["cache_MB"] > 0 and "speed-up" in capsys.readouterr().out
    assert len(list((tmp_path / "w" / "cache").rglob("*.npz"))) == 22  # every window written once
    sys.modules.pop("event_cache_bench", None)
