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
        if r.kind == "spike":
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
    assert report.total_mJ == pytest.approx(E_AC_PJ * 0.25 * T * flops * 1e-9, rel=1e-12)
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
    report = estimate_energy(head, torch.randn(2, 3, 4, 16) * 3, time_major=True)
    (row,) = report.layers
    assert row.readout and row.kind == "spike" and row.ac > 0 and row.mac == 0


def test_unknown_time_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="time steps.*T="):
        estimate_energy(MultiStepLIF(), torch.randn(2, 3))


# ---------------------------------------------------------------- command line

def test_cli_total_is_e_ac_times_ac_plus_e_mac_times_mac(tmp_path, capsys):
    js, cs = tmp_path / "e.json", tmp_path / "e.csv"
    rc = main(["energy", "--model", "spikformer_4_384", "--t", "1", "--batch-size", "1",
               "--e-mac", "3.1", "--e-ac", "0.7", "--json", str(js), "--csv", str(cs)])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(js.read_text())
    assert {"total_mJ", "mac", "ac", "layers", "readout_mJ", "backbone_mJ"} <= set(data)
    assert data["total_mJ"] == pytest.approx((0.7 * data["ac"] + 3.1 * data["mac"]) * 1e-9, rel=1e-12)
    printed = float(re.search(r"= ([0-9.e+-]+) mJ", out).group(1))
    assert printed == pytest.approx(data["total_mJ"], rel=1e-5)
    assert "untrained model" in out and "random N(0,1) input" in out
    rows = cs.read_text().splitlines()
    assert rows[0] == "name,op,kind,readout,fr,nonzero,flops,ac,mac,uJ"
    assert len(rows) == 1 + len(data["layers"])
    assert {"name", "kind", "fr", "flops", "ac", "mac", "uJ"} <= set(data["layers"][0])


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
