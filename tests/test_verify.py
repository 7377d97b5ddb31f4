"""Spike-driven certificate (exit status for CI) and the paper's Fig. 3."""
import json

import pytest
import torch
from torch import nn

from spikingformer.cli import main
from spikingformer.layers import ConvBN
from spikingformer.neuron import MultiStepLIF
from spikingformer.verify import verify_model


class Tiny(nn.Module):
    """A user's own model from library layers: encoding ConvBN, SN, ConvBN; ``sew`` adds two spike maps."""

    def __init__(self, sew: bool):
        super().__init__()
        self.sew = sew
        self.encode, self.conv = ConvBN(3, 8, 3, 1, 1), ConvBN(8, 8)
        self.sn1, self.sn2 = MultiStepLIF(), MultiStepLIF()

    def forward(self, x):
        h = self.encode(x)
        s = self.sn1(h)
        if self.sew:
            s = s + self.sn2(2 * h)  # SEW-style residual: a sum of two spike maps
        return self.conv(s)


@pytest.mark.parametrize("sew", [False, True])
def test_certificate_of_a_users_module(sew):
    cert = verify_model(Tiny(sew).train(), torch.randn(2, 2, 3, 8, 8))
    enc, conv = cert.layers
    assert (enc.name, enc.role, enc.inputs[0].kind, enc.inputs[0].counts) == ("encode.conv", "encoding", "real", None)
    assert enc.ok and conv.role == "synaptic"
    if sew:
        assert not cert.spike_driven and cert.violations == [conv]
        assert set(conv.inputs[0].counts) == {0, 1, 2} and "{0, 1, 2}" in cert.table()
    else:
        assert cert.spike_driven and set(conv.inputs[0].counts) == {0, 1}
    assert sum(conv.inputs[0].counts.values()) == 2 * 2 * 8 * 8 * 8  # every input element counted once


def test_verify_exits_0_for_spikingformer(capsys):
    assert main(["verify", "--model", "spikingformer_4_256", "--t", "2", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "is spike-driven" in out and "untrained model" in out
    assert "tokenizer.encode.conv" in out and "blocks.3.attn.qkv[q]" in out


def test_verify_exits_1_for_spikformer_with_json_and_fig3(tmp_path, capsys):
    js = tmp_path / "new" / "cert.json"  # the folder is made
    rc = main(["verify", "--model", "spikformer_4_384", "--t", "1", "--batch-size", "1", "--json", str(js),
               "--plot", str(tmp_path / "figs"), "--block", "2"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "NOT spike-driven" in out
    data = json.loads(js.read_text())
    assert data["spike_driven"] is False and "blocks.3.mlp.fc1.linear" in data["violations"]
    fc1 = next(r for r in data["layers"] if r["name"] == "blocks.3.mlp.fc1.linear")
    (inp,) = fc1["inputs"]
    assert inp["kind"] == "integer" and inp["values"][:3] == [0, 1, 2] and len(inp["counts"]) == len(inp["values"])
    assert not fc1["ok"] and not fc1["spike_input"]
    png = tmp_path / "figs" / "fig3.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_verify_errors_are_clear(tmp_path, capsys):
    assert main(["verify", "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["verify", "--model", "spikingformer_4_256", "--checkpoint", str(tmp_path / "x.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["verify", "--model", "spikingformer_4_256", "--t", "1", "--batch-size", "1",
                 "--plot", str(tmp_path), "--block", "9"]) == 2
    assert "no conv/linear layer named blocks.9." in capsys.readouterr().err


@pytest.mark.parametrize("command", ["energy", "verify"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--checkpoint" in out and "--data" in out


def test_verify_text_and_event_checkpoints(tmp_path, capsys):
    from .test_energy import event_checkpoint, text_checkpoint

    js = tmp_path / "cert.json"
    assert main(["verify", "--checkpoint", str(text_checkpoint(tmp_path)), "--data", str(tmp_path),
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    # a text model encodes by embedding lookup: its first linear layer is no exempt encoding layer
    assert data["model"] == "spikingformer_text_2_128" and data["spike_driven"]
    assert [r["role"] for r in data["layers"]][:2] == ["synaptic", "synaptic"]
    assert data["layers"][0]["name"] == "blocks.0.attn.q.linear" and data["layers"][0]["inputs"][0]["kind"] == "spike"
    assert "is spike-driven" in capsys.readouterr().out
    assert main(["verify", "--checkpoint", str(event_checkpoint(tmp_path)), "--data", str(tmp_path / "nmnist"),
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["layers"][0]["role"] == "encoding" and data["layers"][0]["inputs"][0]["kind"] == "integer"
    assert any("nmnist val (held-out 3 of 6" in n for n in data["notes"])
    assert main(["verify"]) == 2
    assert "give --model, or a --checkpoint" in capsys.readouterr().err


def test_bad_data_for_a_run_checkpoint_is_a_usage_error_not_a_verdict(tmp_path, capsys):
    from .test_energy import event_checkpoint

    # exit 1 would read as "NOT spike-driven"
    assert main(["verify", "--checkpoint", str(event_checkpoint(tmp_path)), "--data", str(tmp_path / "nope")]) == 2
    assert f"error: data_dir {tmp_path / 'nope'} does not exist (dataset nmnist)" in capsys.readouterr().err


def test_options_of_the_compared_model_are_not_silently_ignored(tmp_path, capsys):
    small = ["verify", "--model", "spikingformer_4_256", "--t", "1", "--batch-size", "1"]
    # spikingformer_4_256 has no registered spikformer_4_256 to load the weights into
    assert main([*small, "--plot", str(tmp_path), "--compare-checkpoint", str(tmp_path / "x.pt")]) == 2
    assert ("--compare-checkpoint " + str(tmp_path / "x.pt") + ": spikingformer_4_256 has no Spikformer/"
            "Spikingformer counterpart to load it into; name its model with --compare") in capsys.readouterr().err
    assert main([*small, "--compare", "spikformer_4_384"]) == 2
    assert "add --plot DIR" in capsys.readouterr().err
    assert not (tmp_path / "fig3.png").exists()
