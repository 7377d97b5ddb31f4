"""Energy per image (Eq. 19-20, SPEC §7): the counting method, pinned on hand computations."""
import pytest
import torch
from torch import nn

import spikingformer as sf
from spikingformer.analysis.energy import E_AC_PJ, E_MAC_PJ, estimate_energy
from spikingformer.analysis.probe import SynapticProbe
from spikingformer.analysis.published import PUBLISHED_LOGS
from spikingformer.analysis.published import energy_at_published_rates, published_rates
from spikingformer.nn.layers import ClassifierHead, ConvBN, SpikeQKV
from spikingformer.nn.neuron import MultiStepLIF


def check_row_arithmetic(report):
    """Every row obeys Eq. 19 and the totals obey Eq. 20."""
    T = report.T
    for r in report.layers:
        if r.kind == "spike" or (r.kind == "integer" and report.integer_inputs == "ac"):
            assert r.mac == 0 and r.ac == r.fr * T * r.flops, r
        else:
            assert r.ac == 0 and r.fr is None and r.mac == T * r.flops, r
        assert r.uJ == pytest.approx((E_AC_PJ * r.ac + E_MAC_PJ * r.mac) * 1e-6)
    assert report.total_mJ == pytest.approx((E_AC_PJ * report.ac + E_MAC_PJ * report.mac) * 1e-9, rel=1e-12)
    assert report.total_mJ == pytest.approx(sum(r.uJ for r in report.layers) * 1e-3, rel=1e-9)


def test_encoding_conv_of_spikingformer_8_512_is_0_3468_gmac():
    # depth does not change the tokenizer; one block keeps the 224x224 pass cheap
    model = sf.create_model("spikingformer_8_512", depth=1, T=4).train()
    report = estimate_energy(model, torch.randn(1, 3, 224, 224))
    enc = report.layers[0]
    assert (enc.name, enc.op, enc.kind) == ("tokenizer.encode.conv", "conv", "real")
    assert enc.mac == 3 * 64 * 9 * 224 * 224 * 4 == 346_816_512 and enc.ac == 0
    assert round(enc.mac / 1e9, 4) == 0.3468
    # Spikingformer: besides the encoding conv, only the read-out head is a MAC layer
    assert [r.name for r in report.layers if r.mac] == ["tokenizer.encode.conv", "head.fc"]
    assert report.spike_driven and report.proven and report.to_dict()["proven"]
    assert "spike-driven: yes, proven" in report.table()
    check_row_arithmetic(report)


class SpikeFed(nn.Module):
    """A user's own module: one ConvBN fed the (spike) input directly."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(4, 8, 3, 1, 1)

    def forward(self, x):
        return self.conv(x)


def test_spike_input_of_known_rate_costs_fr_T_flops_acs():
    T, B = 2, 2
    x = torch.zeros(T, B, 4, 8, 8)
    x.view(-1)[::4] = 1  # firing rate exactly 1/4
    report = estimate_energy(SpikeFed().eval(), x)  # 5-d: time-major
    (row,) = report.layers
    flops = 8 * 8 * 8 * 4 * 9  # per image and step: H*W*C_out*C_in*k*k
    assert (row.kind, row.fr, row.flops, report.T, report.images) == ("spike", 0.25, flops, T, B)
    assert row.ac == 0.25 * T * flops and row.mac == 0
    # SPEC §7: E_AC = 0.9 pJ, E_MAC = 4.6 pJ (45 nm), written out, not read back from the module
    assert (E_AC_PJ, E_MAC_PJ) == (0.9, 4.6)
    assert report.total_mJ == pytest.approx(0.9 * 0.25 * T * flops * 1e-9, rel=1e-12)
    real = estimate_energy(SpikeFed().eval(), x * 0.5)  # not 0/1: T * FLOPs multiply-accumulates
    assert (real.layers[0].kind, real.mac) == ("real", T * flops)
    assert real.total_mJ == pytest.approx(4.6 * T * flops * 1e-9, rel=1e-12)
    # a DataLoader-style iterable of (x, y) pairs, two batches: the same figures per image
    again = estimate_energy(SpikeFed().eval(), [(x, None), (x, None)])
    assert (again.images, again.layers[0].ac) == (2 * B, row.ac)


class Attention(nn.Module):
    """A user's own module: the attention product on given spike Q, K, V ``[T, B, 3, heads, N, d]``."""

    def __init__(self):
        super().__init__()
        self.qkv = SpikeQKV()

    def forward(self, x):
        return self.qkv(*x.unbind(2))


