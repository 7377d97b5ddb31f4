"""Spike-driven Transformer V1 (SD-Transformer; Yao et al., NeurIPS 2023), one of the baselines of the
Spikingformer paper's Tables 2-3.

Restated from the official code, BICLab/Spike-Driven-Transformer: ``module/sps.py`` (``MS_SPS``),
``module/ms_conv.py`` (``MS_SSA_Conv``, ``MS_MLP_Conv``, ``MS_Block_Conv``), ``model/spikeformer.py``
(``SpikeDrivenTransformer``, the timm model ``sdt``) and the sizes of ``conf/*/*.yml``.

Like Spikingformer it keeps a real-valued residual stream and starts every branch with a neuron (the membrane
shortcut, SD-Transformer's name for the MS residual), so every ConvBN after the encoding conv sees spikes.
What sets it apart is its attention, SDSA (the paper's SDSA-3, the only one the official code builds)::

    X_s = SN(X);  Q, K, V = SN(ConvBN(X_s))                          (1x1 convs, no bias)
    SDSA(X) = ConvBN_proj(Q * SN_kv(SUM_tokens(K * V)))             (SN_kv at V_th = 0.5)

Hadamard products and a column sum in place of ``Q K^T V``: linear in tokens and channels, no scale.
Each channel is its own: the head split is a reshape that changes nothing, except under ``erode`` (below).

Where we differ from the official modules, and why:

- ``MS_SSA_Conv.talking_heads`` (a ``Conv1d(heads, heads, 1)``) is built and never called, and its
  ``self.scale = 0.125`` never used: we build neither (SPEC §6: a layer built but unused is a defect).  That is
  ``heads^2`` parameters a block (64 for 8 heads) fewer than the official count.
- ``MS_MLP_Conv`` adds a second shortcut inside the MLP when the hidden width equals ``dim``
  (``mlp_ratio=1``); every official config uses 4 and we reject other ratios that would trigger it, so the MLP is
  exactly our pre-activation ``SMLP``.
- ``MS_SPS`` builds an ``rpe_lif`` it never calls; its ``proj_lif3`` is the neuron in front of ``rpe_conv``
  (our ``rpe_sn``).  Neurons hold no tensors, so this changes no weight.
- The official init draws conv weights from a truncated normal (std 0.02) and leaves the Linear head at
  PyTorch's default; ``init_weights`` does the same here.

``erode`` (the official ``dvs_mode``, which its train.py turns on for CIFAR10-DVS only) takes a 3x3 max (stride
1) of K and V over the feature map, and of ``K * V`` and ``Q * kv`` over (token, channel-in-head) as the
official ``nn.MaxPool3d((1, 3, 3))`` does on its ``[T, B, heads, N, d]`` tensors.  The max of spikes is a spike.

Energy.  The SD-Transformer paper (Table 1 and its supplement's "Energy Consumption Analysis Details"; the paper
is not in ../shared/papers, so this is from its public text as we read it) counts ``E = E_MAC FL_conv^1 +
E_AC T (sum_n fr_n FL_conv^n + sum_m fr_m FL_mlp^m)`` with 4.6 / 0.9 pJ, ``fr`` the firing rate of a layer's
input spikes and the first conv as MACs: Spikingformer's Eq. 19-20 for the synaptic layers.  It differs in
SDSA, whose Q-K-V operations it calls mask and sparse addition: the Hadamard products of spikes are masks, priced
at nothing, and only the column sum's additions, of order ``E_AC T fr N D``, are counted (hence its "87.2x lower
than vanilla self-attention"); the ``SN_kv`` neuron is no synapse.  Our probe (``analysis.tensor_ops``) prices all
three ops, each at the rate of its sparsest binary operand: ``k * v`` and ``q * kv`` as ``N D`` ACs each, the
``.sum(dim=-2)`` as ``N D`` ACs.  So our SDSA term is up to three times the paper's, and negligible either way
beside the 1x1 convs (``N D`` against ``N D^2`` each: 0.17 uJ of 8.8 mJ per image for the untrained 8-512).
The official repository publishes no per-layer firing rates or energy logs (its ``firing_num.py`` records the
spike tensors at evaluation time); the paper's supplement (Table S1) lists the firing rate of every spike tensor
of the 8-512.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn.layers import ClassifierHead, ConvBN, SeqMaxPool, run_blocks
from ..nn.neuron import MultiStepLIF
from ..utils.errors import InputError
from ._base import GradCheckpointing, SpikingVisionModel, build_config, check_sizes
from ._blocks import Block, _merge_heads, _split_heads
from ._registry import Reported, register_model
from .spikingformer import SMLP

__all__ = ["SDTransformerConfig", "MSSPS", "SDSA", "SDTBlock", "SDTransformer"]


@dataclass(frozen=True)
class SDTransformerConfig:
    depth: int = 2
    dim: int = 512
    num_heads: int = 8
    mlp_ratio: float = 4.0
    in_chans: int = 3
    num_classes: int = 10
    img_size: int = 32
    T: int = 4
    tau: float = 2.0
    # The official pooling_stat: one flag per MS_SPS stage, max-pool after that stage.
    downsample: tuple[bool, bool, bool, bool] = (False, False, True, True)
    head: str = "avgpool_sn_fc"
    attn_threshold: float = 0.5
    erode: bool = False  # the official dvs_mode (CIFAR10-DVS)

    def __post_init__(self):
        if self.dim < 8 or self.dim % 8:
            raise InputError(f"dim must be a positive multiple of 8 (the tokenizer starts at dim/8), got {self.dim}")
        check_sizes(self)
        if int(self.dim * self.mlp_ratio) == self.dim:
            raise InputError("mlp_ratio 1 would give the official MLP an inner shortcut that this model does not build")
        if len(self.downsample) != 4:
            raise InputError(f"downsample needs 4 flags (one per tokenizer stage), got {self.downsample}")
        if self.T < 1 or self.depth < 1:
            raise InputError(f"T and depth must be >= 1, got T={self.T}, depth={self.depth}")


def erode(x: Tensor) -> Tensor:
    """3x3 max (stride 1) over the last two axes, as the official ``Erode``'s ``MaxPool3d((1, 3, 3))``."""
    return torch.nn.functional.max_pool2d(x.flatten(0, -3), 3, 1, 1).view(x.shape)


