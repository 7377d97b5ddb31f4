"""How every tensor is built: 0/1 by construction, or the op that made it otherwise."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikingformer as sf
from spikingformer.analysis.probe import SynapticProbe
from spikingformer.analysis.provenance import (
    INTEGER,
    REAL,
    SPIKE,
    Built,
    SpikeProvenance,
)
from spikingformer.analysis.verify import verify_model


def built(fn, *inputs):
    """The label of ``fn(*inputs)``, computed under a fresh provenance context."""
    with SpikeProvenance() as prov:
        out = fn(*inputs)
    return prov.of(out)


def spikes(*shape):
    return (torch.randn(*shape) > 0).float()  # a comparison, then a cast: 0/1 by construction


@pytest.mark.parametrize("fn, kind", [
    (lambda x: x, REAL),                                                      # the input, as it came
    (lambda x: (x >= 0).float(), SPIKE),                                      # Eq. 2's Heaviside step
    (lambda x: (x > 0).to(torch.bfloat16).flatten(0, 1).transpose(0, 1)[:, 3], SPIKE),
    (lambda x: F.max_pool2d((x > 0).float(), 2), SPIKE),
    (lambda x: torch.cat([(x > 0).float(), torch.zeros_like(x)]), SPIKE),
    (lambda x: torch.cat([(x > 0).float(), x]), REAL),
    (lambda x: (x > 0).float() * (x < 1).float(), SPIKE),                     # AND of spikes
    (lambda x: (x > 0).float() + (x < 1).float(), INTEGER),                   # the SEW residual
    (lambda x: (x > 0).float().sum(-1), INTEGER),
    (lambda x: (x > 0).float() @ (x > 1).float().mT, INTEGER),               # K^T V
    (lambda x: (x > 0).float() * 0.5, REAL),                                  # a scale
    (lambda x: 1.0 - (x > 0).float(), SPIKE),                                 # logical NOT
    (lambda x: 1 - (x > 0).float(), SPIKE),
    (lambda x: torch.sub(1, (x > 0).float()), SPIKE),
    (lambda x: torch.rsub((x > 0).float(), 1), SPIKE),
    (lambda x: (x > 0).float().logical_not().float(), SPIKE),
    (lambda x: (~(x > 0).float().bool()).float(), SPIKE),
    (lambda x: (x > 0).float() * (1 - (x < 1).float()), SPIKE),               # SEW ResNet's IAND
    (lambda x: 2 - (x > 0).float(), INTEGER),                                 # not a NOT
    (lambda x: torch.sub(1, (x > 0).float(), alpha=2), INTEGER),
    (lambda x: (x > 0).float() - 1, INTEGER),
    (lambda x: 1 - ((x > 0).float() + (x > 1).float()), INTEGER),              # NOT of a count is no NOT
    (lambda x: 1.0 - x, REAL),
    (lambda x: (x > 0).float().mean(), REAL),
    (lambda x: torch.where(x > 1, (x > 0).float(), 0.0), SPIKE),
    (lambda x: torch.where(x > 1, (x > 0).float(), x), REAL),
    (lambda x: F.pad((x > 0).float(), (1, 1)), SPIKE),                        # zero padding
    (lambda x: F.pad((x > 0).float(), (1, 1), value=2.0), REAL),
    (lambda x: (x > 0).float().masked_fill(x > 1, 1.0), SPIKE),
    (lambda x: torch.abs((x > 0).float()), REAL),                            # unknown op: no proof, never a false one
    (lambda x: (x > 0).float().repeat_interleave(2, 0), SPIKE),
    (lambda x: torch.repeat_interleave((x > 0).long().flatten()), REAL),      # this form returns indices
])
def test_rules(fn, kind):
    assert built(fn, torch.randn(4, 4, 8)).kind == kind


def test_an_index_is_not_a_value_and_indices_are_not_spikes():
    x = torch.randn(2, 3, 8, 8)
    assert built(lambda x: (x > 0).float()[:, 2], x).kind == SPIKE                 # the 2 is where, not what
    assert built(lambda x: (x > 0).float().index_select(1, torch.tensor([2])), x).kind == SPIKE
    with SpikeProvenance() as prov:
        values, indices = F.max_pool2d((x > 0).float(), 2, return_indices=True)
    assert prov.of(values).kind == SPIKE and prov.of(indices) == Built(REAL, "indices")


def test_in_place_ops_relabel_and_origins_name_the_op():
    with SpikeProvenance() as prov:
        s = spikes(4, 4)
        s.add_(spikes(4, 4))
        y = torch.relu(s).view(16)
    assert prov.of(s) == Built(INTEGER, "add") and prov.of(y) == Built(INTEGER, "add")
    assert prov.of(torch.ones(2, dtype=torch.bool)).kind == SPIKE  # a bool tensor is 0/1 whatever made it


def test_a_view_changed_in_place_through_another_loses_its_label():
    with SpikeProvenance() as prov:
        s = spikes(4, 4)
        v = s.view(16)
        s.mul_(0.5)                     # v's values are now 0 and 0.5: its label is void, not still "spike"
        w = s.view(16)
    assert prov.of(v) == Built(REAL, "mul") and prov.of(w) == Built(REAL, "mul")
    with torch.inference_mode(), SpikeProvenance() as prov:  # no version counter there: a view reads its base
        s = spikes(4, 4)
        v, w = s.view(16), s[1]
        assert prov.of(s).kind == SPIKE and prov.of(v).kind == SPIKE
        w.mul_(0.5)
        assert prov.of(v) == Built(REAL, "mul") and prov.of(s) == Built(REAL, "mul")


def test_labels_of_another_context_are_not_trusted():
    with SpikeProvenance():
        s = spikes(3)
    with SpikeProvenance() as other:
        assert other.of(s) == Built(REAL, "input")


def _inputs(name: str, mode: str):
    torch.manual_seed(0)
    if sf.model_modality(name) == "text":
        model = sf.create_model(name, T=2)
        return getattr(model, mode)(), dict(input_ids=torch.randint(1, 100, (2, 12)))
    small = {} if "dvs" in name else dict(depth=2, dim=64, num_heads=4)
    model = sf.create_model(name, T=2, **small)
    return getattr(model, mode)(), dict(x=torch.randn(2, *model.default_input_size))


MODELS = ["spikingformer_4_384", "spikingformer_dagger_4_384", "spikingformer_dvs_2_256", "spikformer_4_384",
          "spikformer_v2_8_384", "spikingformer_text_2_128"]


@pytest.mark.parametrize("name", MODELS)
def test_construction_predicts_exactly_the_layers_that_break_the_rule(name):
    """In train mode (batch statistics: every neuron population fires) the layers observed fed non-binary
    values are exactly those not built to be fed spikes, for Spikingformer (none) as for Spikformer's SEW
    residual; and in eval mode, where untrained weights fire nowhere, the proof is the same."""
    labels = {}
    for mode in ("train", "eval"):
        model, inputs = _inputs(name, mode)
        with SynapticProbe(model, provenance=True) as probe, torch.no_grad():
            model(**inputs)
        labels[mode] = [r.name for r in probe.unproven]
        if mode == "train":
            assert [r.name for r in probe.violations] == labels["train"]
            for r in probe.unproven:
                assert {s.built for s in r.inputs if s.built.kind != SPIKE} == {Built(INTEGER, "add")}
    assert labels["eval"] == labels["train"]
    assert (labels["train"] == []) == (not name.startswith("spikformer"))


def test_verify_proves_what_a_silent_run_cannot(tmp_path):
    """An untrained Spikingformer in eval mode fires nowhere past its first layers: the run alone shows
    nothing about them, the construction does (exit 0).  A Spikformer there is binary on this input only:
    its SEW sums are named as what is not built to be spikes (exit 3)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    cert = verify_model(sf.create_model("spikingformer_4_384", depth=1).eval(), x)
    assert cert.silent and cert.proven and cert.exit_code == 0
    assert "proven by construction" in cert.table()
    cert = verify_model(sf.create_model("spikformer_4_384", depth=1).eval(), x)
    assert cert.spike_driven and cert.silent and not cert.proven and cert.exit_code == 3
    # V1's tokenizer adds its relative position embedding to its spikes, then every block a SEW sum
    assert cert.to_dict()["unproven_layers"] == [f"blocks.0.attn.{n}.linear" for n in "qkv"] + ["blocks.0.mlp.fc1.linear"]
    assert "blocks.0.mlp.fc1.linear: integer (add)" in cert.table()


