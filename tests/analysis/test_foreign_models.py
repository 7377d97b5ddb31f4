"""The proof on model code nobody here wrote: plain PyTorch and SpikingJelly neurons, built as peers build them."""
import pytest
import torch
from torch import nn

from spikingformer.analysis.verify import verify_model

neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")


class IntLIF(neuron.LIFNode):
    """Fires integer counts 0..4 (the integer LIF that SDT-V3 / E-SpikeFormer train)."""

    def forward(self, x):
        return torch.clamp(torch.round(x), 0, 4)


class TernaryLIF(neuron.LIFNode):
    """Fires -1/0/1."""

    def forward(self, x):
        return (x > 0.5).float() - (x < -0.5).float()


class ClippedSurrogate(surrogate.Sigmoid):
    """A surrogate whose forward is no Heaviside step."""

    def forward(self, x):
        return x.clamp(0, 1)


class RenamedLIF(neuron.LIFNode):
    """A subclass that changes nothing: still not the stock class, so only what the context traces counts."""


def stock_lif():
    return neuron.LIFNode(step_mode="m")


class Attention(nn.Module):
    """A peer's spiking self-attention on [T, B, N, C] tokens: Q K^T V as bare matmuls, then a mean head."""

    def __init__(self, make_neuron=stock_lif, dim=16, classes=3):
        super().__init__()
        self.enc, self.enc_lif = nn.Linear(8, dim), make_neuron()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_lif, self.k_lif, self.v_lif, self.attn_lif = (make_neuron() for _ in range(4))
        self.proj, self.proj_lif = nn.Linear(dim, dim), make_neuron()
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        s = self.enc_lif(self.enc(x))
        q, k, v = self.q_lif(self.q(s)), self.k_lif(self.k(s)), self.v_lif(self.v(s))
        a = self.attn_lif(q @ k.transpose(-2, -1) @ v * 0.25)
        return self.head(self.proj_lif(self.proj(a)).mean(0).mean(1))


def run(model, x):
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    return verify_model(model, x)


FIRING = torch.randn(4, 2, 6, 8) * 4  # [T, B, N, C]: strong enough that every neuron fires
FED_BY_NEURONS = ["q", "k", "v", "matmul#1", "matmul#2", "proj"]  # the bare q @ k^T @ v products too


def test_stock_lif_is_proven():
    torch.manual_seed(0)
    cert = run(Attention().eval(), FIRING)
    assert cert.proven and cert.exit_code == 0


@pytest.mark.parametrize("make_neuron, name", [
    (lambda: IntLIF(step_mode="m"), "IntLIF"), (lambda: TernaryLIF(step_mode="m"), "TernaryLIF"),
    (lambda: RenamedLIF(step_mode="m"), "RenamedLIF"),
    (lambda: neuron.LIFNode(step_mode="m", surrogate_function=surrogate.Sigmoid(spiking=False)), "LIFNode"),
    (lambda: neuron.LIFNode(step_mode="m", surrogate_function=ClippedSurrogate()), "LIFNode"),
])
def test_a_neuron_not_known_to_emit_0_1_proves_nothing_and_is_named(make_neuron, name):
    """Neither when it fires (counts, -1s, sigmoid values seen) nor when it is silent (all zeros seen: the
    run shows nothing, and the construction must not vouch for it)."""
    torch.manual_seed(0)
    model = Attention(make_neuron).eval()
    for x in (FIRING, torch.zeros_like(FIRING)):
        cert = run(model, x)
        assert not cert.proven
        assert {r.name for r in cert.layers if r.role == "synaptic" and r.proven is False} == set(FED_BY_NEURONS)
        assert f"real (neuron {name}: firing rule not known to emit 0/1)" in cert.table()
        seen = [i for r in cert.layers if r.role == "synaptic" for i in r.inputs]
        assert not any(i.built == "spike" and i.kind != "spike" for i in seen)  # never proven where not 0/1


class IANDResidual(nn.Module):
    """SEW ResNet's IAND connection ``A * (1 - S)`` (Fang et al. 2021, Eq. 4) on SpikingJelly neurons."""

    def __init__(self, channels=4):
        super().__init__()
        self.stem, self.stem_lif = nn.Conv2d(2, channels, 3, padding=1), stock_lif()
        self.conv, self.lif = nn.Conv2d(channels, channels, 3, padding=1), stock_lif()
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):  # [T, B, 2, H, W]
        s = self.stem_lif(self.stem(x.flatten(0, 1)).unflatten(0, x.shape[:2]))
        a = self.lif(self.conv(s.flatten(0, 1)).unflatten(0, x.shape[:2]))
        return self.out((a * (1.0 - s)).flatten(0, 1))


