"""Spikformer V1 and V2: the SEW-residual baselines Spikingformer is measured against (SPEC §5).

Their attention and MLP branches *end* with ``SN``, so the residual sums spikes into
integers {0, 1, 2, ...} and the next block's Linear layers multiply integers with
weights: not spike-driven.  That is the property Spikingformer fixes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import Tensor, nn

from ..nn.layers import ClassifierHead, ConvBN, LinearBN, SeqMaxPool, run_blocks
from ..nn.neuron import MultiStepLIF
from ..utils.errors import InputError
from ._base import GradCheckpointing, SpikingVisionModel, build_config, check_sizes, to_ann
from ._blocks import Block, SpikingMLP, SpikingSelfAttention
from ._registry import Reported, register_model

__all__ = ["SpikformerConfig", "SPS", "SCS", "SSA", "MLP", "SEWBlock", "Spikformer"]


@dataclass(frozen=True)
class SpikformerConfig:
    depth: int = 4
    dim: int = 384
    num_heads: int = 12
    mlp_ratio: float = 4.0
    in_chans: int = 3
    num_classes: int = 10
    img_size: int = 32
    T: int = 4
    tau: float = 2.0
    stem: str = "sps"  # "sps" (V1: Spiking Patch Splitting + RPE) or "scs" (V2: Spiking Convolutional Stem)
    # SPS only: one flag per SPS stage, max-pool after that stage's neuron.
    downsample: tuple[bool, bool, bool, bool] = (False, False, True, True)
    cml: bool = False  # SPS only: ConvBN-MaxPool-LIF stages (Spikingformer-CML's Spikformer), not ConvBN-LIF-MaxPool
    scs_expansion: int = 4
    head: str = "avgpool_fc"
    attn_scale: float = 0.125
    attn_threshold: float = 0.5
    ann: bool = False  # the ANN counterpart of the same body (models._base.to_ann): ReLU, softmax attention, T = 1

    def __post_init__(self):
        if self.stem not in ("sps", "scs"):
            raise InputError(f"unknown stem {self.stem!r}; valid stems: sps, scs")
        if self.cml and self.stem != "sps":
            raise InputError("cml moves the max-pools of the SPS stem; the scs stem has none (stride-2 convs)")
        if self.dim < 8 or self.dim % 8:
            raise InputError(f"dim must be a positive multiple of 8 (the stem starts at dim/8), got {self.dim}")
        check_sizes(self)
        if len(self.downsample) != 4:
            raise InputError(f"downsample needs 4 flags (one per SPS stage), got {self.downsample}")
        if self.T < 1 or self.depth < 1:
            raise InputError(f"T and depth must be >= 1, got T={self.T}, depth={self.depth}")


class SPS(GradCheckpointing, nn.Module):
    """Spiking Patch Splitting (Spikformer V1): four ``ConvBN -> SN -> [MaxPool]`` stages with
    channels ``D/8, D/4, D/2, D``, then the relative position embedding
    ``RPE = SN(ConvBN_3x3(x))`` added to ``x``.  Output ``[T, B, D, h, w]`` in {0, 1, 2}.
    With ``cml=True`` each stage is ``ConvBN -> [MaxPool] -> SN`` (the Spikingformer-CML repository's
    ``cifar10/CML_Spikformer.py``): the pool sees the real-valued ConvBN output, and the neuron its maxima."""

    def __init__(self, in_chans: int, dim: int, downsample=(False, False, True, True), tau: float = 2.0,
                 cml: bool = False):
        super().__init__()
        chans = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        self.cml = cml
        self.convs = nn.ModuleList(ConvBN(chans[i], chans[i + 1], 3, 1, 1) for i in range(4))
        self.sn = nn.ModuleList(MultiStepLIF(tau) for _ in range(4))
        self.pool = nn.ModuleList(SeqMaxPool() if d else nn.Identity() for d in downsample)
        self.rpe = ConvBN(dim, dim, 3, 1, 1)
        self.rpe_sn = MultiStepLIF(tau)

    def stage(self, i: int, x: Tensor) -> Tensor:
        x = self.convs[i](x)
        return self.sn[i](self.pool[i](x)) if self.cml else self.pool[i](self.sn[i](x))

    def forward(self, x: Tensor) -> Tensor:
        stages = [functools.partial(self.stage, i) for i in range(4)]
        x = run_blocks(stages, x, checkpointing=self.grad_checkpointing, owner=self)
        return x + self.rpe_sn(self.rpe(x))


class SCS(GradCheckpointing, nn.Module):
    """Spiking Convolutional Stem (Spikformer V2 §4.1): four blocks, each a stride-2 2x2
    ConvBN that halves the resolution, then an MLP-like pair of 3x3 ConvBNs (expand by
    ``expansion``, then back), with channels ``D/8, D/4, D/2, D`` and a neuron before every
    conv but the first.  It ends with ``SN``, so it hands spike tokens to the blocks.
    We add no residual inside the pair: the paper draws none and the counts of SPEC §6
    are reproduced without one."""

    def __init__(self, in_chans: int, dim: int, expansion: int = 4, tau: float = 2.0):
        super().__init__()
        chans = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        layers: list[nn.Module] = []
        for i in range(4):
            c = chans[i + 1]
            if i > 0:
                layers.append(MultiStepLIF(tau))
            layers += [ConvBN(chans[i], c, 2, 2, 0), MultiStepLIF(tau),
                       ConvBN(c, c * expansion, 3, 1, 1), MultiStepLIF(tau),
                       ConvBN(c * expansion, c, 3, 1, 1)]
        layers.append(MultiStepLIF(tau))
        self.layers = nn.Sequential(*layers)
        # What set_grad_checkpointing recomputes at once: each conv with the neuron after it, not a whole stage,
        # whose convs at the first stage's resolution hold most of the activations (benchmarks/memory.py, CPU,
        # a step's peak against plain: spikformer_v2_8_384 at batch 2, 0.43 where whole stages gave 0.47)
        self.segments = tuple((a, a + 2) for a in range(0, len(layers), 2))

    def forward(self, x: Tensor) -> Tensor:
        segments = [self.layers[a:b] for a, b in self.segments]
        return run_blocks(segments, x, checkpointing=self.grad_checkpointing, owner=self)


class SSA(SpikingSelfAttention):
    """Spiking Self-Attention, post-activation: ``Q = SN(BN(Linear(X)))`` (same for K, V), per head
    ``Q K^T V * s``, output ``SN(BN(Linear(SN_attn(.))))`` (ends with a neuron)."""

    synapse, pre_activation = LinearBN, False


class MLP(SpikingMLP):
    """Spikformer MLP, post-activation: ``SN(BN(Linear(SN(BN(Linear(X))))))`` with hidden ``4D``."""

    synapse, pre_activation = LinearBN, False


class SEWBlock(Block):
    """Spikformer encoder block with SEW residual (Eq. 4): ``X += SSA(X)``; ``X += MLP(X)``, both branches
    ending with ``SN``, so spikes are added to the stream."""

    attn_layer, mlp_layer = SSA, MLP


class Spikformer(SpikingVisionModel):
    """Spikformer V1 (``stem="sps"``) or V2 (``stem="scs"``): stem, ``depth`` SEW blocks, head."""

    def __init__(self, cfg: SpikformerConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.stem == "sps":
            self.patch_size = 2 ** sum(map(bool, cfg.downsample))
            self.stem = SPS(cfg.in_chans, cfg.dim, cfg.downsample, cfg.tau, cfg.cml)
        else:
            self.patch_size = 16
            self.stem = SCS(cfg.in_chans, cfg.dim, cfg.scs_expansion, cfg.tau)
        self.blocks = nn.ModuleList(
            SEWBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.tau, cfg.attn_scale, cfg.attn_threshold)
            for _ in range(cfg.depth))
        self.head = ClassifierHead(cfg.dim, cfg.num_classes, cfg.head, cfg.tau)
        self.init_weights()
        if cfg.ann:
            to_ann(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(self.check_input(x)).flatten(3).transpose(2, 3)  # [T, B, N, D]
        return run_blocks(self.blocks, x, checkpointing=self.grad_checkpointing)


_CIFAR = dict(in_chans=3, num_classes=10, img_size=32, downsample=(False, False, True, True))
_IMAGENET = dict(in_chans=3, num_classes=1000, img_size=224, downsample=(True, True, True, True))
_DVS = dict(in_chans=2, num_classes=10, img_size=128, downsample=(True, True, True, True), T=16)
_V2 = dict(in_chans=3, num_classes=1000, img_size=224, stem="scs")
_V2_TABLE = "Spikformer V2 Table 2"
_SSL = "Spikformer V2 Table 3, MAE pre-training + fine-tuning"


def _create(defaults: dict, overrides: dict) -> Spikformer:
    return Spikformer(build_config(SpikformerConfig, defaults, overrides))


def _v1(data: dict[str, float], T: int = 4, energy_mJ: float | None = None) -> tuple[Reported, ...]:
    """Spikformer V1's results as the Spikingformer paper's Table 2 (ImageNet) or Table 3 (the rest) gives them."""
    table = "Spikingformer Table 2" if "ImageNet" in data else "Spikingformer Table 3"
    return tuple(Reported(table, d, T, top1, energy_mJ) for d, top1 in data.items())


def _v2(*rows: tuple[str, int, float, float]) -> tuple[Reported, ...]:
    """``(table, T, top-1, mJ)`` rows of the Spikformer V2 paper (ImageNet)."""
    return tuple(Reported(table, "ImageNet", t, top1, mj) for table, t, top1, mj in rows)


@register_model(paper_params_M=5.76, reported=_v1({"CIFAR-10": 94.80, "CIFAR-100": 76.95}))
def spikformer_2_384(**kw):
    """Spikformer V1, CIFAR, 5.76M parameters."""
    return _create(dict(_CIFAR, depth=2, dim=384, num_heads=12), kw)


@register_model(paper_params_M=9.32, reported=_v1({"CIFAR-10": 95.51, "CIFAR-100": 78.21}))
def spikformer_4_384(**kw):
    """Spikformer V1, CIFAR, 9.32M parameters."""
    return _create(dict(_CIFAR, depth=4, dim=384, num_heads=12), kw)


@register_model(paper_params_M=9.32)
def spikformer_dagger_4_384(**kw):
    """Spikformer V1 with CML downsampling (Spikingformer-CML's ``cifar10/CML_Spikformer.py``), CIFAR, 9.32M
    parameters."""
    return _create(dict(_CIFAR, depth=4, dim=384, num_heads=12, cml=True), kw)


@register_model(paper_params_M=2.57, reported=(*_v1({"DVS128 Gesture": 95.8, "CIFAR10-DVS": 78.6}, T=10),
                                               *_v1({"DVS128 Gesture": 97.9, "CIFAR10-DVS": 80.9}, T=16)))
def spikformer_dvs_2_256(**kw):
    """Spikformer V1 for DVS128 Gesture / CIFAR10-DVS at 128x128 (ZK-Zhou/spikformer's ``cifar10dvs`` model:
    four pooled SPS stages, 16 heads), T 16, 2.57M parameters (11 classes for Gesture)."""
    return _create(dict(_DVS, depth=2, dim=256, num_heads=16), kw)


@register_model(paper_params_M=16.81, reported=_v1({"ImageNet": 70.24}, energy_mJ=12.43))
def spikformer_8_384(**kw):
    """Spikformer V1, ImageNet, 16.81M parameters."""
    return _create(dict(_IMAGENET, depth=8, dim=384, num_heads=12), kw)


@register_model(paper_params_M=29.68, reported=_v1({"ImageNet": 73.38}, energy_mJ=18.82))
def spikformer_8_512(**kw):
    """Spikformer V1, ImageNet, 29.68M parameters."""
    return _create(dict(_IMAGENET, depth=8, dim=512, num_heads=8), kw)


@register_model(paper_params_M=66.34, reported=_v1({"ImageNet": 74.81}, energy_mJ=32.07))
def spikformer_8_768(**kw):
    """Spikformer V1, ImageNet, 66.34M parameters."""
    return _create(dict(_IMAGENET, depth=8, dim=768, num_heads=12), kw)


# The V2 paper's Table 2 labels its T = 4 row of 29.11M "V2-8-512"; 29.11M is the 8-384 (51.55M is the 8-512).
@register_model(paper_params_M=29.11, reported=_v2((_V2_TABLE, 1, 75.42, 1.728), (_V2_TABLE, 4, 78.80, 4.689)))
def spikformer_v2_8_384(**kw):
    """Spikformer V2 (SCS stem), ImageNet, 29.11M parameters."""
    return _create(dict(_V2, depth=8, dim=384, num_heads=8), kw)


@register_model(paper_params_M=51.55, reported=_v2((_V2_TABLE, 1, 79.05, 2.835), (_V2_TABLE, 4, 80.38, 9.360)))
def spikformer_v2_8_512(**kw):
    """Spikformer V2 (SCS stem), ImageNet, 51.55M parameters (80.38 % at T=4 in the paper)."""
    return _create(dict(_V2, depth=8, dim=512, num_heads=8), kw)


@register_model(paper_params_M=64.18, reported=_v2(("Spikformer V2 Table 3", 1, 78.65, 3.735), (_SSL, 1, 79.64, 3.609),
                                                   (_SSL, 4, 81.17, 14.680)))
def spikformer_v2_12_512(**kw):
    """Spikformer V2 (SCS stem), ImageNet, 64.18M parameters."""
    return _create(dict(_V2, depth=12, dim=512, num_heads=8), kw)


@register_model(paper_params_M=143.89, reported=_v2(("Spikformer V2 Table 3", 1, 76.61, 5.715),
                                                    (_SSL, 1, 80.49, 5.760), (_SSL, 4, 81.94, 17.970)))
def spikformer_v2_12_768(**kw):
    """Spikformer V2 (SCS stem), ImageNet, 143.89M parameters."""
    return _create(dict(_V2, depth=12, dim=768, num_heads=12), kw)


@register_model(paper_params_M=172.28, reported=_v2(("Spikformer V2 Table 3", 1, 77.43, 6.876),
                                                    (_SSL, 1, 81.10, 6.732), (_SSL, 4, 82.35, 25.578)))
def spikformer_v2_16_768(**kw):
    """Spikformer V2 (SCS stem), ImageNet, 172.28M parameters (81.10 % at T=1 after MAE pre-training)."""
    return _create(dict(_V2, depth=16, dim=768, num_heads=12), kw)


@register_model(paper_params_M=9.32, reported=(Reported("Spikingformer Table 3", "CIFAR-10", 1, 96.73),
                                               Reported("Spikingformer Table 3", "CIFAR-100", 1, 81.02)))
def transformer_4_384(**kw):
    """Transformer (ANN), CIFAR, 9.32M parameters: ``spikformer_4_384`` with ``ann=True`` (ReLU, softmax
    attention, T = 1; ``to_ann``), the ANN row Spikformer and Spikingformer compare against."""
    return _create(dict(_CIFAR, depth=4, dim=384, num_heads=12, ann=True, T=1), kw)


@register_model(paper_params_M=29.68, reported=(Reported("Spikingformer Table 2", "ImageNet", 1, 80.80, 38.34),))
def transformer_8_512(**kw):
    """Transformer-8-512 (ANN), ImageNet, 29.68M parameters: ``spikformer_8_512`` with ``ann=True`` (ReLU, softmax
    attention, T = 1; ``to_ann``)."""
    return _create(dict(_IMAGENET, depth=8, dim=512, num_heads=8, ann=True, T=1), kw)