class AbsSpikes(nn.Module):
    """Spikes through an op the rules do not know (``abs`` keeps 0/1, but nothing says so)."""

    synaptic_encoding = True

    def __init__(self):
        super().__init__()
        self.enc, self.lif, self.fc = nn.Linear(4, 8), sf.MultiStepLIF(), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.abs(self.lif(self.enc(x))))


def test_an_unknown_op_gives_no_proof_and_says_which():
    cert = verify_model(AbsSpikes(), torch.randn(3, 2, 4) * 4)
    (fc,) = [r for r in cert.layers if r.name == "fc"]
    assert fc.inputs[0].kind == "spike" and (fc.inputs[0].built, fc.inputs[0].built_by) == ("real", "abs")
    assert cert.spike_driven and not cert.proven and cert.exit_code == 3


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384"])
def test_spikingjelly_neurons_are_taken_at_their_word(name):
    """The official repositories' neurons (SpikingJelly's ``LIFNode``, whose multi-step loop is a custom op the
    context cannot follow), swapped into the architecture as the throughput benchmark's reference does: the proof
    is the one of our own neurons."""
    pytest.importorskip("spikingjelly")
    from ..benchmarks import load_script

    torch.manual_seed(0)
    model, x = sf.create_model(name, depth=1, dim=32, num_heads=4, T=2).eval(), torch.randn(2, 3, 32, 32)
    ours = verify_model(model, x).to_dict()
    with load_script("throughput") as bench:
        reference = bench.swap_in_spikingjelly(model)
        assert not any(isinstance(m, sf.MultiStepLIF) for m in reference.modules())
        bench.reset_spikingjelly(reference)
        theirs = verify_model(reference, x).to_dict()
    assert (theirs["proven"], theirs["unproven_layers"]) == (ours["proven"], ours["unproven_layers"])
    assert theirs["proven"] == name.startswith("spikingformer")


