"""Energy per image (Eq. 19-20, SPEC §7): the counting method, pinned on hand computations."""
import json
import re

import pytest
import torch
from torch import nn

import spikingformer as sf
from spikingformer.cli import main
from spikingformer.energy import E_AC_PJ, E_MAC_PJ, estimate_energy, load_checkpoint
from spikingformer.layers import ClassifierHead, ConvBN, SpikeQKV
from spikingformer.neuron import MultiStepLIF

from .helpers import calibrate_bn



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
    assert report.spike_driven
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
    assert not report.spike_driven


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


@pytest.mark.parametrize("name", sf.list_models())
def test_every_named_model_gets_a_full_report(name):
    model = sf.create_model(name, depth=1, T=1).train()
    size = model.cfg.img_size if model.cfg.img_size <= 32 else 2 * model.patch_size
    report = estimate_energy(model, torch.randn(1, model.cfg.in_chans, size, size))
    check_row_arithmetic(report)
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert layers <= {r.name for r in report.layers}  # every conv/linear is counted, none by a table
    assert sum(r.op not in ("conv", "linear") for r in report.layers) == 2  # one block: two attention products
    readout = [r for r in report.layers if r.readout]
    assert [r.name for r in readout] == ["head.fc"]
    assert report.readout_mJ == pytest.approx(readout[0].uJ * 1e-3)
    assert report.backbone_mJ == pytest.approx(report.total_mJ - report.readout_mJ)


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


# ---------------------------------------------------------------- command line

