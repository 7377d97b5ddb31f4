"""QKFormer: hierarchical spiking transformer with Q-K attention (Zhou et al., NeurIPS 2024).

Restated from the official code, zhouchenlin2096/QKFormer: ``cifar10/model.py`` (CIFAR, HST-4-384),
``imagenet/qkformer.py`` (HST-10-384/512/768) and ``cifar10-dvs/model.py`` / ``dvs128-gesture/model.py``
(HST-2-256).  The model is a pyramid of stages; stage ``i`` of ``n`` works at width ``D / 2^(n-1-i)``:

- stage 1 starts with the stem, a SPEDS (Spiking Patch Embedding with Deformed Shortcut) on the image; each
  later stage starts with a SPEDS that halves the resolution and doubles the width;
- the stages before the last hold Q-K attention blocks (QKTA, ``QKTokenAttention``), the last one SSA blocks
  (Spikformer's spiking self-attention ``Q K^T V * 0.125``, ``SSA``).  Every block is ``X += Attn(X)``;
  ``X += MLP(X)`` (``_blocks.Block``).

Where the neurons sit: post-activation, as in Spikformer.  Every synaptic layer is ``SN(BN(conv))`` and each
branch *ends* with a neuron, so the residual stream is a sum of spike maps (SEW-like): a SPEDS adds its
shortcut's spikes to its main path's (values {0, 1, 2}) and every block adds more.  Hence the layers reading
the stream (Q, K, V convs, the MLP's ``fc1``, each SPEDS's first conv and shortcut) see integers, not spikes;
the rest (Q-K attention's ``proj``, SSA's ``proj``, ``fc2``, the stem's later convs) see spikes.  The encoding
conv sees the image.  ``spikingformer verify`` names them.

Q-K token attention (QKTA): ``Q, K = SN(BN(W X))``; per head the token mask ``A_t = SN_attn(sum_c Q)``
(``SN_attn`` at ``V_th = 0.5``: at a first step, a token fires when any of the head's Q channels did) gates K:
``X' = SN(BN(W_proj (A_t * K)))``.  No V, no product of two matrices: additions and a mask, linear in the
tokens.  Q-K channel attention (QKCA) is its twin over channels (``A_c = SN_attn(sum_n Q)``); the paper
proposes it, the official models never use it (``qk_attention="channel"`` builds it).  Both are written as
bare ops (``q.sum``, ``mask * k``), which ``analysis.tensor_ops`` prices: the sum as ACs at Q's rate, the mask
as a Hadamard product of spikes.

Head: the official ``head(x.flatten(3).mean(3).mean(0))`` is ``FC(AvgPool(X))``, Eq. 15 (``avgpool_fc``).

Where ours differs from the official code: Conv1d + BatchNorm1d on flattened tokens (attention) become 1x1
Conv2d + BatchNorm2d on the map (the same numbers); SSA's unused ``qkv_mp`` pool (no weights) is not built;
SSA computes ``Q (K^T V)`` or ``(Q K^T) V``, whichever is cheaper (``SpikeQKV``), the official always
``Q (K^T V)``: the same integers.

Energy: the official repository ships no energy or firing-rate code or logs (its ``*_origin_log.txt`` and
``imagenet/logs/QKFormer_*.txt`` are training logs), and the paper's energy appendix was not at hand here.  Its
claim is that Q-K attention takes "only sparse additions and mask operations", i.e. AC-priced as Spikformer's
and Spikingformer's Eq. 19-20 price every layer but the encoding conv (``SOP = fr * T * FLOPs``, 0.9 / 4.6 pJ).
Where our count departs from that: the SEW-like stream makes the Q/K/V convs, ``fc1`` and each SPEDS's first
conv and shortcut read spike *counts* (up to the number of spike maps summed), and an integer times a weight is
no single AC; ``analysis.energy`` prices them as MACs (SPEC §7, as the Spikingformer paper's appendix reprices
Spikformer), so its figure for QKFormer exceeds one counted the Spikformer way (``integer_inputs="ac"`` gives
that one).  The Q-K mask's ``sum`` and ``mul`` are priced as ACs at Q's and the sparser operand's rate.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..nn.layers import ClassifierHead, ConvBN, SeqMaxPool, run_blocks
from ..nn.neuron import MultiStepLIF
from ..utils.errors import InputError
from ._base import GradCheckpointing, SpikingVisionModel, build_config, check_sizes
from ._blocks import Block, SpikingMLP, SpikingSelfAttention, _merge_heads, _split_heads, _synapse
from ._registry import Reported, register_model

__all__ = ["QKFormerConfig", "SPEDS", "QKTokenAttention", "QKChannelAttention", "SSA", "MLP", "QKBlock", "SSABlock",
           "HSTStage", "QKFormer", "EMBEDS"]

# The official repositories build three stems and two SPEDS flavours.  Per ``embed``: the stem's conv widths
# (divisors of stage 1's width d), where a 3x3 max-pool follows a conv, which layer's output the 1x1 shortcut
# starts from; then where the SPEDS of later stages pool (after their first or their second 3x3 conv).
EMBEDS = {
    "cifar": dict(widths=(2, 1), pools=(False, False), shortcut_from=0, stage_pools=(False, True)),
    "imagenet": dict(widths=(2, 1, 1), pools=(True, True, False), shortcut_from=0, stage_pools=(True, False)),
    "dvs": dict(widths=(8, 4, 2, 1), pools=(False, True, True, True), shortcut_from=1, stage_pools=(False, True)),
}


@dataclass(frozen=True)
class QKFormerConfig:
    depth: int = 4                      # blocks of all stages: the L of HST-L-D
    dim: int = 384                      # the last stage's width: the D of HST-L-D
    num_heads: int = 8                  # in every stage, as the official models
    mlp_ratio: float = 4.0
    in_chans: int = 3
    num_classes: int = 100
    img_size: int = 32
    T: int = 4
    tau: float = 2.0
    qk_depths: tuple[int, ...] = (1, 1)  # Q-K attention blocks of each stage before the last (SSA: the rest)
    embed: str = "cifar"                # stem and SPEDS layout: a key of EMBEDS
    qk_attention: str = "token"         # "token" (QKTA, the official models) or "channel" (QKCA)
    head: str = "avgpool_fc"
    attn_scale: float = 0.125
    attn_threshold: float = 0.5

    def __post_init__(self):
        check_sizes(self)
        if self.embed not in EMBEDS:
            raise InputError(f"unknown embed {self.embed!r}; valid: {', '.join(EMBEDS)}")
        if self.qk_attention not in ("token", "channel"):
            raise InputError(f"qk_attention must be 'token' or 'channel', got {self.qk_attention!r}")
        if self.T < 1 or min(self.qk_depths, default=1) < 1 or self.depth <= sum(self.qk_depths):
            raise InputError(f"T >= 1, each of qk_depths >= 1 and depth > sum(qk_depths) (the last stage needs an "
                             f"SSA block), got T={self.T}, depth={self.depth}, qk_depths={self.qk_depths}")
        unit = 2 ** len(self.qk_depths) * EMBEDS[self.embed]["widths"][0]
        if self.dim % unit or (self.dim >> len(self.qk_depths)) % self.num_heads:
            raise InputError(f"dim must be a multiple of {unit} (the stem's first width is dim / {unit}) and "
                             f"num_heads must divide stage 1's width, got dim={self.dim}, num_heads={self.num_heads}")


class _ConvSN(nn.Module):
    """``SN(MaxPool(BN(Conv(x))))`` (the pool where ``pool``): the unit every SPEDS is made of, in the official
    order (conv, BN, pool, LIF)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, pool: bool = False,
                 tau: float = 2.0):
        super().__init__()
        self.conv = ConvBN(in_ch, out_ch, kernel_size, stride, kernel_size // 2)
        self.pool = SeqMaxPool() if pool else nn.Identity()
        self.sn = MultiStepLIF(tau)

    def forward(self, x: Tensor) -> Tensor:
        return self.sn(self.pool(self.conv(x)))


class SPEDS(nn.Module):
    """Spiking Patch Embedding with Deformed Shortcut: 3x3 ``_ConvSN`` layers of ``widths``, plus a 1x1 strided
    ``_ConvSN`` shortcut from the output of layer ``shortcut_from`` (``-1``: the input) to the end; the two
    spike maps are added, so the output holds {0, 1, 2}."""

    def __init__(self, in_ch: int, widths: tuple[int, ...], pools: tuple[bool, ...], shortcut_from: int,
                 tau: float = 2.0):
        super().__init__()
        chans = (in_ch, *widths)
        self.shortcut_from = shortcut_from
        self.layers = nn.ModuleList(_ConvSN(chans[i], chans[i + 1], pool=p, tau=tau) for i, p in enumerate(pools))
        stride = 2 ** sum(pools[shortcut_from + 1:])
        self.shortcut = _ConvSN(chans[shortcut_from + 1], widths[-1], kernel_size=1, stride=stride, tau=tau)

    def forward(self, x: Tensor) -> Tensor:
        feat = x
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == self.shortcut_from:
                feat = x
        return x + self.shortcut(feat)


class QKTokenAttention(nn.Module):
    """Q-K token attention (QKTA): ``A_t = SN_attn(sum over each head's channels of Q)``, ``X' = A_t * K``,
    output ``SN(ConvBN(X'))``.  ``scale`` is taken for ``Block``'s sake: no product here is scaled."""

    reduce_dim = -1  # the head's channels of [T, B, heads, N, d]: one mask value per token

    def __init__(self, dim: int, num_heads: int, tau: float = 2.0, scale: float = 0.125,
                 attn_threshold: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k = ConvBN(dim, dim), ConvBN(dim, dim)
        self.sn_q, self.sn_k = MultiStepLIF(tau), MultiStepLIF(tau)
        self.sn_attn = MultiStepLIF(tau, v_threshold=attn_threshold)
        self.proj = ConvBN(dim, dim, bias=True)
        self.sn_proj = MultiStepLIF(tau)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q = _split_heads(self.sn_q(_synapse(self.q, x, mask)), self.num_heads)
        k = _split_heads(self.sn_k(_synapse(self.k, x, mask)), self.num_heads)
        attn = self.sn_attn(q.sum(dim=self.reduce_dim, keepdim=True))
        return self.sn_proj(_synapse(self.proj, _merge_heads(attn * k, x), mask))


class QKChannelAttention(QKTokenAttention):
    """Q-K channel attention (QKCA): ``A_c = SN_attn(sum over tokens of Q)``, one mask value per channel."""

    reduce_dim = -2


class SSA(SpikingSelfAttention):
    """Spiking self-attention of the last stage: ``SN(ConvBN(.))`` Q, K, V, ``Q K^T V * 0.125``, ``SN_attn`` at
    0.5, ``SN(ConvBN(.))`` projection (post-activation, as Spikformer's)."""

    synapse, pre_activation = ConvBN, False


class MLP(SpikingMLP):
    """``SN(ConvBN_2(SN(ConvBN_1(X))))`` with 1x1 convs (post-activation)."""

    synapse, pre_activation = ConvBN, False


class QKBlock(Block):
    """``X += QKTA(X)``; ``X += MLP(X)`` (the official ``TokenSpikingTransformer``)."""

    attn_layer, mlp_layer = QKTokenAttention, MLP


class SSABlock(Block):
    """``X += SSA(X)``; ``X += MLP(X)`` (the official ``SpikingTransformer``)."""

    attn_layer, mlp_layer = SSA, MLP


class HSTStage(GradCheckpointing, nn.Module):
    """One stage of the hierarchy: its patch embedding ``embed`` (a SPEDS), then its ``blocks``."""

    def __init__(self, embed: SPEDS, blocks: list[Block]):
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return run_blocks(self.blocks, self.embed(x), checkpointing=self.grad_checkpointing)


def _stages(cfg: QKFormerConfig) -> list[HSTStage]:
    """The stem stage, then one stage per halving: widths ``D / 2^(n-1-i)``, QK blocks, then SSA blocks."""
    spec = EMBEDS[cfg.embed]
    n = len(cfg.qk_depths) + 1
    widths = [cfg.dim >> (n - 1 - i) for i in range(n)]
    depths = [*cfg.qk_depths, cfg.depth - sum(cfg.qk_depths)]
    qk_attn = QKChannelAttention if cfg.qk_attention == "channel" else QKTokenAttention
    stages = []
    for i, (width, depth) in enumerate(zip(widths, depths)):
        if i == 0:
            embed = SPEDS(cfg.in_chans, tuple(width // w for w in spec["widths"]), spec["pools"],
                          spec["shortcut_from"], cfg.tau)
        else:
            embed = SPEDS(widths[i - 1], (width, width), spec["stage_pools"], -1, cfg.tau)
        block, attn = (SSABlock, None) if i == n - 1 else (QKBlock, qk_attn)
        stages.append(HSTStage(embed, [block(width, cfg.num_heads, cfg.mlp_ratio, cfg.tau, cfg.attn_scale,
                                             cfg.attn_threshold, attn_layer=attn) for _ in range(depth)]))
    return stages


class QKFormer(SpikingVisionModel):
    """QKFormer (HST-L-D): ``stages`` (stage 0's ``embed`` is the stem), then the head of Eq. 15.
    ``forward_features`` returns the last stage's tokens ``[T, B, N, D]``."""

    def __init__(self, cfg: QKFormerConfig):
        super().__init__()
        self.cfg = cfg
        spec = EMBEDS[cfg.embed]
        self.patch_size = 2 ** (sum(spec["pools"]) + len(cfg.qk_depths))
        self.stages = nn.ModuleList(_stages(cfg))
        self.head = ClassifierHead(cfg.dim, cfg.num_classes, cfg.head, cfg.tau)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        for stage in self.stages:
            x = stage(x)
        return x.flatten(3).transpose(2, 3)

    def group_matcher(self, coarse: bool = False) -> dict:
        """The stem, then each later stage's SPEDS and each block, bottom to top (``stages.i.blocks.j``)."""
        return dict(stem=r"^stages\.0\.embed\.",
                    blocks=[(r"^stages\.(\d+)\.embed\.", None), (r"^stages\.(\d+)\.blocks\.(\d+)\.", None)])


def _create(defaults: dict, overrides: dict) -> QKFormer:
    return QKFormer(build_config(QKFormerConfig, defaults, overrides))


_CIFAR = dict(in_chans=3, num_classes=100, img_size=32, T=4, embed="cifar", qk_depths=(1, 1), num_heads=8)
_IMAGENET = dict(in_chans=3, num_classes=1000, img_size=224, T=4, embed="imagenet", qk_depths=(1, 2))
_DVS = dict(in_chans=2, num_classes=10, img_size=128, T=16, embed="dvs", qk_depths=(1,), num_heads=16)


def _imagenet(top1: float, *more: Reported) -> tuple[Reported, ...]:
    return (Reported("QKFormer README", "ImageNet", 4, top1, note="224x224"), *more)


@register_model(paper_params_M=6.74, reported=(Reported("Spikingformer Table 3", "CIFAR-10", 4, 96.18),
                                               Reported("Spikingformer Table 3", "CIFAR-100", 4, 81.15)))
def qkformer_4_384(**kw):
    """HST-4-384 for CIFAR (official ``cifar10.yml``: 4 blocks, dim 384, 8 heads, T 4): 6.74M parameters with
    CIFAR-100's 100 classes, the count of the table; with 10 classes (``num_classes=10``) 6,706,234, the count
    the official ``cifar10/cifar10_origin_log.txt`` prints."""
    return _create(dict(_CIFAR, depth=4, dim=384), kw)


@register_model(paper_params_M=1.50, reported=(Reported("Spikingformer Table 3", "DVS128 Gesture", 16, 98.6),
                                               Reported("Spikingformer Table 3", "CIFAR10-DVS", 16, 84.0)))
def qkformer_dvs_2_256(**kw):
    """HST-2-256 for event data at 128x128, 16 heads, MLP ratio 1, T 16: the official ``cifar10-dvs/model.py``,
    1.50M parameters.  The official ``dvs128-gesture/model.py`` builds the same with MLP ratio 4 and 11
    classes (2.00M, not the 1.50M the table gives for both): ``mlp_ratio=4, num_classes=11``."""
    return _create(dict(_DVS, depth=2, dim=256, mlp_ratio=1.0), kw)


@register_model(paper_params_M=16.47, reported=_imagenet(78.80))
def qkformer_10_384(**kw):
    """HST-10-384 for ImageNet, 6 heads: 16.47M parameters (78.80 % top-1 at T 4 in the README)."""
    return _create(dict(_IMAGENET, depth=10, dim=384, num_heads=6), kw)


@register_model(paper_params_M=29.08, reported=_imagenet(82.04))
def qkformer_10_512(**kw):
    """HST-10-512 for ImageNet, 8 heads: 29.08M parameters (82.04 % top-1 at T 4 in the README)."""
    return _create(dict(_IMAGENET, depth=10, dim=512, num_heads=8), kw)


@register_model(paper_params_M=64.96, reported=_imagenet(
        84.22, Reported("QKFormer README", "ImageNet", 4, 85.25, note="288x288"),
        Reported("QKFormer README", "ImageNet", 4, 85.65, note="384x384")))
def qkformer_10_768(**kw):
    """HST-10-768 for ImageNet, 12 heads: 64.96M parameters (84.22 % top-1 at 224, 85.65 % at 384 in the README)."""
    return _create(dict(_IMAGENET, depth=10, dim=768, num_heads=12), kw)
