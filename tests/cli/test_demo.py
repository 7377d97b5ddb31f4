"""``spikingformer demo``: the README's main command really learns the digits."""
import json

import pytest
import torch

from spikingformer import cli
from spikingformer.analysis.energy import estimate_energy
from spikingformer.cli.demo import demo_config
from spikingformer.data import build_data
from spikingformer.weights.loading import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_reaches_90_percent_on_held_out_digits(tmp_path, capsys):
    """The full demo runs 12 epochs (about 99 %); 5 keep the suite quick and still must clear 90 %."""
    out = tmp_path / "new" / "demo.json"  # the folder is made: a minute of training must not end in a crash
    assert cli.main(["demo", "--epochs", "5", "--json", str(out), "--output", str(tmp_path / "run")]) == 0
    r = json.loads(out.read_text())
    assert r["val_acc"] >= 0.9, r
    assert r["val_split"] == "val (held-out 360 of 1797 train images, class-balanced, seed 0)"
    assert r["spike_driven"] is True and r["proven"] is True and 0.0 < r["firing_rate"] < 0.5 and r["seconds"] > 0
    printed = capsys.readouterr().out
    assert "validation accuracy:" in printed and "spike-driven:        yes, proven" in printed
    assert (tmp_path / "run" / "metrics.png").exists()

    # `eval` of the run it kept, its --json into a folder not yet there
    ev = tmp_path / "eval" / "e.json"
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", str(ev)]) == 0
    assert json.loads(ev.read_text())["val_acc"] == pytest.approx(r["val_acc"])
    capsys.readouterr()
    for command in ("eval", "energy"):  # digits ship with scikit-learn: a --data is said to be unread, not ignored
        assert cli.main([command, "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", "/nowhere"]) == 0
        said = capsys.readouterr()
        assert "note: --data /nowhere is not read: the digits dataset is bundled" in said.out + said.err

    # the printed energy is Eq. 19-20 of the run's last.pt over all 360 held-out digits
    model = load_model(str(tmp_path / "run" / "last.pt"))
    val = build_data(demo_config(), 8).val
    want = estimate_energy(model, torch.stack([val[i][0] for i in range(360)])).total_mJ
    assert r["energy_uJ"] == pytest.approx(1e3 * want, rel=1e-6) and "uJ per image (Eq. 19-20" in printed


def test_demo_compare_trains_both_families_on_the_same_split(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cli.main(["demo", "--compare", "--epochs", "1", "--json", str(out)]) == 0
    runs = {r["label"]: r for r in json.loads(out.read_text())["runs"]}
    ours, sew = runs["Spikingformer"], runs["Spikformer (SEW)"]
    assert (ours["model"], sew["model"]) == ("spikingformer_4_256", "spikformer_4_384")  # the families' names
    assert ours["model_args"] == sew["model_args"] and ours["model_args"]["dim"] == 64  # at the demo's size
    assert ours["params"] == sew["params"] and ours["val_split"] == sew["val_split"]
    # the papers' point: the SEW residual feeds integers to the next Linears, which multiply (MACs)
    assert ours["spike_driven"] and ours["proven"] and not sew["spike_driven"] and not sew["proven"]
    assert sew["energy_uJ"] > 3 * ours["energy_uJ"] > 0
    table = capsys.readouterr().out
    assert "Spikingformer " in table and "Spikformer (SEW)" in table and "uJ  NO" in table