@pytest.mark.parametrize("n,d", [(8, 4), (4, 8)])  # N > d: Q (K^T V); N <= d: (Q K^T) V
def test_attention_count_matches_hand_computation(n, d):
    T, B, H = 2, 3, 2
    q, k, v = torch.zeros(3, T, B, H, n, d)
    q.view(-1)[::2] = 1   # fr_Q = 1/2
    k.view(-1)[::4] = 1   # fr_K = 1/4
    v.view(-1)[::8] = 1   # fr_V = 1/8
    x = torch.stack([q, k, v], dim=2)
    report = estimate_energy(Attention(), x, time_major=True)
    per_head = T * H  # per image
    if n > d:
        expect = [("K^T V", 1 / 8, per_head * d * n * d), ("Q (K^T V)", 1 / 2, per_head * n * d * d)]
    else:
        expect = [("Q K^T", 1 / 4, per_head * n * d * n), ("(Q K^T) V", 1 / 8, per_head * n * n * d)]
    assert [(r.op, r.fr, r.ac) for r in report.layers] == [(op, fr, fr * m) for op, fr, m in expect]
    assert all(r.kind == "spike" and r.mac == 0 for r in report.layers)


class CrossAttention(nn.Module):
    """A user's own cross-attention: ``x`` is ``[T, B, heads, n_q + 2 n_k, d]``, Q then K then V along tokens."""

    def __init__(self, n_q):
        super().__init__()
        self.n_q, self.qkv = n_q, SpikeQKV()

    def forward(self, x):
        q, kv = x[..., :self.n_q, :], x[..., self.n_q:, :]
        k, v = kv.chunk(2, dim=-2)
        return self.qkv(q, k, v)


@pytest.mark.parametrize("n_q,n_k,d", [(8, 6, 4), (4, 6, 8)])  # n_q > d: Q (K^T V); n_q <= d: (Q K^T) V
def test_cross_attention_counts_each_factor_with_its_own_length(n_q, n_k, d):
    T = 2
    q, k, v = torch.zeros(T, 1, 1, n_q, d), torch.zeros(T, 1, 1, n_k, d), torch.zeros(T, 1, 1, n_k, d)
    q.view(-1)[::8] = 1   # fr_Q = 1/8 (the sparsest: K^T V must not be driven by it)
    k.view(-1)[::4] = 1   # fr_K = 1/4
    v.view(-1)[::2] = 1   # fr_V = 1/2
    report = estimate_energy(CrossAttention(n_q), torch.cat([q, k, v], dim=-2))
    if n_q > d:  # K^T V: d x n_k times n_k x d; Q (K^T V): n_q x d times d x d
        expect = [("K^T V", 1 / 4, d * n_k * d), ("Q (K^T V)", 1 / 8, n_q * d * d)]
    else:        # Q K^T: n_q x d times d x n_k; (Q K^T) V: n_q x n_k times n_k x d
        expect = [("Q K^T", 1 / 8, n_q * d * n_k), ("(Q K^T) V", 1 / 2, n_q * n_k * d)]
    assert [(r.op, r.fr, r.flops, r.ac) for r in report.layers] == [(op, fr, m, fr * T * m) for op, fr, m in expect]