class MSSPS(GradCheckpointing, nn.Module):
    """The official ``MS_SPS`` tokenizer: four 3x3 ConvBNs ``C_in -> D/8 -> D/4 -> D/2 -> D``, then the relative
    position embedding with a membrane shortcut.

    ``encode`` (on the raw input), then three stages ``SN -> [MaxPool] -> ConvBN``; the last ConvBN's output is
    max-pooled where ``downsample[3]`` says (real values, before any neuron) and becomes the stream ``X``,
    to which ``RPE = ConvBN_3x3(SN(X))`` is added: ``[T, B, D, H/p, W/p]``, real-valued.
    """

    def __init__(self, in_chans: int, dim: int, downsample=(False, False, True, True), tau: float = 2.0):
        super().__init__()
        chans = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        self.encode = ConvBN(chans[0], chans[1], 3, 1, 1)
        self.sn = nn.ModuleList(MultiStepLIF(tau) for _ in range(3))
        self.pool = nn.ModuleList(SeqMaxPool() if d else nn.Identity() for d in downsample)
        self.convs = nn.ModuleList(ConvBN(chans[i + 1], chans[i + 2], 3, 1, 1) for i in range(3))
        self.rpe_sn = MultiStepLIF(tau)
        self.rpe = ConvBN(dim, dim, 3, 1, 1)

    def stage(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i`` (0-2): ``ConvBN(MP(SN(x)))``."""
        return self.convs[i](self.pool[i](self.sn[i](x)))

    def forward(self, x: Tensor) -> Tensor:
        stages = [functools.partial(self.stage, i) for i in range(3)]
        x = self.pool[3](run_blocks(stages, self.encode(x), checkpointing=self.grad_checkpointing, owner=self))
        return x + self.rpe(self.rpe_sn(x))


class SDSA(nn.Module):
    """Spike-Driven Self-Attention (the official ``MS_SSA_Conv``, without its residual, which ``Block`` adds):
    ``ConvBN_proj(Q * SN_kv(SUM_tokens(K * V)))`` on ``Q, K, V = SN(ConvBN(SN(X)))`` (module docstring).

    ``Block`` hands every attention a ``scale``; SDSA has none (the official module sets one and never reads it),
    so it takes none: the argument is refused unless ``None``, which ``SDTBlock`` passes.
    """

    def __init__(self, dim: int, num_heads: int, tau: float = 2.0, scale: float | None = None,
                 attn_threshold: float = 0.5, erode: bool = False):
        super().__init__()
        if scale is not None:
            raise InputError(f"SDSA has no attention scale (Hadamard products and a column sum), got {scale}")
        self.num_heads = num_heads
        self.erode = erode
        self.sn_in = MultiStepLIF(tau)
        self.q, self.k, self.v = (ConvBN(dim, dim, bias=False) for _ in range(3))
        self.sn_q, self.sn_k, self.sn_v = (MultiStepLIF(tau) for _ in range(3))
        self.sn_kv = MultiStepLIF(tau, v_threshold=attn_threshold)
        self.proj = ConvBN(dim, dim, bias=True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            raise InputError("SDSA attends over image tokens; it takes no padding mask")
        xs = self.sn_in(x)
        q, k, v = self.sn_q(self.q(xs)), self.sn_k(self.k(xs)), self.sn_v(self.v(xs))
        if self.erode:
            k, v = erode(k), erode(v)
        q, k, v = (_split_heads(s, self.num_heads) for s in (q, k, v))  # [T, B, heads, N, d]
        kv = k * v
        if self.erode:
            kv = erode(kv)
        a = q * self.sn_kv(kv.sum(dim=-2, keepdim=True))
        if self.erode:
            a = erode(a)
        return self.proj(_merge_heads(a, xs))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, erode={self.erode}"


class SDTBlock(Block):
    """``MS_Block_Conv``: ``X += SDSA(X)``; ``X += SMLP(X)``, membrane shortcuts around pre-activation branches."""

    mlp_layer = SMLP

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, tau: float = 2.0,
                 attn_threshold: float = 0.5, erode: bool = False):
        super().__init__(dim, num_heads, mlp_ratio, tau, None, attn_threshold,
                         attn_layer=functools.partial(SDSA, erode=erode))


class SDTransformer(SpikingVisionModel):
    """Spike-driven Transformer: ``MS_SPS`` tokenizer, ``depth`` blocks, the official head
    ``FC(SN(AvgPool_tokens(X)))`` averaged over time (``ClassifierHead`` kind ``avgpool_sn_fc``)."""

    def __init__(self, cfg: SDTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = 2 ** sum(map(bool, cfg.downsample))
        self.tokenizer = MSSPS(cfg.in_chans, cfg.dim, cfg.downsample, cfg.tau)
        self.blocks = nn.ModuleList(
            SDTBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.tau, cfg.attn_threshold, cfg.erode)
            for _ in range(cfg.depth))
        self.head = ClassifierHead(cfg.dim, cfg.num_classes, cfg.head, cfg.tau)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = run_blocks(self.blocks, self.tokenizer(self.check_input(x)), checkpointing=self.grad_checkpointing)
        return x.flatten(3).transpose(2, 3)  # [T, B, N, D]

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        # As the official _init_weights: truncated-normal conv weights, zero conv biases, unit BN; Linear untouched.
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_CIFAR = dict(in_chans=3, num_classes=10, img_size=32, downsample=(False, False, True, True))
_IMAGENET = dict(in_chans=3, num_classes=1000, img_size=224, downsample=(True, True, True, True))
_GESTURE = dict(in_chans=2, num_classes=11, img_size=128, downsample=(False, True, True, True), T=16)
_T2, _T3 = "Spikingformer Table 2", "Spikingformer Table 3"


def _create(defaults: dict, overrides: dict) -> SDTransformer:
    return SDTransformer(build_config(SDTransformerConfig, defaults, overrides))


@register_model(paper_params_M=16.81, reported=(Reported(_T2, "ImageNet", 4, 72.28, 3.90),))
def sd_transformer_8_384(**kw):
    """ImageNet, 16.81M parameters, 8 heads (official ``conf/imagenet/8_384_300E_t4.yml``)."""
    return _create(dict(_IMAGENET, depth=8, dim=384, num_heads=8), kw)


@register_model(paper_params_M=29.68, reported=(Reported(_T2, "ImageNet", 4, 74.57, 4.50),))
def sd_transformer_8_512(**kw):
    """ImageNet, 29.68M parameters, 8 heads (official ``conf/imagenet/8_512_300E_t4.yml``)."""
    return _create(dict(_IMAGENET, depth=8, dim=512, num_heads=8), kw)


@register_model(paper_params_M=66.34,
                reported=(Reported(_T2, "ImageNet", 4, 77.07, 6.09, "trained at 224x224, tested at 288x288"),))
def sd_transformer_8_768(**kw):
    """ImageNet, 66.34M parameters, 8 heads (official ``conf/imagenet/8_768_300E_t4.yml``); its 77.07 % is
    measured at 288x288 (``img_size=288``: 18x18 tokens, the same weights)."""
    return _create(dict(_IMAGENET, depth=8, dim=768, num_heads=8), kw)


@register_model(paper_params_M=10.28,
                reported=(Reported(_T3, "CIFAR-10", 4, 95.60), Reported(_T3, "CIFAR-100", 4, 78.4)))
def sd_transformer_2_512(**kw):
    """CIFAR, 10.23M parameters (official ``conf/cifar10/2_512_300E_t4.yml``: pooling ``0011``, 8 heads).  The
    table's 10.28M is the CIFAR-100 model's count (``num_classes=100``: 10.2795M, 46,170 more in the head)."""
    return _create(dict(_CIFAR, depth=2, dim=512, num_heads=8), kw)


@register_model(paper_params_M=2.57, reported=(Reported(_T3, "DVS128 Gesture", 16, 99.3),
                                               Reported(_T3, "CIFAR10-DVS", 16, 80.0)))
def sd_transformer_dvs_2_256(**kw):
    """DVS128 Gesture at 128x128, T 16, 2.57M parameters (official ``conf/gesture/2_256_200E_t16.yml``: pooling
    ``0111``, 8 heads, 11 classes).  The official CIFAR10-DVS run differs in its options, not its weights:
    ``num_classes=10, img_size=64, downsample=(False, False, True, True), erode=True`` and T 10
    (``conf/cifar10-dvs/2_256_200E_t10_TET.yml``, trained with TET)."""
    return _create(dict(_GESTURE, depth=2, dim=256, num_heads=8), kw)
