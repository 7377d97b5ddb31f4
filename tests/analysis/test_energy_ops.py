"""Attention written as bare tensor ops, as peers write it, is priced (issue 20 §2; ``tensor_ops``, SPEC §7).

The models here are a peer's, in plain PyTorch: Q, K, V are spikes of neurons fed +-10 (a LIF of tau 2 and
threshold 1 then fires at every step, or never), so every firing rate is set by the test."""
import pytest
import torch
from torch import nn

from spikingformer.analysis.energy import (
    energy_from_probe,
    estimate_energy,
    policy_energy,
)
from spikingformer.analysis.probe import SynapticProbe
from spikingformer.models import create_model, list_models
from spikingformer.nn.layers import SpikeQKV
from spikingformer.nn.neuron import MultiStepLIF

T, B, H, N, D = 2, 3, 2, 4, 8  # N <= D: SpikeQKV computes (Q K^T) V, as the bare ops below


def spikes_in():
    """``[T, B, 3, H, N, D]`` of +-10: Q fires at 1/2 of its places, K at 1/4, V at 1/8, and K * V at 1/8."""
    x = torch.full((3, T, B, H, N, D), -10.0)
    for i, step in enumerate((2, 4, 8)):
        x[i].view(-1)[::step] = 10.0
    return x.transpose(0, 2).transpose(0, 1).contiguous()


def neuron(kind):
    if kind == "spikingjelly":
        return pytest.importorskip("spikingjelly.activation_based.neuron").LIFNode(step_mode="m")
    return MultiStepLIF()


class PeerAttention(nn.Module):
    """Spikformer's SSA written with ``@``, and the Spike-Driven Transformer's SDSA (Hadamard, column sum,
    neuron, Hadamard), side by side, and a projection (a synaptic layer, priced as before)."""

    def __init__(self, kind="ours", form="@"):
        super().__init__()
        self.form = form
        self.sn_q, self.sn_k, self.sn_v, self.sn_kv = (neuron(kind) for _ in range(4))
        self.scale = nn.Parameter(torch.ones(D))
        self.proj = nn.Linear(D, D)

    def qk(self, q, k):
        if self.form == "@":
            return q @ k.transpose(-2, -1)
        if self.form == "einsum":
            return torch.einsum("...nd,...md->...nm", q, k)
        return torch.bmm(q.flatten(0, 2), k.flatten(0, 2).transpose(1, 2)).view(T, -1, H, N, N)

    def forward(self, x):
        q, k, v = (sn(x[:, :, i]) for i, sn in enumerate((self.sn_q, self.sn_k, self.sn_v)))
        ssa = self.proj(self.qk(q, k) @ v * 0.1)                      # scales are no synaptic op
        kv = self.sn_kv((k * v).sum(dim=-2, keepdim=True))            # SDSA's column sum, then a neuron
        return ssa, q * kv * self.scale                               # a weight's scale folds away