def test_attention_order_may_change_from_batch_to_batch():
    """Text batches are padded to their longest sequence: a layer's N may be above d in one batch and not in the
    next, so the product runs in the other order.  Each order's products are counted as computed."""
    T, d = 2, 4
    batches = []
    for n in (8, 2):  # 8 > d: Q (K^T V); 2 <= d: (Q K^T) V
        q, k, v = torch.zeros(3, T, 1, 1, n, d)
        q.view(-1)[::2] = 1   # fr_Q = 1/2
        k.view(-1)[::4] = 1   # fr_K = 1/4
        v.view(-1)[::8] = 1   # fr_V = 1/8
        batches.append(torch.stack([q, k, v], dim=2))
    report = estimate_energy(Attention(), batches, time_major=True)
    # per image and step, over the 2 images: each order ran on one of them
    expect = [("K^T V", 1 / 8, d * 8 * d / 2), ("Q (K^T V)", 1 / 2, 8 * d * d / 2),
              ("Q K^T", 1 / 4, 2 * d * 2 / 2), ("(Q K^T) V", 1 / 8, 2 * 2 * d / 2)]
    assert report.images == 2
    assert [(r.op, r.fr, r.flops, r.ac) for r in report.layers] == [(op, fr, m, fr * T * m) for op, fr, m in expect]


class Convs(nn.Module):
    """A user's own module: a depthwise Conv2d, a Conv1d and a Conv3d, all fed the same spikes."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.c1 = nn.Conv1d(4, 2, 3, padding=1)
        self.c3 = nn.Conv3d(4, 2, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x):  # [B, 4, 6, 6]
        return self.dw(x), self.c1(x.flatten(2)), self.c3(x.unsqueeze(2))


def test_every_conv_kind_is_counted_with_its_own_fan_in():
    x = torch.zeros(2, 4, 6, 6)
    x.view(-1)[::4] = 1  # firing rate 1/4
    report = estimate_energy(Convs(), x, T=1)
    # output elements x (C_in / groups) x kernel volume, per image
    expect = {"dw": 6 * 6 * 4 * 1 * 9, "c1": 36 * 2 * 4 * 3, "c3": 6 * 6 * 2 * 4 * 9}
    assert [(r.name, r.kind, r.flops, r.ac) for r in report.layers] == [
        (n, "spike", m, 0.25 * m) for n, m in expect.items()]


@pytest.mark.parametrize("size,order", [(32, "K^T V"), (16, "Q K^T")])
def test_attention_of_a_model_uses_the_rates_fed_to_it(size, order):
    model = sf.create_model("spikingformer_4_256", depth=1, dim=64, num_heads=2, T=2).train()  # d = 32
    seen = {}
    model.blocks[0].attn.qkv.register_forward_pre_hook(lambda m, args: seen.update(q=args[0], k=args[1], v=args[2]))
    report = estimate_energy(model, torch.randn(2, 3, size, size))
    rows = [r for r in report.layers if r.name == "blocks.0.attn.qkv"]
    fr = {k: float(v.mean()) for k, v in seen.items()}
    n, d = (size // 4) ** 2, 32
    heads_steps = 2 * 2  # heads * T, per image
    if order == "K^T V":   # 64 tokens > 32 channels
        expect = [min(fr["k"], fr["v"]) * heads_steps * d * n * d, fr["q"] * heads_steps * n * d * d]
    else:                  # 16 tokens
        expect = [min(fr["q"], fr["k"]) * heads_steps * n * d * n, fr["v"] * heads_steps * n * n * d]
    assert rows[0].op == order and 0 < min(fr.values())
    assert [r.ac for r in rows] == pytest.approx(expect, rel=1e-9)


def test_spikformer_residual_sums_are_macs():
    model = sf.create_model("spikformer_4_384", depth=2, dim=64, num_heads=4, T=2).train()
    report = estimate_energy(model, torch.randn(2, 3, 32, 32))
    check_row_arithmetic(report)
    integer = {r.name for r in report.layers if r.kind == "integer"}
    fed_by_residual = {f"blocks.{i}.{m}.linear" for i in range(2) for m in ("attn.q", "attn.k", "attn.v", "mlp.fc1")}
    assert integer == fed_by_residual
    assert all(r.mac > 0 for r in report.layers if r.name in integer)
    macs = {r.name for r in report.layers if r.mac}
    assert macs == integer | {"stem.convs.0.conv", "head.fc"}
    assert not report.spike_driven and not report.proven and "spike-driven: NO" in report.table()


def test_integer_inputs_as_acs_count_each_value_as_that_many_spikes():
    """The other reading of the paper's Spikformer recalculation: an input k is k spikes, mean(x) T FLOPs ACs."""
    torch.manual_seed(0)
    model = sf.create_model("spikformer_4_384", depth=2, dim=64, num_heads=4, T=2).train()
    x = torch.randn(2, 3, 32, 32)
    means = {}
    fc1 = model.blocks[1].mlp.fc1.linear
    fc1.register_forward_pre_hook(lambda m, args: means.update(fc1=float(args[0].mean())))
    torch.manual_seed(1)
    as_mac = estimate_energy(model, x)
    torch.manual_seed(1)
    as_ac = estimate_energy(model, x, integer_inputs="ac")
    check_row_arithmetic(as_ac)
    for a, b in zip(as_mac.layers, as_ac.layers):
        if a.kind != "integer":
            assert (a.ac, a.mac, a.fr) == (b.ac, b.mac, b.fr), a.name
            continue
        assert b.mac == 0 and b.ac == pytest.approx(b.fr * as_ac.T * a.flops, rel=1e-12) and b.fr > a.nonzero
    row = next(r for r in as_ac.layers if r.name == "blocks.1.mlp.fc1.linear")
    assert row.fr == pytest.approx(means["fc1"], rel=1e-6)  # the mean of the residual sums fed to it
    assert as_ac.total_mJ < as_mac.total_mJ and as_ac.to_dict()["integer_inputs"] == "ac"
    assert "integer inputs counted as ACs" in as_ac.table()
    with pytest.raises(ValueError, match="integer_inputs must be one of mac, ac"):
        estimate_energy(model, x, integer_inputs="nonzero")


