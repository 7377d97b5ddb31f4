"""Spikingformer and Spikingformer-dagger (Spikingformer paper, Eq. 6-18; SPEC §4-5).

Spike-driven: every block branch starts with ``SN``, so every ConvBN after the encoding
conv sees spikes; the residual stream itself stays real-valued (MS residual, Eq. 5).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import Tensor, nn

from ..nn.layers import ClassifierHead, ConvBN, SeqMaxPool, run_blocks
from ..nn.neuron import MultiStepLIF
from ..utils.errors import InputError
from ._base import GradCheckpointing, SpikingVisionModel, build_config, check_sizes, to_ann
from ._blocks import Block, SpikingMLP, SpikingSelfAttention
from ._registry import Reported, register_model

__all__ = ["SpikingformerConfig", "SpikingTokenizer", "PSSA", "SMLP", "MSBlock", "Spikingformer"]


@dataclass(frozen=True)
class SpikingformerConfig:
    depth: int = 4
    dim: int = 384
    num_heads: int = 12
    mlp_ratio: float = 4.0
    in_chans: int = 3
    num_classes: int = 10
    img_size: int = 32
    T: int = 4
    tau: float = 2.0
    # One flag per tokenizer transition (stage i -> i+1): halve the resolution there.
    downsample: tuple[bool, bool, bool, bool] = (False, False, True, True)
    cml: bool = False  # Spikingformer-dagger: ConvBN-MaxPool-LIF instead of LIF-MaxPool-ConvBN
    head: str = "avgpool_fc"
    attn_scale: float = 0.125
    attn_threshold: float = 0.5
    ann: bool = False  # the ANN counterpart of the same body (models._base.to_ann): ReLU, softmax attention, T = 1

    def __post_init__(self):
        if self.dim < 8 or self.dim % 8:
            raise InputError(f"dim must be a positive multiple of 8 (the tokenizer starts at dim/8), got {self.dim}")
        check_sizes(self)
        if len(self.downsample) != 4:
            raise InputError(f"downsample needs 4 flags (one per tokenizer stage), got {self.downsample}")
        if self.T < 1 or self.depth < 1:
            raise InputError(f"T and depth must be >= 1, got T={self.T}, depth={self.depth}")


class SpikingTokenizer(GradCheckpointing, nn.Module):
    """Spiking Tokenizer (ST): five 3x3 ConvBNs, ``C_in -> D/8 -> D/4 -> D/2 -> D -> D``.

    Stage 0 is the encoding layer on the raw input.  Stages 1-4 are SPE (Eq. 10,
    ``ConvBN(SN(I))``) or, where ``downsample`` says so, SPED (Eq. 11,
    ``ConvBN(MP(SN(I)))``).  With ``cml=True`` (Spikingformer-dagger) the pool moves in
    front of the neuron, right after the previous ConvBN (ConvBN-MaxPool-LIF).
    Output: the real-valued residual stream ``[T, B, D, H/p, W/p]``.
    """

    def __init__(self, in_chans: int, dim: int, downsample=(False, False, True, True),
                 cml: bool = False, tau: float = 2.0):
        super().__init__()
        chans = [in_chans, dim // 8, dim // 4, dim // 2, dim, dim]
        self.cml = cml
        self.encode = ConvBN(chans[0], chans[1], 3, 1, 1)
        self.sn = nn.ModuleList(MultiStepLIF(tau) for _ in range(4))
        self.pool = nn.ModuleList(SeqMaxPool() if d else nn.Identity() for d in downsample)
        self.convs = nn.ModuleList(ConvBN(chans[i + 1], chans[i + 2], 3, 1, 1) for i in range(4))

    def stage(self, i: int, x: Tensor) -> Tensor:
        """SPE/SPED ``i`` (0-3)."""
        x = self.sn[i](self.pool[i](x)) if self.cml else self.pool[i](self.sn[i](x))
        return self.convs[i](x)

    def forward(self, x: Tensor) -> Tensor:
        stages = [functools.partial(self.stage, i) for i in range(4)]
        return run_blocks(stages, self.encode(x), checkpointing=self.grad_checkpointing, owner=self)


class PSSA(SpikingSelfAttention):
    """Pre-activation Spiking Self-Attention (Eq. 12-14).

    ``X' = SN(X)``; ``Q, K, V = SN(ConvBN(X'))`` with 1x1 convs; per head
    ``A = Q K^T V * s``; output ``ConvBN(SN_attn(A))`` with ``SN_attn`` at ``V_th = 0.5``.
    """

    synapse, pre_activation = ConvBN, True


class SMLP(SpikingMLP):
    """Spiking MLP: ``ConvBN_2(SN(ConvBN_1(SN(X))))`` with 1x1 convs and hidden ``4D``."""

    synapse, pre_activation = ConvBN, True


class MSBlock(Block):
    """Spiking Transformer block with MS residual (Eq. 7-8): ``X += PSSA(X)``; ``X += SMLP(X)``, both branches
    starting with ``SN``, so the stream stays real-valued and every ConvBN sees spikes."""

    attn_layer, mlp_layer = PSSA, SMLP


class Spikingformer(SpikingVisionModel):
    """Spikingformer (Eq. 6-9): tokenizer, ``depth`` MS blocks, one of the heads of Eq. 15-18."""

    def __init__(self, cfg: SpikingformerConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = 2 ** sum(map(bool, cfg.downsample))
        self.tokenizer = SpikingTokenizer(cfg.in_chans, cfg.dim, cfg.downsample, cfg.cml, cfg.tau)
        self.blocks = nn.ModuleList(
            MSBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.tau, cfg.attn_scale, cfg.attn_threshold)
            for _ in range(cfg.depth))
        self.head = ClassifierHead(cfg.dim, cfg.num_classes, cfg.head, cfg.tau)
        self.init_weights()
        if cfg.ann:
            to_ann(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = run_blocks(self.blocks, self.tokenizer(self.check_input(x)), checkpointing=self.grad_checkpointing)
        return x.flatten(3).transpose(2, 3)  # [T, B, N, D]


_CIFAR = dict(in_chans=3, num_classes=10, img_size=32, downsample=(False, False, True, True))
_IMAGENET = dict(in_chans=3, num_classes=1000, img_size=224, downsample=(True, True, True, True))
_DVS = dict(in_chans=2, num_classes=10, img_size=128, downsample=(True, True, True, True), tau=1.5, T=16)


def _create(defaults: dict, overrides: dict) -> Spikingformer:
    return Spikingformer(build_config(SpikingformerConfig, defaults, overrides))


def _imagenet(energy_mJ: float, top1: float, table: str = "Spikingformer Table 2") -> tuple[Reported, ...]:
    return (Reported(table, "ImageNet", 4, top1, energy_mJ),)


def _cifar(c10: float, c100: float, table: str = "Spikingformer Table 3") -> tuple[Reported, ...]:
    return Reported(table, "CIFAR-10", 4, c10), Reported(table, "CIFAR-100", 4, c100)


def _dvs(t10: tuple[float, float], t16: tuple[float, float], table: str = "Spikingformer Table 3") -> tuple:
    """DVS128 Gesture and CIFAR10-DVS top-1 at T = 10 and at T = 16 (Table 3 runs the one model at both)."""
    return tuple(Reported(table, data, t, top1) for t, pair in ((10, t10), (16, t16))
                 for data, top1 in zip(("DVS128 Gesture", "CIFAR10-DVS"), pair))


@register_model(paper_params_M=4.15)
def spikingformer_4_256(**kw):
    """CIFAR, 4.15M parameters."""
    return _create(dict(_CIFAR, depth=4, dim=256, num_heads=8), kw)


@register_model(paper_params_M=5.76, reported=_cifar(95.22, 78.34))
def spikingformer_2_384(**kw):
    """CIFAR, 5.76M parameters."""
    return _create(dict(_CIFAR, depth=2, dim=384, num_heads=12), kw)


@register_model(paper_params_M=9.32, reported=_cifar(95.81, 79.21))
def spikingformer_4_384(**kw):
    """CIFAR, 9.32M parameters (95.81 % CIFAR-10, 79.21 % CIFAR-100 in the paper)."""
    return _create(dict(_CIFAR, depth=4, dim=384, num_heads=12), kw)


@register_model(paper_params_M=16.81, reported=_imagenet(4.69, 72.45))
def spikingformer_8_384(**kw):
    """ImageNet, 16.81M parameters."""
    return _create(dict(_IMAGENET, depth=8, dim=384, num_heads=8), kw)


@register_model(paper_params_M=29.68, reported=_imagenet(7.46, 74.79))
def spikingformer_8_512(**kw):
    """ImageNet, 29.68M parameters (74.79 % top-1 in the paper)."""
    return _create(dict(_IMAGENET, depth=8, dim=512, num_heads=8), kw)


@register_model(paper_params_M=66.34, reported=_imagenet(13.68, 75.85))
def spikingformer_8_768(**kw):
    """ImageNet, 66.34M parameters (75.85 % top-1 in the paper); 8 heads, as the official ``imagenet.yml`` sets."""
    return _create(dict(_IMAGENET, depth=8, dim=768, num_heads=8), kw)


@register_model(paper_params_M=2.57, reported=_dvs((96.2, 79.9), (98.3, 81.3)))
def spikingformer_dvs_2_256(**kw):
    """DVS128 Gesture / CIFAR10-DVS at 128x128, 2.57M parameters, tau 1.5, T 16 (use 11 classes for Gesture)."""
    return _create(dict(_DVS, depth=2, dim=256, num_heads=16), kw)


@register_model(paper_params_M=5.76, reported=_cifar(95.54, 78.87))
def spikingformer_dagger_2_384(**kw):
    """Spikingformer-dagger (CML downsampling), CIFAR, 5.76M parameters."""
    return _create(dict(_CIFAR, depth=2, dim=384, num_heads=12, cml=True), kw)


@register_model(paper_params_M=9.32, reported=_cifar(95.95, 80.37))
def spikingformer_dagger_4_384(**kw):
    """Spikingformer-dagger (CML downsampling), CIFAR, 9.32M parameters."""
    return _create(dict(_CIFAR, depth=4, dim=384, num_heads=12, cml=True), kw)


@register_model(paper_params_M=16.81, reported=_imagenet(5.61, 74.35))
def spikingformer_dagger_8_384(**kw):
    """Spikingformer-dagger (CML downsampling), ImageNet, 16.81M parameters."""
    return _create(dict(_IMAGENET, depth=8, dim=384, num_heads=8, cml=True), kw)


@register_model(paper_params_M=29.68, reported=_imagenet(8.68, 76.54))
def spikingformer_dagger_8_512(**kw):
    """Spikingformer-dagger (CML downsampling), ImageNet, 29.68M parameters."""
    return _create(dict(_IMAGENET, depth=8, dim=512, num_heads=8, cml=True), kw)


@register_model(paper_params_M=66.34, reported=_imagenet(16.30, 77.64))
def spikingformer_dagger_8_768(**kw):
    """Spikingformer-dagger (CML downsampling), ImageNet, 66.34M parameters; 8 heads (official ``imagenet.yml``)."""
    return _create(dict(_IMAGENET, depth=8, dim=768, num_heads=8, cml=True), kw)


@register_model(paper_params_M=2.57, reported=_dvs((97.2, 80.5), (98.6, 81.4)))
def spikingformer_dagger_dvs_2_256(**kw):
    """Spikingformer-dagger for CIFAR10-DVS / DVS128 Gesture (Spikingformer-CML's ``cifar10-dvs`` and
    ``dvs128-gesture`` models): CML downsampling and tau 1.75, T 16, 2.57M parameters (11 classes for Gesture)."""
    return _create(dict(_DVS, depth=2, dim=256, num_heads=16, cml=True, tau=1.75), kw)
