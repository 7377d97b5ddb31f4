"""``spikingformer demo``: the README's main command really learns the digits."""
import json

import pytest

from spikingformer import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_reaches_90_percent_on_held_out_digits(tmp_path, capsys):
    """The full demo runs 12 epochs (about 99 %); 5 keep the suite quick and still must clear 90 %."""
    out = tmp_path / "new" / "demo.json"  # the folder is made: a minute of training must not end in a crash
    assert cli.main(["demo", "--epochs", "5", "--json", str(out), "--output", str(tmp_path / "run")]) == 0
    r = json.loads(out.read_text())
    assert r["val_acc"] >= 0.9, r
    assert r["val_split"] == "val (held-out 360 of 1797 train images, class-balanced, seed 0)"
    assert r["spike_driven"] is True and 0.0 < r["firing_rate"] < 0.5 and r["seconds"] > 0
    printed = capsys.readouterr().out
    assert "validation accuracy:" in printed and "spike-driven:        yes" in printed
    assert (tmp_path / "run" / "metrics.png").exists()

    # `eval` of the run it kept, its --json into a folder not yet there
    ev = tmp_path / "eval" / "e.json"
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", str(ev)]) == 0
    assert json.loads(ev.read_text())["val_acc"] == pytest.approx(r["val_acc"])