@pytest.mark.parametrize("integer_inputs,sign", [("mac", 1), ("ac", 1), ("ac", -1)])
def test_a_product_of_an_integer_and_a_real_factor(integer_inputs, sign):
    """Q spikes, K integer counts, V real.  K^T V has no binary factor: MACs, a real-valued product, unless
    integer inputs count as ACs and K's values are counts of spikes (never negative)."""
    T, n, d = 2, 8, 4
    q, k = torch.zeros(2, T, 1, 1, n, d)
    q.view(-1)[::2] = 1          # fr_Q = 1/2
    k.view(-1)[::4] = 2 * sign   # {0, 2}: mean 1/2;  {0, -2}: mean -1/2
    v = torch.full_like(q, 0.3)
    report = estimate_energy(Attention(), torch.stack([q, k, v], dim=2), time_major=True,
                             integer_inputs=integer_inputs)
    kv, qkv = report.layers
    flops = d * n * d
    assert (qkv.op, qkv.kind, qkv.fr, qkv.ac, qkv.mac) == ("Q (K^T V)", "spike", 0.5, 0.5 * T * n * d * d, 0)
    if integer_inputs == "ac" and sign > 0:
        assert (kv.op, kv.kind, kv.fr, kv.ac, kv.mac) == ("K^T V", "integer", 0.5, 0.5 * T * flops, 0)
    else:
        assert (kv.op, kv.kind, kv.fr, kv.ac, kv.mac) == ("K^T V", "real", None, 0, T * flops)
        assert report.total_mJ == pytest.approx((0.9 * 0.5 * T * n * d * d + 4.6 * T * flops) * 1e-9, rel=1e-12)


# Overrides that make a family's named model as small as it goes: one block; a QKFormer with a single stage (stem,
# one SSA block: every stage needs a block); a ResNet at its least depth, 18
CONV_NETS = set(sf.list_models("*resnet*"))  # no attention


SMALLEST = {"sew_resnet": dict(depth=18), "ms_resnet": dict(layers=(1, 1, 1, 1)), "qkformer_": dict(depth=1, qk_depths=())}


def tiny(name: str, T: int) -> nn.Module:
    options = next((v for k, v in SMALLEST.items() if name.startswith(k)), dict(depth=1))
    return sf.create_model(name, T=T, **options).train()