def test_cli_total_is_e_ac_times_ac_plus_e_mac_times_mac(tmp_path, capsys):
    # each output into a folder not yet there: made, not a crash after the work
    js, cs, png = tmp_path / "j" / "e.json", tmp_path / "c" / "e.csv", tmp_path / "p" / "e.png"
    rc = main(["energy", "--model", "spikformer_4_384", "--t", "1", "--batch-size", "1",
               "--e-mac", "3.1", "--e-ac", "0.7", "--json", str(js), "--csv", str(cs), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(js.read_text())
    assert {"total_mJ", "mac", "ac", "layers", "readout_mJ", "backbone_mJ"} <= set(data)
    assert data["total_mJ"] == pytest.approx((0.7 * data["ac"] + 3.1 * data["mac"]) * 1e-9, rel=1e-12)
    assert (data["e_ac_pJ"], data["e_mac_pJ"]) == (0.7, 3.1)
    printed = float(re.search(r"= ([0-9.e+-]+) mJ", out).group(1))
    assert printed == pytest.approx(data["total_mJ"], rel=1e-5)
    assert "untrained model" in out and "random N(0,1) input" in out
    rows = cs.read_text().splitlines()
    assert rows[0] == "name,op,kind,readout,fr,nonzero,flops,ac,mac,uJ"
    assert len(rows) == 1 + len(data["layers"])
    assert {"name", "kind", "fr", "flops", "ac", "mac", "uJ"} <= set(data["layers"][0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_each_layer_firing_rate_and_energy(tmp_path, monkeypatch):
    """One bar per synaptic product in each panel, in network order: its input firing rate (0 where the
    input is not spikes) and its energy, coloured by AC or MAC."""
    import spikingformer.metrics as metrics

    model = sf.create_model("spikingformer_4_256", depth=1, dim=32, num_heads=4, T=2).eval()
    report = estimate_energy(model, torch.randn(2, 3, 32, 32))
    figures = []
    monkeypatch.setattr(metrics, "save_figure", lambda fig, path: figures.append(fig))
    report.write_png(str(tmp_path / "e.png"))
    ax_fr, ax_e = figures[0].axes
    fr_bars, e_bars = ax_fr.patches, ax_e.patches
    assert len(fr_bars) == len(e_bars) == len(report.layers)
    assert [b.get_height() for b in fr_bars] == pytest.approx([r.fr or 0.0 for r in report.layers])
    assert [b.get_height() for b in e_bars] == pytest.approx([r.uJ for r in report.layers])
    assert [t.get_text() for t in ax_e.get_xticklabels()][0] == report.layers[0].name
    spike = [b.get_facecolor() for b, r in zip(e_bars, report.layers) if r.kind == "spike"]
    real = [b.get_facecolor() for b, r in zip(e_bars, report.layers) if r.kind == "real"]
    assert spike and real and len(set(spike)) == 1 and set(spike).isdisjoint(real)


def test_cli_unknown_model(capsys):
    assert main(["energy", "--model", "spikingformer_9_999"]) == 2
    assert "unknown model 'spikingformer_9_999'" in capsys.readouterr().err


@pytest.mark.parametrize("content,msg", [(None, "checkpoint not found"), (b"not a checkpoint", "not a readable checkpoint"),
                                         ("wrong", "does not fit")])
def test_cli_bad_checkpoint(tmp_path, capsys, content, msg):
    path = tmp_path / "ck.pt"
    if content == "wrong":
        torch.save(sf.create_model("spikingformer_4_256", depth=1).state_dict(), path)
    elif content is not None:
        path.write_bytes(content)
    assert main(["energy", "--model", "spikingformer_4_256", "--checkpoint", str(path)]) == 2
    assert msg in capsys.readouterr().err


def test_checkpoint_formats_load_the_same_weights(tmp_path):
    from safetensors.torch import save_file

    src = sf.create_model("spikingformer_4_256", depth=1, dim=64, num_heads=2)
    state = src.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    save_file(state, tmp_path / "plain.safetensors")
    for name in ("wrapped.pth", "plain.safetensors"):
        dst = load_checkpoint(sf.create_model("spikingformer_4_256", depth=1, dim=64, num_heads=2),
                              str(tmp_path / name))
        for k, v in dst.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)


def test_cli_with_a_checkpoint_reports_trained_weights(tmp_path, capsys):
    model = sf.create_model("spikingformer_4_256", T=1)
    calibrate_bn(model, torch.randn(4, 3, 32, 32))
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    js = tmp_path / "e.json"
    assert main(["energy", "--model", "spikingformer_4_256", "--t", "1", "--checkpoint", str(tmp_path / "ck.pth"),
                 "--json", str(js)]) == 0
    assert "untrained" not in capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["spike_driven"] and data["ac"] > 0


def test_cli_reads_an_image_folder(tmp_path, capsys):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(tmp_path / cls / "a.png")
    js = tmp_path / "e.json"
    assert main(["energy", "--model", "spikingformer_4_256", "--t", "1", "--data", str(tmp_path),
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["images"] == 2 and not any("random N(0,1)" in n for n in data["notes"])
    assert main(["energy", "--model", "spikingformer_4_256", "--data", str(tmp_path / "cat")]) == 2
    assert "class-folder" in capsys.readouterr().err


def test_cli_rebuilds_the_model_a_training_checkpoint_describes(tmp_path, capsys):
    from spikingformer.checkpoint import save_checkpoint

    args = {"depth": 1, "dim": 64, "num_heads": 2, "num_classes": 3, "T": 1}
    model = sf.create_model("spikingformer_4_256", **args)
    calibrate_bn(model, torch.randn(4, 3, 32, 32))
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "meta": {"model": "spikingformer_4_256", "model_args": args}},
                    path)
    js = tmp_path / "e.json"
    assert main(["energy", "--model", "spikingformer_4_256", "--checkpoint", str(path), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["T"] == 1 and data["layers"][-1]["flops"] == 64 * 3  # the 3-class head of the checkpoint
    assert main(["energy", "--model", "spikformer_4_384", "--checkpoint", str(path)]) == 2
    assert "holds a spikingformer_4_256, not a spikformer_4_384" in capsys.readouterr().err


# ---------------------------------------------------------------- text and event-data checkpoints

TEXT_ARGS = dict(depth=1, dim=32, num_heads=2, T=2, max_len=32, vocab_size=17, num_classes=2, attn_scale=0.5)
WORDS = ["good", "bad", "the", "film", "was", "very", "plot", "."]


def text_checkpoint(d, task: str = "sst2"):
    """A glue (or mlm) run's checkpoint, saved in the engine's format, beside its vocabulary and data."""
    from spikingformer.checkpoint import save_checkpoint
    from spikingformer.glue import GlueConfig
    from spikingformer.mlm import MLMConfig
    from spikingformer.loading import calibrate_bn
    from spikingformer.models.text import create_text_model

    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    (d / "SST-2").mkdir(exist_ok=True)
    rows = [f"the film was {'very ' * (i % 4)}{'good' if i % 2 else 'bad'} ." for i in range(20)]
    (d / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    (d / "corpus.txt").write_text(" ".join(WORDS * 12) + "\n")
    head = "mlm" if task == "mlm" else "sequence"
    model = create_text_model("spikingformer_text_2_128", **TEXT_ARGS, head=head)
    calibrate_bn(model, [torch.randint(5, 13, (4, 12))])
    common = dict(vocab=str(d / "vocab.txt"), model_args={})
    cfg = (MLMConfig(train_file=str(d / "corpus.txt"), block_len=16, **common) if task == "mlm" else
           GlueConfig(task="sst2", data_dir="/nonexistent", holdout_fraction=0.25, max_len=32, **common))
    path = d / f"{task}.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "step": 1,
                     "meta": {"model": "spikingformer_text_2_128", "model_args": dict(TEXT_ARGS, head=head),
                              "task": task}}, path)
    return path


def test_text_checkpoint_on_random_token_ids_is_per_sequence(tmp_path, capsys):
    ck, js = text_checkpoint(tmp_path), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--seq-len", "10", "--batch-size", "3", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["unit"] == "sequence" and data["images"] == 3 and data["T"] == 2
    assert "total per sequence:" in out and "per image" not in out and "3 sequence(s)" in out
    assert any("random token ids, 3 x 1 sequences of 10 tokens (seed 0)" in n for n in data["notes"])
    q = data["layers"][0]
    assert q["name"] == "blocks.0.attn.q.linear" and q["kind"] == "spike" and q["flops"] == 10 * 32 * 32
    assert data["layers"][-1]["name"] == "head.fc" and data["layers"][-1]["readout"]
    assert data["spike_driven"] and data["readout_mJ"] > 0
    assert main(["energy", "--checkpoint", str(ck), "--seq-len", "40"]) == 2
    assert "--seq-len 40 must be in 1..32" in capsys.readouterr().err


def test_text_checkpoint_on_the_held_out_glue_sequences(tmp_path):
    from spikingformer import glue
    from spikingformer.config import from_dict
    from spikingformer.data import glue as gdata
    from spikingformer.data import text as tdata

    ck, js = text_checkpoint(tmp_path), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path), "--batch-size", "4",
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    # the split the run evaluated on: 5 of 20, rebuilt from the stored config with --data as data_dir
    cfg = from_dict(glue.GlueConfig, dict(glue.GlueConfig(task="sst2", holdout_fraction=0.25, max_len=32,
                                                          vocab=str(tmp_path / "vocab.txt")).to_dict(),
                                          data_dir=str(tmp_path)))
    (_, name, ds), = glue.glue_splits(cfg, gdata.get_task("sst2"), tdata.WordPieceTokenizer(cfg.vocab)).evals
    longest = max(len(ds[i][0]) for i in range(4))
    assert data["images"] == 4 and data["layers"][0]["flops"] == longest * 32 * 32
    assert any(n.startswith(f"input: 4 sequences of {name}") for n in data["notes"])
    assert not any("random" in n or "untrained" in n for n in data["notes"])


def test_mlm_checkpoint_on_masked_corpus_blocks(tmp_path, capsys):
    ck, js = text_checkpoint(tmp_path, "mlm"), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "corpus.txt"), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["images"] == 2 and data["layers"][0]["flops"] == 16 * 32 * 32  # block_len 16
    head = data["layers"][-1]
    # the tied read-out runs once per sequence (on the T-mean): 16 tokens x D 32 x 17-word vocabulary MACs
    assert head["name"] == "head.fc" and head["kind"] == "real" and head["mac"] == 16 * 32 * 17
    # --data on a bare text state_dict cannot know how the data was read
    torch.save(torch.load(ck, weights_only=True)["model"], tmp_path / "bare.pt")
    assert main(["energy", "--model", "spikingformer_text_2_128", "--checkpoint", str(tmp_path / "bare.pt"),
                 "--data", str(tmp_path)]) == 2
    assert "needs an mlm/glue checkpoint" in capsys.readouterr().err


def event_checkpoint(d):
    """An nmnist run's checkpoint in the training engine's format, beside its (synthetic) recordings."""
    from spikingformer.checkpoint import save_checkpoint
    from spikingformer.config import TrainConfig
    from spikingformer.loading import calibrate_bn

    from .data.test_events import write_nmnist_subset

    write_nmnist_subset(d / "nmnist", per_class=2)
    margs = dict(depth=1, dim=32, num_heads=2, T=2, downsample=[False, False, True, True])
    cfg = TrainConfig(model="spikingformer_dvs_2_256", dataset="nmnist", data_dir="/elsewhere", model_args=margs,
                      img_size=32, val_split="holdout", holdout=3, workers=0)
    margs = dict(margs, img_size=32, num_classes=10)
    model = sf.create_model("spikingformer_dvs_2_256", **margs)
    calibrate_bn(model, [torch.rand(2, 3, 2, 32, 32).round()])
    path = d / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"model": "spikingformer_dvs_2_256", "model_args": margs, "img_size": 32}}, path)
    return path


def test_event_checkpoint_reads_real_frames_of_its_validation_split(tmp_path):
    ck, js = event_checkpoint(tmp_path), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "nmnist"), "--batch-size", "3",
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["unit"] == "image" and data["T"] == 2 and data["images"] == 3
    assert "input: nmnist val (held-out 3 of 6 train images, class-balanced, seed 0)" in data["notes"]
    enc = data["layers"][0]
    # the encoding conv sees event counts (integers), 2 polarity channels at 32x32
    assert enc["kind"] == "integer" and enc["flops"] == 32 * 32 * 4 * 2 * 9 and enc["mac"] == 2 * enc["flops"]


def test_bad_data_for_a_run_checkpoint_is_a_usage_error(tmp_path, capsys):
    assert main(["energy", "--checkpoint", str(event_checkpoint(tmp_path)), "--data", str(tmp_path / "nope")]) == 2
    assert f"error: data_dir {tmp_path / 'nope'} does not exist (dataset nmnist)" in capsys.readouterr().err