def test_probes_may_nest_each_keeps_its_own_proof():
    """An ``estimate_energy`` (or a second probe) inside a probe: both see every op, neither erases the other's
    labels (they once shared one attribute, and the outer probe then called every layer unproven)."""
    from spikingformer.analysis.energy import estimate_energy

    torch.manual_seed(0)
    model, x = sf.create_model("spikingformer_4_384", depth=1, dim=32, num_heads=2, T=2).eval(), torch.randn(2, 3, 32, 32)
    with SynapticProbe(model, provenance=True) as outer:
        inner = estimate_energy(model, x)
        with SynapticProbe(model, provenance=True) as second:
            model(x)
    assert outer.proven and inner.proven and second.proven
    assert outer.verdict() == second.verdict()


def test_an_in_place_write_names_what_it_wrote_and_keeps_spikes_spikes():
    with SpikeProvenance() as prov:
        x = torch.randn(4, 3, 8)
        real = torch.zeros(4, 3, 8)
        real[0] = x.mean(0)                       # a real value written names the op that made it
        row = real[1]
        s = torch.zeros(4, 3, 8)
        s[1:] = spikes(3, 3, 8)                   # spikes written into spikes stay spikes
        s[0].copy_(spikes(3, 8))
        tail = s[1:]
        s[0, 0] += spikes(8)                      # a count
        t = torch.zeros(2, 8)
        t[0] = 1
        t[1].copy_(spikes(8))
        other = t.view(16)
        t[1].mul_((x[0, 0] > 0).float())
        nested = torch.zeros(3)
        nested[0] = 0.5
    assert prov.of(real) == Built(REAL, "mean") and prov.of(row) == Built(REAL, "mean")
    assert prov.of(s) == Built(INTEGER, "add") and prov.of(tail).kind == INTEGER  # what the base may hold
    assert prov.of(t).kind == SPIKE and prov.of(other).kind == SPIKE
    assert prov.of(nested) == Built(REAL, "setitem")


def test_a_write_through_data_is_seen():
    """``t.data`` shares ``t``'s storage but not its version counter: what is written through it still counts."""
    with SpikeProvenance() as prov:
        s = spikes(4)
        v = s.view(2, 2)
        s.data.mul_(3)
        t = spikes(4)
        t.data[0] = 0.5
        u = spikes(4)
        u.data = torch.randn(4).mean(0, keepdim=True).expand(4)
        kept = spikes(4)
        kept.data[0] = 1
    assert prov.of(s) == Built(INTEGER, "mul") and prov.of(v) == Built(INTEGER, "mul")
    assert prov.of(t) == Built(REAL, "setitem") and prov.of(u) == Built(REAL, "mean")
    assert prov.of(kept).kind == SPIKE