@pytest.mark.parametrize("name", sf.list_models(modality="vision"))  # test_energy_ops prices the text models
def test_every_named_model_gets_a_full_report(name):
    model = tiny(name, T=1)
    size = model.cfg.img_size if model.cfg.img_size <= 32 else 2 * model.patch_size
    report = estimate_energy(model, torch.randn(1, model.cfg.in_chans, size, size))
    check_row_arithmetic(report)
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert layers <= {r.name for r in report.layers}  # every conv/linear is counted, none by a table
    ops = sorted(r.op for r in report.layers if r.op not in ("conv", "linear"))
    if name.startswith("sd_transformer_"):  # SDSA: two Hadamard products and a column sum, priced as bare ops
        assert ops == ["mul", "mul", "sum"]
    else:  # one block: two attention products (none in a ResNet); no bare tensor op is priced (tensor_ops)
        assert len(ops) == (0 if name in CONV_NETS else 2) and not any("#" in r.name for r in report.layers)
    readout = [r for r in report.layers if r.readout]
    assert [r.name for r in readout] == ["head.fc"]
    assert report.readout_mJ == pytest.approx(readout[0].uJ * 1e-3)
    assert report.backbone_mJ == pytest.approx(report.total_mJ - report.readout_mJ)


@pytest.mark.parametrize("name", [n for n in sf.list_models(modality="vision") if not n.startswith("transformer_")])
def test_every_named_spiking_model_is_priced_per_time_step(name):
    """Every layer of every model sees its input time-major, so a policy can be priced; running every step
    costs the backbone's energy."""
    from spikingformer.analysis.energy import energy_from_probe, policy_energy

    model = tiny(name, T=2)
    size = model.cfg.img_size if model.cfg.img_size <= 32 else 2 * model.patch_size
    with SynapticProbe(model) as probe:
        probe.per_step(2, 3)
        model(torch.randn(3, model.cfg.in_chans, size, size))
        probe.charge(torch.ones(1, 2, 3, dtype=torch.bool))
    assert policy_energy(probe, images=3) == [pytest.approx(energy_from_probe(probe, 3, 2).backbone_mJ * 1e3,
                                                            rel=1e-9)]


def test_spike_fed_head_counts_as_acs():
    head = ClassifierHead(16, 5, kind="sn_fc_avgpool")
    x = torch.full((2, 3, 4, 16), -10.0)  # [T, B, N, D]
    x[..., :8] = 10.0  # LIF (tau 2, threshold 1): H = 10 / 2 = 5 fires every step; -10 never: fr exactly 1/2
    report = estimate_energy(head, x, time_major=True)
    (row,) = report.layers
    flops = 4 * 16 * 5  # FC per token and step: N x D x classes
    assert (row.readout, row.kind, row.fr, row.flops, row.ac, row.mac) == (True, "spike", 0.5, flops, 0.5 * 2 * flops, 0)
    # the head is in the total, and it is all of it here; Eq. 20 (backbone) leaves it out
    assert report.total_mJ == pytest.approx(0.9 * 0.5 * 2 * flops * 1e-9, rel=1e-12)
    assert report.readout_mJ == pytest.approx(report.total_mJ, rel=1e-12) and report.backbone_mJ == pytest.approx(0)


def test_unknown_time_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="time steps.*T="):
        estimate_energy(MultiStepLIF(), torch.randn(2, 3))


