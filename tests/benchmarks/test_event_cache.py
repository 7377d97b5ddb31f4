"""The event-cache benchmark, smoke-tested: its three passes read the same samples."""
import json

import pytest

from . import load_script


@pytest.fixture
def bench():
    with load_script("event_cache") as module:
        yield module


def test_three_passes_read_the_same_events(bench, tmp_path, monkeypatch, capsys):
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
