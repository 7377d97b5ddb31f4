"""SD-Transformer V1: the paper's parameter counts, shapes, the spike-driven certificate, SDSA's priced ops."""
import pytest
import torch

import spikingformer as sf
from spikingformer.analysis.energy import estimate_energy
from spikingformer.analysis.verify import verify_model
from spikingformer.models import paper_facts
from spikingformer.models.sd_transformer import SDSA, SDTransformer
from spikingformer.utils.errors import InputError

from ..helpers import calibrate_bn

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["sd_transformer_8_384", "sd_transformer_8_512", "sd_transformer_8_768", "sd_transformer_2_512",
         "sd_transformer_dvs_2_256"]
TINY = dict(depth=1, dim=32, num_heads=4, T=2)


def _count(name, **kw):
    with torch.device("meta"):
        return sum(p.numel() for p in sf.create_model(name, **kw).parameters())


def test_every_size_is_registered():
    assert sf.list_models("sd_transformer_*") == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_the_table(name):
    paper = paper_facts(name).params_M
    assert abs(_count(name) / 1e6 - paper) / paper < 0.005


def test_cifar_table_count_is_the_cifar100_model():
    # 10.28M in Table 3 is the 2-512 with a 100-class head; ours defaults to CIFAR-10's 10
    assert _count("sd_transformer_2_512", num_classes=100) == 10_279_588
    assert _count("sd_transformer_2_512") == 10_279_588 - 90 * 513


def test_table_rows_and_the_288_test_resolution():
    (row,) = paper_facts("sd_transformer_8_768").reported
    assert (row.table, row.dataset, row.T, row.top1, row.energy_mJ) == ("Spikingformer Table 2", "ImageNet", 4,
                                                                        77.07, 6.09)
    assert "288" in row.note
    dvs = {r.dataset: (r.T, r.top1) for r in paper_facts("sd_transformer_dvs_2_256").reported}
    assert dvs == {"DVS128 Gesture": (16, 99.3), "CIFAR10-DVS": (16, 80.0)}


@pytest.mark.parametrize("name,tokens", [("sd_transformer_2_512", 64), ("sd_transformer_8_512", 4)])
def test_images_and_sequences_give_logits_and_tokens(name, tokens):
    model = sf.create_model(name, num_classes=7, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2, tokens, 32)  # [T, B, N, D]: CIFAR pools twice, ImageNet four times
    assert model(x).shape == (2, 7)
    seq = torch.stack([x, x.flip(-1), x])  # a 3-step sequence overrides T
    assert model(seq).shape == (2, 7)
    steps = model.forward_steps(seq)
    assert steps.shape == (3, 2, 7)
    torch.testing.assert_close(steps[-1], model(seq))


def test_dvs_model_takes_event_frames():
    model = sf.create_model("sd_transformer_dvs_2_256", **TINY).eval()
    assert (model.cfg.T, model.cfg.in_chans, model.cfg.num_classes, model.patch_size) == (2, 2, 11, 8)
    assert model(torch.rand(2, 1, 2, 64, 64).round()).shape == (1, 11)


def _sdsa(dim, heads, erode=False, beta=1.0):
    """An eval-mode SDSA whose Q, K, V BN biases ``beta`` make them fire at some positions (about 16 % at 1.0)."""
    torch.manual_seed(0)
    attn = SDSA(dim, heads, erode=erode).eval()
    for bn in (attn.q.bn, attn.k.bn, attn.v.bn):
        torch.nn.init.constant_(bn.bias, beta)
    return attn


def test_heads_change_nothing_without_erode():
    # SDSA is channel-wise (Hadamard products, a sum over tokens): the head split is a reshape
    one, eight = _sdsa(32, 1), _sdsa(32, 8)
    eight.load_state_dict(one.state_dict())
    x = torch.randn(2, 3, 32, 4, 4) * 3
    assert torch.equal(one(x), eight(x))
    eroded = _sdsa(32, 8, erode=True)
    eroded.load_state_dict(one.state_dict())
    assert not torch.equal(eroded(x), one(x))
    assert one(x).std(dim=(-2, -1)).mean() > 0  # the attention's output varies over tokens: Q, K, V fired


def test_sdsa_is_the_column_sum_of_k_times_v():
    attn = _sdsa(16, 2)
    x = torch.randn(2, 1, 16, 3, 3) * 3
    xs = attn.sn_in(x)
    q, k, v = (sn(conv(xs)) for sn, conv in ((attn.sn_q, attn.q), (attn.sn_k, attn.k), (attn.sn_v, attn.v)))
    kv = attn.sn_kv((k * v).sum(dim=(-2, -1), keepdim=True))  # per channel over the 9 tokens, V_th 0.5
    assert attn.sn_kv.v_threshold == 0.5 and 0 < kv.mean() < 1
    torch.testing.assert_close(attn(x), attn.proj(q * kv))


def test_config_refuses_what_the_official_model_would_build_otherwise():
    with pytest.raises(InputError, match="mlp_ratio 1"):
        sf.create_model("sd_transformer_2_512", dim=64, mlp_ratio=1.0)
    with pytest.raises(InputError, match="no attention scale"):
        SDSA(32, 4, scale=0.125)


def _tiny(**kw):
    model = sf.create_model("sd_transformer_2_512", **{**TINY, **kw})
    x = torch.randn(2, 3, 32, 32)
    calibrate_bn(model, x)
    return model.eval(), x


@pytest.mark.parametrize("erode", [False, True])
def test_verify_proves_it_spike_driven(erode):
    model, x = _tiny(erode=erode)
    cert = verify_model(model, x, "sd_transformer_2_512")
    assert cert.spike_driven and cert.proven and not cert.violations, cert.table()
    names = [r.name for r in cert.layers]
    assert names[0] == "tokenizer.encode.conv" and cert.layers[0].role == "encoding"
    for layer in ("tokenizer.convs.2.conv", "tokenizer.rpe.conv", "blocks.0.attn.q.conv", "blocks.0.attn.mul#1",
                  "blocks.0.attn.mul#2", "blocks.0.attn.proj.conv", "blocks.0.mlp.fc1.conv", "blocks.0.mlp.fc2.conv"):
        assert layer in names, names
    (head,) = cert.readout
    assert head.name == "head.fc" and head.spike_input  # the official head feeds its FC spikes


def test_energy_prices_the_sdsa_ops_as_additions():
    model, x = _tiny()
    report = estimate_energy(model, x)
    ops = {r.name: r for r in report.layers if r.name.startswith("blocks.0.attn.") and not r.name.endswith("conv")}
    assert sorted(ops) == ["blocks.0.attn.mul#1", "blocks.0.attn.mul#2", "blocks.0.attn.sum#1"]
    n_d = 64 * 32  # 8x8 tokens, 32 channels: one add per element for each op
    for r in ops.values():
        assert (r.op, r.kind, r.flops, r.mac) == (r.name.split(".")[-1].split("#")[0], "spike", n_d, 0)
        assert r.ac == pytest.approx(r.fr * 2 * n_d)
    assert report.layers[0].mac > 0 and all(r.mac == 0 for r in report.layers[1:])


def test_timm_creates_it():
    timm = pytest.importorskip("timm")
    assert sf.models.register_with_timm()
    model = timm.create_model("sd_transformer_2_512", num_classes=5, **TINY)
    assert isinstance(model, SDTransformer)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
