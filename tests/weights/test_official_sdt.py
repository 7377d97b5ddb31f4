"""Official Spike-driven Transformer V1 weights load into ``sd_transformer_*`` and compute the official forward.

``Official`` below restates the official module tree (BICLab/Spike-Driven-Transformer ``module/sps.py``,
``module/ms_conv.py``, ``model/spikeformer.py``) in plain PyTorch, with its attribute names, its unused
``talking_heads`` conv, and a LIF written straight from SPEC §2; its ``state_dict()`` is the official layout.
In float64 every spike product is exact, so a converted model that differs in the least (a tensor in the
wrong place, a neuron or pool moved, the RPE shortcut taken elsewhere) gives other logits.
"""
import pytest
import torch
from torch import nn

from spikingformer import create_model, load_model
from spikingformer.weights import official_sdt
from spikingformer.weights.official import OfficialWeightsError

from .test_official import official_spikformer, official_spikingformer

pytestmark = pytest.mark.usefixtures("one_thread")


class LIF(nn.Module):
    def __init__(self, v_threshold=1.0, tau=2.0):
        super().__init__()
        self.v_threshold, self.tau = v_threshold, tau

    def forward(self, x):
        v, out = torch.zeros_like(x[0]), []
        for xt in x:
            h = v + (xt - v) / self.tau
            s = (h >= self.v_threshold).to(x.dtype)
            v = h * (1 - s)
            out.append(s)
        return torch.stack(out)


