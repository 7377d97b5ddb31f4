"""QKFormer: the paper's parameter counts, the hierarchy's shapes, and what verify and energy find in it."""
import re

import pytest
import torch

import spikingformer as sf
from spikingformer.analysis.energy import estimate_energy
from spikingformer.analysis.verify import verify_model
from spikingformer.models import paper_facts
from spikingformer.models.qkformer import QKChannelAttention, QKFormer, QKTokenAttention
from spikingformer.utils.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

QKFORMERS = sf.list_models("qkformer_*")
TINY = dict(dim=64, depth=3, num_heads=4, T=2, num_classes=5)  # stages of width 16, 32, 64; one block each


def test_every_table_row_is_registered():
    assert QKFORMERS == ["qkformer_10_384", "qkformer_10_512", "qkformer_10_768", "qkformer_4_384",
                         "qkformer_dvs_2_256"]


@pytest.mark.parametrize("name,params", [("qkformer_4_384", 6_740_884), ("qkformer_dvs_2_256", 1_504_138),
                                         ("qkformer_10_384", 16_473_688), ("qkformer_10_512", 29_079_336),
                                         ("qkformer_10_768", 64_962_760)])
def test_parameter_counts(name, params):
    with torch.device("meta"):
        model = sf.create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert n == params and abs(n / 1e6 - paper_facts(name).params_M) / paper_facts(name).params_M < 0.005


@pytest.mark.parametrize("name,size,tokens,overrides", [
    ("qkformer_4_384", 16, 16, {}),                       # CIFAR: the stem keeps the resolution, 2 halvings
    ("qkformer_10_384", 32, 4, dict(depth=4)),            # ImageNet: the stem pools twice (1 + 2 QK blocks)
    ("qkformer_dvs_2_256", 32, 4, dict(depth=2, in_chans=2)),  # DVS: the stem pools three times, 2 stages
])
def test_stages_halve_the_resolution_and_double_the_width(name, size, tokens, overrides):
    model = sf.create_model(name, **{**TINY, **overrides}).eval()
    x = torch.randn(2, model.cfg.in_chans, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2, tokens, 64)
        assert model(x).shape == (2, 5)
        assert model(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)).shape == (2, 5)  # event frames [T, B, C, H, W]
    assert [s.blocks[0].mlp.fc1.conv.in_channels for s in model.stages][-1] == 64
    assert model.patch_size == size // int(tokens ** 0.5)


def test_attention_kinds_per_stage():
    model = sf.create_model("qkformer_10_384", **{**TINY, "depth": 5})
    kinds = [[type(b.attn).__name__ for b in s.blocks] for s in model.stages]
    assert kinds == [["QKTokenAttention"], ["QKTokenAttention", "QKTokenAttention"], ["SSA", "SSA"]]
    qkca = sf.create_model("qkformer_4_384", qk_attention="channel", **TINY)
    assert type(qkca.stages[0].blocks[0].attn) is QKChannelAttention
    assert model.stages[2].blocks[0].attn.sn_attn.v_threshold == 0.5
    assert model.stages[0].blocks[0].attn.sn_attn.v_threshold == 0.5


@pytest.mark.parametrize("attn_cls,mask_shape", [(QKTokenAttention, (2, 1, 4, 9, 1)),
                                                 (QKChannelAttention, (2, 1, 4, 1, 2))])