class Peer(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = PeerAttention(**kw)

    def forward(self, x):
        return self.attn(x)


def mask_rate(model, x):
    seen = {}
    model.attn.sn_kv.register_forward_hook(lambda m, args, out: seen.update(fr=float(out.mean())))
    model(x)
    return seen["fr"]


@pytest.mark.parametrize("kind", ["ours", "spikingjelly"])
def test_bare_attention_ops_get_rows_counted_by_hand(kind):
    model, x = Peer(kind=kind), spikes_in()
    fr_mask = mask_rate(model, x)
    report = estimate_energy(model, x, time_major=True)
    rows = [(r.name, r.op, r.kind, r.fr, r.flops, r.ac, r.mac) for r in report.layers if r.name != "attn.proj"]
    # per image and step: Q K^T is H x N x D x N, (Q K^T) V H x N x N x D, each Hadamard and the sum H x N x D
    assert rows == [
        ("attn.matmul#1", "matmul", "spike", 1 / 4, H * N * D * N, 1 / 4 * T * H * N * D * N, 0),  # min(fr_Q, fr_K)
        ("attn.matmul#2", "matmul", "spike", 1 / 8, H * N * N * D, 1 / 8 * T * H * N * N * D, 0),  # fr_V: V * integers
        ("attn.mul#1", "mul", "spike", 1 / 8, H * N * D, 1 / 8 * T * H * N * D, 0),               # min(fr_K, fr_V)
        ("attn.sum#1", "sum", "spike", 1 / 8, H * N * D, 1 / 8 * T * H * N * D, 0),               # fr of K * V
        ("attn.mul#2", "mul", "spike", fr_mask, H * N * D, pytest.approx(fr_mask * T * H * N * D), 0)]
    assert 0 < fr_mask < 1 / 2  # the mask is the sparser factor of Q * mask
    assert [r.name for r in report.layers].index("attn.proj") == 2  # in the order they ran
    assert report.mac == T * N * D * D * H  # the projection's, fed (Q K^T) V * 0.1, real


@pytest.mark.parametrize("form", ["einsum", "bmm"])
def test_matmul_einsum_and_bmm_cost_the_same(form):
    x = spikes_in()
    at = estimate_energy(Peer(), x, time_major=True).layers[0]
    other = estimate_energy(Peer(form=form), x, time_major=True).layers[0]
    assert (other.name, other.op) == (f"attn.{form}#1", form)
    assert (other.kind, other.fr, other.flops, other.ac) == (at.kind, at.fr, at.flops, at.ac)


class WithSpikeQKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.sn = nn.ModuleList(MultiStepLIF() for _ in range(3))
        self.qkv = SpikeQKV()

    def forward(self, x):
        return self.qkv(*(sn(x[:, :, i]) for i, sn in enumerate(self.sn)))


def test_bare_q_kt_v_costs_what_spike_qkv_costs_and_is_not_counted_twice():
    x = spikes_in()
    ours = estimate_energy(WithSpikeQKV(), x, time_major=True)
    peer = estimate_energy(Peer(), x, time_major=True)
    # the matmuls inside SpikeQKV are its own two rows, not rows of their own
    assert [(r.name, r.op) for r in ours.layers] == [("qkv", "Q K^T"), ("qkv", "(Q K^T) V")]
    assert [(r.fr, r.flops, r.ac) for r in ours.layers] == [(r.fr, r.flops, r.ac) for r in peer.layers[:2]]


class RealAttention(nn.Module):
    """Softmax attention on real Q, K, V: no factor is spikes."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(D, D) for _ in range(3))

    def forward(self, x):  # [T, B, N, D]
        return (self.q(x) @ self.k(x).transpose(-2, -1)).softmax(-1) @ self.v(x)


def test_ops_fed_no_spikes_cost_macs():
    report = estimate_energy(RealAttention(), torch.randn(T, B, N, D), time_major=True)
    ops = [(r.name, r.kind, r.fr, r.ac, r.mac) for r in report.layers if r.op == "matmul"]
    assert ops == [("matmul#1", "real", None, 0, T * N * D * N), ("matmul#2", "real", None, 0, T * N * N * D)]


class Weighted(nn.Module):
    """A hand-written linear layer (an activation times a weight) and masks the model is given."""

    def __init__(self):
        super().__init__()
        self.sn = MultiStepLIF()
        self.w = nn.Parameter(torch.randn(D, 5))
        self.head = nn.Linear(5, 2)

    def forward(self, x, mask):
        s = self.sn(x) * mask                                 # a mask from the input: no Hadamard product
        return self.head(s @ self.w), mask.sum()


def test_a_weight_is_the_other_factor_and_inputs_are_no_activations():
    x = torch.full((T, B, N, D), -10.0)
    x[..., :2] = 10.0                                         # fr 1/4
    model = Weighted()
    with SynapticProbe(model) as probe:
        model(x, torch.ones(T, B, N, 1))
    rec, head = probe.priced
    assert (rec.name, len(rec.inputs), rec.inputs[0].firing_rate, head.name) == ("matmul#1", 1, 0.25, "head")
    row = energy_from_probe(probe, B, T).layers[0]
    assert (row.kind, row.flops, row.ac) == ("spike", N * D * 5, 0.25 * T * N * D * 5)


def test_op_rows_are_priced_per_time_step():
    model, x = Peer(), spikes_in()
    with SynapticProbe(model) as probe:
        probe.per_step(T, B)
        model(x)
        probe.charge(torch.ones(1, T, B, dtype=torch.bool))
    assert list(probe.layers) == ["attn.proj"] and len(probe.ops) == 5  # the verdict's: the synaptic layers
    assert policy_energy(probe, images=B) == [pytest.approx(energy_from_probe(probe, B, T).backbone_mJ * 1e3)]


@pytest.mark.parametrize("name", list_models(modality="text"))
def test_our_text_model_has_no_op_rows(name):
    """Its padding masks (K, V times the mask) and its head's masked pooling are no synaptic ops; the vision
    models are pinned in test_energy (every row a conv, a linear or a SpikeQKV product)."""
    model = create_model(name, depth=1, T=2).train()
    ids = torch.randint(1, 100, (2, 6))
    ids[0, 4:] = 0  # padding
    with SynapticProbe(model) as probe:
        model(input_ids=ids)
    assert probe.ops == {} and probe.layers


def test_a_compiled_peer_model_and_in_place_products_are_priced_as_written():
    def rows(report):
        return [(r.name, r.op, r.fr, r.ac, r.mac) for r in report.layers]

    x = spikes_in()
    model = Peer()
    eager = rows(estimate_energy(model, x, time_major=True))
    assert rows(estimate_energy(torch.compile(model), x, time_major=True)) == eager
    model.attn = torch.compile(model.attn)  # a compiled part: the same names
    assert rows(estimate_energy(model, x, time_major=True)) == eager

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn_q, self.sn_k, self.proj = MultiStepLIF(), MultiStepLIF(), nn.Linear(D, D)

        def forward(self, x):
            q, k = self.sn_q(x[:, :, 0]), self.sn_k(x[:, :, 1])
            q.mul_(k)  # fr 1/2 x 1/4: read before it is overwritten
            q *= k     # fr 1/4 x 1/4
            return self.proj(q)

    ops = [(r.name, r.fr, r.ac) for r in estimate_energy(InPlace(), x, time_major=True).layers if r.op == "mul"]
    assert ops == [("mul#1", 1 / 4, 1 / 4 * T * H * N * D), ("mul#2", 1 / 4, 1 / 4 * T * H * N * D)]


class SpikeFedSoftmaxAttention(nn.Module):
    """Every Linear fed spikes, but Q, K and V left real: ``softmax(Q K^T) V`` multiplies real by real."""

    def __init__(self):
        super().__init__()
        self.enc, self.sn = nn.Linear(D, D), MultiStepLIF()
        self.attn = RealAttention()

    def forward(self, x):
        return self.attn(self.sn(self.enc(x)))


def test_a_product_of_real_activations_breaks_the_verdict_and_one_of_spikes_does_not():
    """The verdict reads the bare products as it reads the layers: one 0/1 operand makes a product additions
    only (the spike-form q @ k^T @ v is proven in test_foreign_models), none makes it multiply."""
    from spikingformer.analysis.verify import verify_model

    x = torch.randn(T, B, N, D) * 10
    with SynapticProbe(SpikeFedSoftmaxAttention(), provenance=True) as probe:
        probe.model(x)
    assert [r.name for r in probe.layers.values() if r.kind == "spike"] == ["attn.q", "attn.k", "attn.v"]
    assert not probe.spike_driven and probe.verdict()["non_spike_layers"] == ["attn.matmul#1", "attn.matmul#2"]
    assert probe.verdict()["unproven_layers"] == ["attn.matmul#1", "attn.matmul#2"]
    cert = verify_model(SpikeFedSoftmaxAttention(), x)
    assert cert.exit_code == 1 and [r.op for r in cert.violations] == ["matmul", "matmul"]
