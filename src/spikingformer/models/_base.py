"""What every model family shares: input checks, direct encoding, forward split, init."""
from __future__ import annotations

import dataclasses
import typing

import torch
from torch import Tensor, nn

from ..nn.layers import ClassifierHead, SoftmaxQKV, SpikeQKV
from ..nn.neuron import MultiStepLIF
from ..utils.coerce import CoercionError, coerce
from ..utils.errors import InputError, OptionError
from ._blocks import SpikingSelfAttention


def _coerce(hint, value):
    """``value`` as the plain Python type ``hint`` of a config field, or ``None`` if it is not one
    (``utils.coerce``: any integer for ``int``, NumPy's too, any real for ``float``, ``bool`` or 0/1 for
    ``bool``, a list or tuple of the right length for a fixed tuple, as YAML has no tuples, and instances
    for the rest)."""
    try:
        return coerce(hint, value)
    except CoercionError:
        return None


def build_config(cls, defaults: dict, overrides: dict):
    """Make a config dataclass from a named size's ``defaults`` and a user's ``overrides``.

    Unknown keys raise a ``TypeError`` that lists every valid key, instead of the
    dataclass's terse message; a value of the wrong type one that names the option.
    """
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise OptionError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    typed = {}
    for key, value in overrides.items():
        typed[key] = _coerce(hints[key], value)
        if typed[key] is None:
            name = getattr(hints[key], "__name__", None) if typing.get_origin(hints[key]) is None else None
            raise OptionError(f"{cls.__name__} option {key!r} expects {name or hints[key]}, got {value!r}")
    if typed.get("ann") and "T" not in typed:  # an ANN has no time: ann=True alone is the whole switch
        typed["T"] = 1
    return cls(**{**defaults, **typed})


def to_ann(model: nn.Module) -> nn.Module:
    """Make ``model`` (a spiking body) the ANN Transformer of the papers' comparison rows (Spikingformer Tables
    2-3, "Transformer (ANN)", from Spikformer's): the same layers and parameters, every neuron a ``ReLU`` but the
    attention's, whose ``Q``, ``K``, ``V`` and output stay real, and vanilla attention ``Softmax(Q K^T / sqrt(d)) V``
    (``SoftmaxQKV``, Spikformer V2 Eq. 9) for ``SpikeQKV``.  Run at ``T = 1``, every synaptic layer sees real
    values, so the energy estimate prices it all as MACs, as the papers do for an ANN."""
    for parent in list(model.modules()):
        in_attention = isinstance(parent, SpikingSelfAttention)
        for name, child in parent.named_children():
            if isinstance(child, SpikeQKV):
                setattr(parent, name, SoftmaxQKV())
            elif isinstance(child, MultiStepLIF):
                setattr(parent, name, nn.Identity() if in_attention else nn.ReLU())
    return model


def check_sizes(cfg) -> None:
    """What every vision family's config needs to build a model (raised as it is built, not at its first
    forward): heads that divide ``dim``, an MLP of at least one unit, channels and classes to connect."""
    if cfg.num_heads < 1 or cfg.dim % cfg.num_heads:
        raise InputError(f"num_heads must be >= 1 and divide dim {cfg.dim}, got {cfg.num_heads}")
    if int(cfg.dim * cfg.mlp_ratio) < 1:
        raise InputError(f"mlp_ratio {cfg.mlp_ratio} leaves the MLP of dim {cfg.dim} no hidden unit")
    if getattr(cfg, "ann", False) and cfg.T != 1:
        raise InputError(f"ann=True builds an ANN, which has no time steps: T must be 1, got T={cfg.T} (from a recipe's "
                         "model_args: --set model_args.T=1)")
    if cfg.in_chans < 1 or cfg.num_classes < 0:
        raise InputError(f"in_chans must be >= 1 and num_classes >= 0 (0: no classifier), got in_chans="
                         f"{cfg.in_chans}, num_classes={cfg.num_classes}")


class GradCheckpointing:
    """timm's switch, for a model and its stem, which run their blocks or stages through ``layers.run_blocks``."""

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's (and each stem stage's) activations in the backward pass instead of
        keeping them: less memory for one more forward per step, the same gradients and BatchNorm statistics."""
        for m in self.modules():
            if isinstance(m, GradCheckpointing):
                m.grad_checkpointing = enable


class SpikingVisionModel(GradCheckpointing, nn.Module):
    """Base for the vision models.  Subclasses set ``cfg`` (with ``T``, ``dim``, ``in_chans``,
    ``img_size``, ``num_classes``, ``head``, ``tau``) and ``patch_size``, build
    ``self.head = ClassifierHead(...)`` and implement ``forward_features``, which starts with
    ``check_input``.

    Inputs: a static batch ``[B, C, H, W]`` is repeated ``T`` times (direct encoding,
    SPEC §1); a sequence ``[T, B, C, H, W]`` (event frames, time-major) is used as is.
    """

    cfg: object
    patch_size: int

    @property
    def T(self) -> int:
        return self.cfg.T

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def default_input_size(self) -> tuple[int, int, int]:
        return (self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    def check_input(self, x: Tensor) -> Tensor:
        """Validate ``x`` and return it as a time-major sequence ``[T, B, C, H, W]``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            raise InputError(
                f"{type(self).__name__} expects [B, C, H, W] images or [T, B, C, H, W] sequences, "
                f"got a tensor of rank {x.dim()} with shape {tuple(x.shape)}")
        c, h, w = x.shape[-3:]
        if c != self.cfg.in_chans:
            raise InputError(f"{type(self).__name__} was built for {self.cfg.in_chans} input channels, "
                             f"got {c} (input shape {tuple(x.shape)})")
        weight = next(self.parameters())
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects floating-point input, got {x.dtype} (images as uint8: "
                            f"x.float() / 255, then normalise)")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input is {x.dtype} but {type(self).__name__}'s weights are {weight.dtype}: "
                            f"x.to({weight.dtype}), or model.to({x.dtype})")
        p = self.patch_size
        if h < p or w < p or h % p or w % p:
            raise InputError(f"spatial size {h}x{w} must be a positive multiple of the tokenizer's "
                             f"patch size {p} (input shape {tuple(x.shape)})")
        if x.dim() == 4:  # T copies laid out as x is: channels-last on the fast path, as the encoding conv wants
            return torch.cat([x] * self.cfg.T).view(self.cfg.T, *x.shape)
        if x.shape[0] < 1:
            raise InputError("a sequence input needs at least one time step")
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` or sequences ``[T, B, C, H, W]`` -> token features ``[T, B, N, D]``
        (the residual stream)."""
        raise NotImplementedError

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_steps(self, x: Tensor) -> Tensor:
        """Logits after each time step ``[T, B, classes]`` (``ClassifierHead.forward_steps``): how
        accuracy grows with the time steps an inference is given, from one pass."""
        return self.head.forward_steps(self.forward_features(x))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups, bottom to top: the tokenizer or stem, each block, the head.  Layer-wise
        lr decay (``timm.optim``, ``layer_decay``) scales group ``i`` of ``n`` by ``decay ** (n - 1 - i)``,
        as MAE's fine-tuning does.  Blocks are their own groups whether ``coarse`` or not."""
        return dict(stem=r"^(?:tokenizer|stem)\.", blocks=r"^blocks\.(\d+)")  # the head, unmatched, comes last

    def reset_classifier(self, num_classes: int) -> None:
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes)
        self.head = ClassifierHead(self.cfg.dim, num_classes, self.cfg.head, self.cfg.tau)
        self.head.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        # As the official code: truncated-normal Linear weights, zero biases, unit BN.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        self.apply(self._init_module)
