"""Official QKFormer weights (zhouchenlin2096/QKFormer) load into ``qkformer_*`` and compute the official forward.

``Official`` below restates the official module trees of ``cifar10/model.py``, ``imagenet/qkformer.py`` and
``cifar10-dvs/model.py`` in plain PyTorch, with their attribute names (so its state_dict is in the official
layout) and a LIF neuron written from SPEC §2 (SpikingJelly's MultiStepLIFNode, tau 2, hard reset to 0).  It
is written from the official files, not from our modules: a mapping that put a tensor in the wrong place, or a
structure of ours that differs (pool placement, shortcut source, head split), changes the logits.
"""
import re

import pytest
import torch
from torch import nn

from spikingformer import create_model, load_model
from spikingformer.weights import official, official_qkformer
from spikingformer.weights.official import OfficialWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


class LIF(nn.Module):
    def __init__(self, v_threshold=1.0):
        super().__init__()
        self.v_threshold = v_threshold

    def forward(self, x):
        v, out = torch.zeros_like(x[0]), []
        for xt in x:
            h = v + (xt - v) / 2.0
            s = (h >= self.v_threshold).to(x.dtype)
            v = h * (1 - s)
            out.append(s)
        return torch.stack(out)


def _tb(fn, x):  # [T, B, ...] through a per-sample fn
    t, b = x.shape[:2]
    y = fn(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


class TokenQKAttention(nn.Module):  # Token_QK_Attention
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        for n in ("q", "k"):
            setattr(self, f"{n}_conv", nn.Conv1d(dim, dim, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", LIF())
        self.attn_lif = LIF(0.5)
        self.proj_conv, self.proj_bn, self.proj_lif = nn.Conv1d(dim, dim, 1), nn.BatchNorm1d(dim), LIF()

    def forward(self, x):
        t, b, c, h, w = x.shape
        x = x.flatten(3)
        q, k = (getattr(self, f"{n}_lif")(_tb(lambda z, n=n: getattr(self, f"{n}_bn")(getattr(self, f"{n}_conv")(z)),
                                              x)).reshape(t, b, self.heads, c // self.heads, h * w) for n in "qk")
        x = (self.attn_lif(q.sum(dim=3, keepdim=True)) * k).flatten(2, 3)
        return self.proj_lif(_tb(lambda z: self.proj_bn(self.proj_conv(z)), x).reshape(t, b, c, h, w))


class SpikingSelfAttention(nn.Module):  # Spiking_Self_Attention
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        for n in "qkv":
            setattr(self, f"{n}_conv", nn.Conv1d(dim, dim, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", LIF())
        self.attn_lif = LIF(0.5)
        self.proj_conv, self.proj_bn, self.proj_lif = nn.Conv1d(dim, dim, 1), nn.BatchNorm1d(dim), LIF()
        self.qkv_mp = nn.MaxPool1d(4)  # built, never called

    def forward(self, x):
        t, b, c, h, w = x.shape
        x, n_tok = x.flatten(3), h * w
        q, k, v = (getattr(self, f"{n}_lif")(_tb(lambda z, n=n: getattr(self, f"{n}_bn")(getattr(self, f"{n}_conv")(z)),
                                                 x)).transpose(-1, -2).reshape(t, b, n_tok, self.heads, -1)
                   .permute(0, 1, 3, 2, 4) for n in "qkv")
        x = (q @ (k.transpose(-2, -1) @ v)) * 0.125
        x = self.attn_lif(x.transpose(3, 4).reshape(t, b, c, n_tok))
        return self.proj_lif(_tb(lambda z: self.proj_bn(self.proj_conv(z)), x)).reshape(t, b, c, w, h)


class MLP(nn.Module):  # mlp1/mlp2 (CIFAR, DVS) or fc1/fc2 (ImageNet)
    def __init__(self, dim, hidden, names):
        super().__init__()
        self.names = names
        for n, (i, o) in zip(names, ((dim, hidden), (hidden, dim))):
            setattr(self, f"{n}_conv", nn.Conv2d(i, o, 1))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(o))
            setattr(self, f"{n}_lif", LIF())

    def forward(self, x):
        for n in self.names:
            x = getattr(self, f"{n}_lif")(_tb(lambda z, n=n: getattr(self, f"{n}_bn")(getattr(self, f"{n}_conv")(z)), x))
        return x


class Block(nn.Module):  # TokenSpikingTransformer (attn named tssa) / SpikingTransformer (ssa, or attn)
    def __init__(self, attn_name, attn, mlp):
        super().__init__()
        self.attn_name = attn_name
        setattr(self, attn_name, attn)
        self.mlp = mlp

    def forward(self, x):
        x = x + getattr(self, self.attn_name)(x)
        return x + self.mlp(x)


class PatchEmbed(nn.Module):
    """PatchEmbedInit / PatchEmbeddingStage: ``convs`` (name, in, out, max-pool after BN), the 1x1 shortcut
    ``proj_res`` from the output of conv ``res_from`` (None: the input) with ``stride``."""

    def __init__(self, convs, res_from, stride):
        super().__init__()
        self.convs, self.res_from = [c[0] for c in convs], res_from
        self.pools = {n: p for n, _, _, p in convs}
        for n, i, o, _ in convs:
            setattr(self, f"{n}_conv", nn.Conv2d(i, o, 3, 1, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(o))
            setattr(self, f"{n}_lif", LIF())
        res_in = dict((n, i) for n, i, _, _ in convs)[convs[0][0]] if res_from is None else \
            dict((n, o) for n, _, o, _ in convs)[res_from]
        self.proj_res_conv = nn.Conv2d(res_in, convs[-1][2], 1, stride, bias=False)
        self.proj_res_bn, self.proj_res_lif = nn.BatchNorm2d(convs[-1][2]), LIF()

    def forward(self, x):
        feat = x
        for n in self.convs:
            pool = nn.functional.max_pool2d if self.pools[n] else (lambda z, *a: z)
            x = getattr(self, f"{n}_lif")(_tb(lambda z, n=n: pool(getattr(self, f"{n}_bn")(getattr(self, f"{n}_conv")(z)),
                                                                   3, 2, 1), x))
            feat = x if n == self.res_from else feat
        return x + self.proj_res_lif(_tb(lambda z: self.proj_res_bn(self.proj_res_conv(z)), feat))


def build_official(layout, dim, depth, heads, classes, in_ch=3, mlp_ratio=4):
    """The official model of ``layout`` ("cifar", "imagenet", "dvs") at width ``dim``, ``depth`` blocks."""
    m = nn.Module()
    mlp_names = ("fc1", "fc2") if layout == "imagenet" else ("mlp1", "mlp2")
    if layout == "cifar":
        d = dim // 4
        m.patch_embed1 = PatchEmbed([("proj", in_ch, d // 2, False), ("proj1", d // 2, d, False)], "proj", 1)
        widths, qk_depths, ssa_name = (d, 2 * d, dim), (1, 1), "ssa"
    elif layout == "imagenet":
        d = dim // 4
        m.patch_embed1 = PatchEmbed([("proj", in_ch, d // 2, True), ("proj1", d // 2, d, True),
                                     ("proj2", d, d, False)], "proj", 2)
        widths, qk_depths, ssa_name = (d, 2 * d, dim), (1, 2), "attn"
    else:
        d = dim // 2
        m.patch_embed1 = PatchEmbed([("proj", in_ch, d // 8, False), ("proj1", d // 8, d // 4, True),
                                     ("proj2", d // 4, d // 2, True), ("proj3", d // 2, d, True)], "proj1", 4)
        widths, qk_depths, ssa_name = (d, dim), (1,), "ssa"
    first = "proj" if layout == "dvs" else "proj3"
    pool_first = layout == "imagenet"
    depths = (*qk_depths, depth - sum(qk_depths))
    for s, (w, n) in enumerate(zip(widths, depths), start=1):
        if s > 1:
            setattr(m, f"patch_embed{s}", PatchEmbed([(first, w // 2, w, pool_first), ("proj4", w, w, not pool_first)],
                                                     None, 2))
        qk = s < len(widths)
        setattr(m, f"stage{s}", nn.ModuleList(
            Block("tssa" if qk else ssa_name, (TokenQKAttention if qk else SpikingSelfAttention)(w, heads),
                  MLP(w, int(w * mlp_ratio), mlp_names)) for _ in range(n)))
    m.head = nn.Linear(dim, classes)
    return m


def official_forward(m, img, T):
    x = img if img.dim() == 5 else img.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    s = 1
    while hasattr(m, f"stage{s}"):
        x = getattr(m, f"patch_embed{s}")(x)
        for blk in getattr(m, f"stage{s}"):
            x = blk(x)
        s += 1
    return m.head(x.flatten(3).mean(3).mean(0))


def randomized(m, x, T):
    """Random BN affines, then running statistics of ``x`` (momentum 1): neurons fire depending on the input."""
    g = torch.Generator().manual_seed(0)
    for name, mod in m.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            # SSA's Q, K, V fire more, so that Q K^T V crosses 0.5 at a few tokens too
            beta = 1.3 if re.search(r"\.(ssa|attn)\.[qkv]_bn$", name) else 0.3
            mod.weight.data = torch.rand(mod.num_features, generator=g, dtype=mod.weight.dtype) + 0.5
            mod.bias.data = torch.rand(mod.num_features, generator=g, dtype=mod.bias.dtype) + beta
            mod.momentum = 1.0
    with torch.no_grad():
        official_forward(m.train(), x, T)
    return m.eval()


CASES = {  # name: (official layout, our overrides, input)
    "qkformer_4_384": ("cifar", dict(dim=64, depth=3, num_heads=4), (4, 3, 16, 16)),
    "qkformer_10_384": ("imagenet", dict(dim=64, depth=5, num_heads=4), (4, 3, 32, 32)),
    "qkformer_dvs_2_256": ("dvs", dict(dim=64, depth=2, num_heads=4, in_chans=2), (2, 4, 2, 32, 32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_converted_weights_compute_the_official_forward(name):
    layout, overrides, shape = CASES[name]
    T = 2
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    if x.dim() == 5:  # event frames: non-negative counts
        x = x.abs()
    ref = randomized(build_official(layout, overrides["dim"], overrides["depth"], 4, 5,
                                       in_ch=overrides.get("in_chans", 3), mlp_ratio=4).double(), x, T)
    state = ref.state_dict()
    assert official_qkformer.is_layout(state) and official.official_layout(state) == "qkformer"
    ours, notes = official_qkformer.convert(state)
    model = create_model(name, num_classes=5, T=T, mlp_ratio=4.0, **overrides).double().eval()
    assert not official_qkformer.is_layout(model.state_dict())
    model.load_state_dict(ours)  # strict: every tensor given, none left over
    n_attn = sum(k.endswith("_conv.weight") and (".tssa." in k or ".ssa." in k or ".attn." in k) for k in state)
    assert notes == [f"{n_attn} attention Conv1d weight(s) [out, in, 1] taken as 1x1 Conv2d weights"]
    masks = []
    hooks = [m.register_forward_hook(lambda m, i, o: masks.append(o.mean().item()))
             for n, m in model.named_modules() if n.endswith("sn_attn")]
    with torch.no_grad():
        got, want = model(x), official_forward(ref, x, T)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert all(0.02 < r < 0.98 for r in masks), masks  # the attention neurons depend on the input


def test_other_layouts_are_not_taken_and_unknown_keys_are_named():
    spikingformer_official = {"patch_embed.proj_conv.weight": torch.zeros(1), "block.0.attn.q_conv.weight":
                              torch.zeros(1), "block.0.mlp.mlp1_conv.weight": torch.zeros(1)}
    assert not official_qkformer.is_layout(spikingformer_official)
    state = build_official("cifar", 64, 3, 4, 5).state_dict()
    assert official_qkformer.is_layout(state)
    state["stage1.0.tssa.extra_conv.weight"] = torch.zeros(1)
    state["patch_embed2.proj9_conv.weight"] = torch.zeros(1)
    with pytest.raises(OfficialWeightsError, match=r"2 key\(s\).*stage1\.0\.tssa\.extra_conv\.weight.*proj9_conv"):
        official_qkformer.convert(state)
    assert official_qkformer.FAMILY == "qkformer_" and "zhouchenlin2096/QKFormer" in official_qkformer.SOURCE


def test_official_weights_load_through_the_users_route_and_only_into_qkformer(tmp_path):
    """``torch.save`` of the official state_dict, read by ``load_model`` (what eval, energy, verify and export use):
    the official forward, and a clear refusal for a model of another family."""
    layout, overrides, shape = CASES["qkformer_4_384"]
    x = torch.randn(*shape, dtype=torch.float64)
    ref = randomized(build_official(layout, overrides["dim"], overrides["depth"], 4, 5).double(), x, 2)
    torch.save(ref.state_dict(), tmp_path / "official.pth")
    model = load_model(str(tmp_path / "official.pth"), "qkformer_4_384", num_classes=5, T=2, **overrides).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(ref, x, 2), rtol=0, atol=1e-10)
    with pytest.raises(OfficialWeightsError, match="official qkformer weights, which fit qkformer\\*"):
        load_model(str(tmp_path / "official.pth"), "spikingformer_4_384", num_classes=5)
