"""Spike-driven certificate (exit status for CI) and the paper's Fig. 3."""
import json

import pytest
import torch
from torch import nn

from spikingformer.analysis.energy import estimate_energy
from spikingformer.analysis.verify import verify_model
from spikingformer.cli import main
from spikingformer.nn.layers import ConvBN, SpikeQKV
from spikingformer.nn.neuron import MultiStepLIF


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


def test_a_model_without_synaptic_layers_or_batches_is_named():
    with pytest.raises(RuntimeError, match="Sequential has no synaptic layer"):
        verify_model(nn.Sequential(nn.ReLU()), torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="run a forward pass"):
        verify_model(Tiny(sew=False), [])


def test_a_compiled_model_is_verified_and_priced_as_the_model_it_wraps():
    """The probe runs ``torch.compile``d code eagerly: compiled code would skip its hooks and hide how
    inputs were built.  Whole model or one compiled part: the same report, names and proof as eager."""
    compiled_frames = []

    def backend(gm, example_inputs):  # counts what dynamo hands to a compiler
        compiled_frames.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model, x = Tiny(sew=False).eval(), torch.randn(2, 2, 3, 8, 8)
    eager_cert, eager_energy = verify_model(model, x).to_dict(), estimate_energy(model, x, time_major=True).to_dict()
    whole = torch.compile(model, backend=backend)
    assert verify_model(whole, x).to_dict() == eager_cert and eager_cert["proven"]
    assert estimate_energy(whole, x, time_major=True).to_dict() == eager_energy
    model.conv = torch.compile(model.conv, backend=backend)  # a compiled part: "conv._orig_mod.conv" inside
    assert verify_model(model, x).to_dict() == eager_cert
    assert compiled_frames == []
    whole(x)  # outside the probe, compiled code runs again
    assert compiled_frames


class RealV(nn.Module):
    """A user's attention whose Q and K are spikes but whose V is the encoding layer's real output
    (``real_v=False``: V is the spikes too)."""

    def __init__(self, real_v: bool):
        super().__init__()
        self.real_v = real_v
        self.encode, self.sn, self.qkv = nn.Linear(4, 4), MultiStepLIF(), SpikeQKV()

    def forward(self, x):  # [T, B, N, 4]
        h = self.encode(x)
        s = self.sn(h).unsqueeze(2)  # one head
        return self.qkv(s, s, h.unsqueeze(2) if self.real_v else s)


@pytest.mark.parametrize("real_v", [False, True])
def test_one_non_spike_factor_of_the_attention_product_is_a_violation(real_v):
    torch.manual_seed(0)
    model, x = RealV(real_v), torch.randn(2, 2, 8, 4)
    cert = verify_model(model, x)
    enc, attn = cert.layers
    assert (enc.role, attn.role, attn.op) == ("encoding", "synaptic", "attention")
    assert [(i.name, i.kind) for i in attn.inputs] == [("q", "spike"), ("k", "spike"), ("v", "real" if real_v else "spike")]
    assert attn.spike_input is (not real_v) and cert.spike_driven is (not real_v)
    assert cert.violations == ([attn] if real_v else [])
    assert estimate_energy(model, x, time_major=True).spike_driven is (not real_v)  # the probe's verdict agrees


class Fed(nn.Module):
    """A user's module: an encoding layer, then one Linear(1, 1) fed each of ``values``."""

    def __init__(self, values):
        super().__init__()
        self.values = [torch.tensor(v, dtype=torch.float32).view(-1, 1) for v in values]
        self.encode = nn.Linear(1, 1)
        self.fcs = nn.ModuleList(nn.Linear(1, 1) for _ in values)

    def forward(self, x):
        self.encode(x)
        return [fc(v) for fc, v in zip(self.fcs, self.values)]