def _seq(fn, x):
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _conv_bn(owner, name, cin, cout, k=1, bias=False, suffix=""):
    setattr(owner, f"{name}_conv{suffix}", nn.Conv2d(cin, cout, k, 1, k // 2, bias=bias))
    setattr(owner, f"{name}_bn{suffix}", nn.BatchNorm2d(cout))
    return lambda z: _seq(lambda u: getattr(owner, f"{name}_bn{suffix}")(getattr(owner, f"{name}_conv{suffix}")(u)), z)


class MS_SPS(nn.Module):
    def __init__(self, cin, d, pooling_stat):
        super().__init__()
        ch = [cin, d // 8, d // 4, d // 2, d]
        self.pooling_stat = pooling_stat
        self.stages = [_conv_bn(self, "proj", ch[i], ch[i + 1], 3, suffix=str(i or "")) for i in range(4)]
        self.lifs = [LIF() for _ in range(3)]
        self.proj_lif, self.proj_lif1, self.proj_lif2 = self.lifs
        self.rpe = _conv_bn(self, "rpe", d, d, 3)
        self.proj_lif3, self.rpe_lif = LIF(), LIF()  # rpe_lif is built and never called: proj_lif3 feeds rpe_conv

    def forward(self, x):
        pool = lambda z: _seq(lambda u: nn.functional.max_pool2d(u, 3, 2, 1), z)
        for i in range(3):
            x = self.lifs[i](self.stages[i](x))
            x = pool(x) if self.pooling_stat[i] == "1" else x
        x_feat = self.stages[3](x)
        x_feat = pool(x_feat) if self.pooling_stat[3] == "1" else x_feat
        return self.rpe(self.proj_lif3(x_feat)) + x_feat


class MS_SSA_Conv(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = [_conv_bn(self, n, d, d) for n in "qkv"]
        self.q_lif, self.k_lif, self.v_lif = LIF(), LIF(), LIF()
        self.talking_heads = nn.Conv1d(heads, heads, 1, bias=False)  # built, never called
        self.talking_heads_lif = LIF(0.5)
        self.proj = _conv_bn(self, "proj", d, d, bias=True)
        self.shortcut_lif = LIF()

    def forward(self, x):
        t, b, c, h, w = x.shape
        xs = self.shortcut_lif(x)
        split = lambda s: s.flatten(3).transpose(-1, -2).reshape(t, b, h * w, self.heads, -1).permute(0, 1, 3, 2, 4)
        q, k, v = (split(lif(f(xs))) for f, lif in zip(self.qkv, (self.q_lif, self.k_lif, self.v_lif)))
        kv = self.talking_heads_lif(k.mul(v).sum(dim=-2, keepdim=True))
        return x + self.proj(q.mul(kv).transpose(3, 4).reshape(t, b, c, h, w))


class MS_MLP_Conv(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.fc2 = _conv_bn(self, "fc1", d, hidden, bias=True), _conv_bn(self, "fc2", hidden, d, bias=True)
        self.fc1_lif, self.fc2_lif = LIF(), LIF()

    def forward(self, x):
        return x + self.fc2(self.fc2_lif(self.fc1(self.fc1_lif(x))))


class MS_Block_Conv(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.attn, self.mlp = MS_SSA_Conv(d, heads), MS_MLP_Conv(d, 4 * d)

    def forward(self, x):
        return self.mlp(self.attn(x))


class Official(nn.Module):
    """``SpikeDrivenTransformer`` (eval): images repeated T times; token mean, ``head_lif``, ``head``, mean over T."""

    def __init__(self, cin, d, depth, heads, classes, pooling_stat, T):
        super().__init__()
        self.T = T
        self.patch_embed = MS_SPS(cin, d, pooling_stat)
        self.block = nn.ModuleList(MS_Block_Conv(d, heads) for _ in range(depth))
        self.head_lif = LIF()
        self.head = nn.Linear(d, classes)

    def forward_features(self, x):
        x = self.patch_embed(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))
        for blk in self.block:
            x = blk(x)
        return x

    def forward(self, x):
        return self.head(self.head_lif(self.forward_features(x).flatten(3).mean(3))).mean(0)


def official_model(cin=3, d=32, depth=2, heads=4, classes=5, pooling_stat="0011", T=2, img=None, beta=1.0):
    """Random weights, BN statistics of ``img`` (one train-mode pass at momentum 1), Q/K/V BN biases ``beta``
    (so that Q, K, V fire at some positions and ``talking_heads_lif`` at some columns and not others)."""
    torch.manual_seed(0)
    model = Official(cin, d, depth, heads, classes, pooling_stat, T).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 1.0, 0.5)
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(img)
    for name, p in model.named_parameters():
        if name.endswith(("q_bn.bias", "k_bn.bias", "v_bn.bias")):
            nn.init.constant_(p, beta)
    return model.eval()


def _kv_rates(model, img):
    rates = []
    hooks = [m.register_forward_hook(lambda m, i, o: rates.append(o.mean().item()))
             for n, m in model.named_modules() if n.endswith("sn_kv")]
    with torch.no_grad():
        logits = model(img)
    for h in hooks:
        h.remove()
    return logits, rates


@pytest.mark.parametrize("name,size,pools", [("sd_transformer_2_512", 32, "0011"), ("sd_transformer_8_512", 64, "1111"),
                                             ("sd_transformer_dvs_2_256", 64, "0111")])
def test_converted_weights_compute_the_official_forward(name, size, pools):
    cin = 2 if "dvs" in name else 3
    img = torch.randn(3, cin, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    official = official_model(cin=cin, pooling_stat=pools, img=img)
    state = official.state_dict()
    assert official_sdt.is_layout(state)
    ours, notes = official_sdt.convert(state)
    assert notes and "talking_heads" in notes[0]
    model = create_model(name, depth=2, dim=32, num_heads=4, num_classes=5, T=2).double().eval()
    model.load_state_dict(ours, strict=True)
    got, rates = _kv_rates(model, img)
    with torch.no_grad():
        torch.testing.assert_close(got, official(img), rtol=0, atol=1e-12)
        # the residual stream too: the head's neuron fires on token means, which small differences rarely flip
        stream = official.forward_features(img)
        torch.testing.assert_close(model.forward_features(img), stream.flatten(3).transpose(2, 3), rtol=0, atol=1e-12)
    assert all(0.02 < r < 0.98 for r in rates), rates  # the kv neuron depends on K and V


def test_layout_is_told_apart_from_ours_and_the_other_official_ones():
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    state = official_model(img=img).state_dict()
    assert official_sdt.is_layout(state)
    assert not official_sdt.is_layout(create_model("sd_transformer_2_512", dim=32, depth=1).state_dict())
    assert not official_sdt.is_layout(official_spikingformer(32, 2, 5))
    assert not official_sdt.is_layout(official_spikformer(32, 2, 5))
    # the same names as Spikformer V1's ImageNet model and the lifconvbn Spikingformer, once talking_heads is gone
    assert not official_sdt.is_layout({k: v for k, v in state.items() if "talking_heads" not in k})
    assert official_sdt.FAMILY == "sd_transformer_" and "BICLab/Spike-Driven-Transformer" in official_sdt.SOURCE


def test_unmapped_keys_are_named():
    state = official_model(img=torch.randn(2, 3, 32, 32, dtype=torch.float64)).state_dict()
    state["block.0.attn.q_lif.w"] = torch.tensor(0.0)  # a parametric LIF (--spike-mode plif)
    with pytest.raises(OfficialWeightsError, match=r"1 key\(s\).*block\.0\.attn\.q_lif\.w"):
        official_sdt.convert(state)


def test_official_weights_load_through_the_users_route_and_only_into_sd_transformer(tmp_path):
    """``torch.save`` of the official state_dict, read by ``load_model`` (what eval, energy, verify and export use):
    told from Spikformer V1's names by its talking_heads, the official forward, and a clear refusal elsewhere."""
    img = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    official = official_model(img=img)
    torch.save(official.state_dict(), tmp_path / "official.pth")
    model = load_model(str(tmp_path / "official.pth"), "sd_transformer_2_512", depth=2, dim=32, num_heads=4,
                       num_classes=5, T=2).double()
    with torch.no_grad():
        torch.testing.assert_close(model(img), official(img), rtol=0, atol=1e-12)
    with pytest.raises(OfficialWeightsError, match="official sd_transformer weights, which fit sd_transformer\\*"):
        load_model(str(tmp_path / "official.pth"), "spikformer_4_384", num_classes=5)