def test_a_policy_stopping_after_t_steps_costs_the_energy_of_t_steps():
    """``policy_energy`` prices the sample-steps a policy ran (``eval --early-exit``): stopping every sample
    after t steps costs what the model built for T = t costs (static images, neurons that never look
    ahead), and a mixed policy charges every layer input in exactly the sample-steps it ran."""
    from spikingformer.analysis.energy import policy_energy
    from spikingformer.analysis.probe import SYNAPTIC_TYPES, SynapticProbe

    from ..helpers import calibrate_bn

    torch.manual_seed(0)
    kw = dict(depth=1, dim=32, num_heads=4, num_classes=5)
    model, x = sf.create_model("spikingformer_4_256", T=3, **kw), torch.randn(6, 3, 32, 32)
    calibrate_bn(model, x).eval()
    stops = torch.tensor([[0] * 6, [1] * 6, [2] * 6, [0, 2, 1, 0, 2, 1]])
    runs = torch.arange(3)[None, :, None] <= stops[:, None]                       # [policy, t, b]
    fed = {}  # each layer's inputs, seen by a hook of the test's own
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: fed.setdefault(name, args))
             for name, m in model.named_modules() if isinstance(m, SYNAPTIC_TYPES)]
    with SynapticProbe(model) as probe:
        probe.per_step(3, 6)
        model(x)
        probe.charge(runs)
    for h in hooks:
        h.remove()
    mixed = runs[3].float()
    for rec in probe.ordered:
        if rec.readout:
            assert rec.charged == []
            continue
        for spent, a in zip(rec.charged, fed[rec.name]):
            assert spent[3].item() == pytest.approx((a.reshape(3, 6, -1).sum(-1) * mixed).sum().item(), rel=1e-6)
    uJ = policy_energy(probe, images=6)
    for t in (1, 2, 3):
        short = sf.create_model("spikingformer_4_256", T=t, **kw).eval()
        short.load_state_dict(model.state_dict())
        assert uJ[t - 1] == pytest.approx(estimate_energy(short, x).backbone_mJ * 1e3, rel=1e-9)
    assert uJ[0] < uJ[3] < uJ[2]


def test_policy_energy_needs_inputs_laid_out_per_time_step():
    from spikingformer.analysis.energy import policy_energy

    model = nn.Sequential(nn.Linear(8, 4))
    with SynapticProbe(model) as probe:
        probe.per_step(3, 4)
        model(torch.rand(5, 8).round())                # 5 rows: not [T, B] nor T * B
        probe.charge(torch.ones(1, 3, 4, dtype=torch.bool))
    assert policy_energy(probe, images=4) is None
    with SynapticProbe(model) as probe:
        probe.per_step(3, 4)
        model(torch.rand(12, 8).round())               # T * B rows: priced
        probe.charge(torch.ones(1, 3, 4, dtype=torch.bool))
        assert policy_energy(probe, images=4) is not None
        model(torch.rand(12, 8).round())               # a pass no policy was charged for
    assert policy_energy(probe, images=4) is None


@pytest.mark.parametrize("name", sorted(PUBLISHED_LOGS))
def test_the_official_logs_firing_rates_give_the_official_energy(name):
    """Our Eq. 19-20 fed the firing rates of an official log (``analysis.published``) gives its G AC and mJ.  The
    differences are the official counter's: it counts a conv's bias additions among its operations and charges
    them as accumulates driven by the input's spikes (here a bias is no synaptic operation: it folds away), and it
    counts the attention with the heads its "SSA info" prints (12 for the 8-768, whose model has 8)."""
    log, T = PUBLISHED_LOGS[name], 4
    model = sf.create_model(name, num_heads=log["ssa_heads"]).eval()
    x, rates = torch.randn(1, 3, 224, 224), published_rates(name)
    with SynapticProbe(model) as probe, torch.no_grad():
        model(x)
    assert set(rates) == {r.name for r in probe.ordered[1:] if not r.readout}  # every synaptic layer but the first
    bias_acs = sum(rates[layer][0] * rec.module.out_channels * 14 * 14 * T for layer, rec in probe.layers.items()
                   if layer in rates and getattr(rec.module, "bias", None) is not None)
    report = energy_at_published_rates(model, x, rates, T)
    assert sum(r.ac for r in report.layers) + bias_acs == pytest.approx(log["total_ac"], rel=1e-8)  # 9 digits
    assert sum(r.mac for r in report.layers) == pytest.approx(log["total_mac"], abs=1000)  # the head's bias adds
    assert report.total_mJ == pytest.approx(log["total_mJ"], rel=1e-3)
    built = energy_at_published_rates(sf.create_model(name).eval(), x, rates, T)  # the heads the model has
    assert built.total_mJ == pytest.approx(log["total_mJ"], rel=3e-3)
