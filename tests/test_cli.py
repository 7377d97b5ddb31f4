import json

from spikingformer import cli


def test_models_command_reports_counts_and_verdicts(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert cli.main(["models", "spik*former_4_384", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"spikingformer_4_384", "spikformer_4_384"}
    assert rows["spikingformer_4_384"]["params"] == 9_320_122 and rows["spikingformer_4_384"]["spike_driven"]
    assert not rows["spikformer_4_384"]["spike_driven"] and rows["spikformer_4_384"]["non_spike_layers"]
    assert "spikingformer_4_384" in capsys.readouterr().out


def test_models_command_rejects_a_pattern_that_matches_nothing(capsys):
    assert cli.main(["models", "resnet*"]) == 2
    assert "no model matches 'resnet*'" in capsys.readouterr().err