def test_qk_attention_masks_k_by_a_spike_per_token_or_channel(attn_cls, mask_shape):
    attn = attn_cls(8, 4).train()
    seen = {}
    attn.sn_attn.register_forward_hook(lambda m, i, o: seen.update(mask=o))
    attn.sn_proj.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        attn(torch.randn(2, 1, 8, 3, 3) + 1)
    assert seen["mask"].shape == mask_shape and set(seen["mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(seen["out"].unique().tolist()) <= {0.0, 1.0}


def test_bad_configs_are_refused():
    with pytest.raises(InputError, match="SSA block"):
        sf.create_model("qkformer_4_384", depth=2)
    with pytest.raises(InputError, match="embed"):
        sf.create_model("qkformer_4_384", embed="vit")
    with pytest.raises(InputError, match="multiple of 8"):
        sf.create_model("qkformer_4_384", dim=100, num_heads=4)


# Every layer that reads the residual stream sees spike counts: a SPEDS adds its shortcut's spikes to its main
# path's and every block adds its branch's, as in Spikformer (SEW).  The rest are fed spikes.
STREAM_READERS = [
    "stages.0.blocks.0.attn.q.conv", "stages.0.blocks.0.attn.k.conv", "stages.0.blocks.0.mlp.fc1.conv",
    "stages.1.embed.layers.0.conv.conv", "stages.1.embed.shortcut.conv.conv",
    "stages.1.blocks.0.attn.q.conv", "stages.1.blocks.0.attn.k.conv", "stages.1.blocks.0.mlp.fc1.conv",
    "stages.2.embed.layers.0.conv.conv", "stages.2.embed.shortcut.conv.conv",
    "stages.2.blocks.0.attn.q.conv", "stages.2.blocks.0.attn.k.conv", "stages.2.blocks.0.attn.v.conv",
    "stages.2.blocks.0.mlp.fc1.conv"]


@pytest.fixture(scope="module")
def tiny_cifar():
    torch.manual_seed(0)
    return sf.create_model("qkformer_4_384", **TINY).train(), torch.randn(2, 3, 16, 16)


def test_verify_names_the_layers_that_read_the_spike_count_stream(tiny_cifar):
    model, x = tiny_cifar
    cert = verify_model(model, x, "qkformer_4_384")
    assert not cert.spike_driven
    assert [r.name for r in cert.violations] == STREAM_READERS
    assert all(i.kind == "integer" and i.built == "integer" for r in cert.violations for i in r.inputs)
    by_name = {r.name: r for r in cert.layers}
    assert by_name["stages.0.embed.layers.0.conv.conv"].role == "encoding"
    for name in ("stages.0.embed.layers.1.conv.conv", "stages.0.embed.shortcut.conv.conv",
                 "stages.0.blocks.0.attn.mul#1", "stages.0.blocks.0.attn.proj.conv",
                 "stages.1.blocks.0.attn.mul#1", "stages.2.blocks.0.attn.qkv", "stages.2.blocks.0.mlp.fc2.conv"):
        assert by_name[name].ok and by_name[name].proven, name
    assert [r.name for r in cert.readout] == ["head.fc"]


def test_energy_prices_the_qk_attention_ops(tiny_cifar):
    model, x = tiny_cifar
    rows = {(r.name, r.op): r for r in estimate_energy(model, x).layers}
    for stage, elements in ((0, 16 * 256), (1, 32 * 64)):  # Q's channels x tokens, per time step
        total = rows[(f"stages.{stage}.blocks.0.attn.sum#1", "sum")]
        gate = rows[(f"stages.{stage}.blocks.0.attn.mul#1", "mul")]
        assert total.flops == gate.flops == elements
        assert total.kind == gate.kind == "spike" and 0 < total.ac < total.flops * 2
    assert rows[("stages.0.blocks.0.attn.q.conv", "conv")].kind == "integer"
    assert not any(n.startswith("stages.2") and op in ("sum", "mul") for n, op in rows)  # SSA: Q K^T V instead


def test_timm_creates_the_registered_models():
    timm = pytest.importorskip("timm")
    from timm.models import group_parameters
    assert sf.models.register_with_timm()
    model = timm.create_model("qkformer_4_384", **TINY)
    assert isinstance(model, QKFormer) and model.cfg.dim == 64
    groups = group_parameters(model, model.group_matcher())  # layer-wise lr decay: stem, each SPEDS and block, head
    parts = [{re.match(r"stages\.\d\.(embed|blocks\.\d)|head", n)[0] for n in names}
             for _, names in sorted(groups.items())]
    assert parts == [{"stages.0.embed"}, {"stages.0.blocks.0"}, {"stages.1.embed"}, {"stages.1.blocks.0"},
                     {"stages.2.embed"}, {"stages.2.blocks.0"}, {"head"}]