def test_the_iand_residual_is_spikes():
    torch.manual_seed(0)
    cert = run(IANDResidual().eval(), torch.randn(2, 2, 2, 8, 8) * 4)
    assert cert.proven and cert.exit_code == 0
    assert [r.proven for r in cert.layers if r.name == "out"] == [True]


class StepLoop(nn.Module):
    """A peer's time loop: each step's spikes written into a preallocated tensor, then a linear layer."""

    def __init__(self, write_mean=False):
        super().__init__()
        self.enc, self.lif, self.fc = nn.Linear(8, 8), neuron.LIFNode(step_mode="s"), nn.Linear(8, 8)
        self.fc_lif, self.head = stock_lif(), nn.Linear(8, 2)
        self.write_mean = write_mean

    def forward(self, x):  # [T, B, C]
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            out[t] = self.lif(self.enc(x[t]))
        if self.write_mean:
            out[0] = out.mean(0)
        return self.head(self.fc_lif(self.fc(out)).mean(0))


def test_an_in_place_write_keeps_spikes_and_names_what_made_a_value_real():
    x = torch.randn(3, 2, 8) * 4
    assert run(StepLoop().eval(), x).proven
    cert = run(StepLoop(write_mean=True).eval(), x)
    (fc,) = [r for r in cert.layers if r.name == "fc"]
    assert not cert.proven and (fc.inputs[0].built, fc.inputs[0].built_by) == ("real", "mean")


def test_a_foreign_head_fed_by_a_mean_is_the_read_out_as_ours_is():
    """Found by structure (the last synaptic layer, fed by a mean), reported as our own head is, and nameable."""
    import spikingformer as sf

    torch.manual_seed(0)
    cert = run(Attention().eval(), FIRING)
    assert [(r.name, r.role, r.readout_by) for r in cert.readout] == [("head", "readout", "last synaptic layer, "
                                                                                           "fed by mean")]
    assert cert.to_dict()["readout_layers"] == ["head"] and "read-out (exempt, as Eq. 20): head" in cert.table()
    named = verify_model(Attention().eval(), FIRING, readout="head")
    assert [(r.name, r.readout_by) for r in named.readout] == [("head", "named")] and named.proven
    ours = verify_model(sf.create_model("spikingformer_4_384", depth=1, dim=32, num_heads=2, T=2).eval(),
                        torch.randn(2, 3, 32, 32))
    assert [(r.name, r.readout_by) for r in ours.readout] == [("head.fc", "ClassifierHead")]


class TwoHeads(Attention):
    """The mean-fed layer is not the last synaptic one: a layer runs on its output, so it is no read-out."""

    def __init__(self):
        super().__init__()
        self.after = nn.Linear(3, 3)

    def forward(self, x):
        return self.after(super().forward(x))


def test_no_read_out_where_a_synaptic_layer_runs_after_it_and_a_bad_name_is_an_error():
    cert = run(TwoHeads().eval(), FIRING)
    assert cert.readout == [] and not cert.proven
    assert {r.name for r in cert.layers if r.role == "synaptic" and not r.proven} == {"head", "after"}
    with pytest.raises(ValueError, match="readout 'nohead': TwoHeads has no module of that name"):
        verify_model(TwoHeads(), FIRING, readout="nohead")
    with pytest.raises(ValueError, match="readout 'enc_lif': .* no synaptic layer"):
        verify_model(TwoHeads(), FIRING, readout="enc_lif")


def test_the_read_out_is_priced_apart_and_named_from_the_command_line(tmp_path, capsys):
    from spikingformer.analysis.energy import estimate_energy
    from spikingformer.cli import main

    torch.manual_seed(0)
    report = estimate_energy(Attention().eval(), FIRING, time_major=True)
    assert [r.name for r in report.layers if r.readout] == ["head"] and report.proven
    small = ["--model", "spikingformer_4_256", "--t", "1", "--batch-size", "1", "--input-size", "32",
             "--model-kwargs", "depth=1", "--readout", "head"]
    assert main(["verify", *small, "--json", str(tmp_path / "v.json")]) == 0
    assert "read-out (exempt, as Eq. 20): head.fc (named)" in capsys.readouterr().out
    assert main(["energy", *small[:-1], "nohead"]) == 2
    assert "error: readout 'nohead': Spikingformer has no module of that name" in capsys.readouterr().err