def test_input_values_are_classified_exactly_and_counted_up_to_64_distinct():
    values = [[0, 1, 1, 0],             # spikes
              list(range(35)),          # the SEW residual sums of a 16-block Spikformer, {0, ..., 34}
              list(range(64)) * 2,      # 64 distinct values: still counted
              list(range(65)),          # 65: only the range is kept
              [0.0, 1.0001, 2.0],       # within 1e-4 of integers is still not integers
              [0.0, 0.5]]
    cert = verify_model(Fed(values), torch.randn(3, 1))
    rows = cert.layers[1:]
    assert [r.inputs[0].kind for r in rows] == ["spike", "integer", "integer", "integer", "real", "real"]
    spikes, sew, many, more, near, half = (r.inputs[0] for r in rows)
    assert spikes.counts == {0: 2, 1: 2} and spikes.firing_rate == 0.5
    assert sew.counts == {float(v): 1 for v in range(35)} and sew.describe() == "{0, 1, ..., 34} (35 values)"
    assert many.counts == {float(v): 2 for v in range(64)}
    assert more.counts is None and (more.min, more.max) == (0, 64) and more.describe() == "integers in [0, 64]"
    assert near.counts is None and half.counts is None
    assert [r.name for r in cert.violations] == [f"fcs.{i}" for i in range(1, 6)]


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
    assert data["spike_driven"] is False and "blocks.3.mlp.fc1.linear" in data["non_spike_layers"]
    fc1 = next(r for r in data["layers"] if r["name"] == "blocks.3.mlp.fc1.linear")
    (inp,) = fc1["inputs"]
    assert inp["kind"] == "integer" and inp["values"][:3] == [0, 1, 2] and len(inp["counts"]) == len(inp["values"])
    assert not fc1["ok"] and not fc1["spike_input"]
    png = tmp_path / "figs" / "fig3.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_layers_nothing_fired_into_are_named_and_proven_by_construction(tmp_path, capsys):
    """All-zero input is binary but the run proves nothing: an untrained Spikformer in eval mode (BN at its
    initial statistics) passes the rule only because nothing fires, and its SEW sums are named as unproven
    (exit 3 where CI would gate on it); a Spikingformer whose every BN sits below threshold is proven by
    its construction, which the silent layers are named beside (exit 0)."""
    import spikingformer as sf

    torch.manual_seed(0)
    model, x = sf.create_model("spikformer_4_384", depth=1).eval(), torch.randn(2, 3, 32, 32)
    cert = verify_model(model, x)
    assert cert.spike_driven and "blocks.0.mlp.fc1.linear" in [r.name for r in cert.silent]
    assert "blocks.0.mlp.fc1.linear" in [r.name for r in cert.unproven] and cert.exit_code == 3
    assert "warning: " in cert.table() and cert.to_dict()["silent_layers"] == [r.name for r in cert.silent]
    fired = verify_model(model.train(), x)                       # batch statistics: it fires, and is caught
    assert not fired.silent and not fired.spike_driven and fired.exit_code == 1

    weights = {k: torch.full_like(v, -1.0) if k.endswith("bn.bias") else v
               for k, v in sf.create_model("spikingformer_4_256", depth=1).state_dict().items()}
    torch.save(weights, tmp_path / "quiet.pt")                   # every BN shifted below threshold
    js = tmp_path / "cert.json"
    assert main(["verify", "--model", "spikingformer_4_256", "--model-kwargs", "depth=1", "--t", "2",
                 "--batch-size", "1", "--checkpoint", str(tmp_path / "quiet.pt"), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "note: 10 synaptic layer(s) received nothing but zeros (tokenizer.convs.1.conv, " in out
    assert "proven by construction" in out
    data = json.loads(js.read_text())
    assert data["proven"] and data["unproven_layers"] == [] and len(data["silent_layers"]) == 10
    assert {i["built"] for r in data["layers"] if r["role"] == "synaptic" for i in r["inputs"]} == {"spike"}


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
    from ..cli.test_energy_cli import event_checkpoint, text_checkpoint

    js = tmp_path / "cert.json"
    rc = main(["verify", "--checkpoint", str(text_checkpoint(tmp_path)), "--data", str(tmp_path), "--json", str(js)])
    data = json.loads(js.read_text())
    assert rc == 0 and data["proven"]  # built of spikes, whether or not random weights on 2 sentences fire
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
    from ..cli.test_energy_cli import event_checkpoint

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
