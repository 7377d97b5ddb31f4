"""What one synaptic layer was fed, accumulated over forward passes: per input tensor, the values seen (0/1
spikes, integers, reals), firing and nonzero rates and how the input was built (``provenance``); per layer, the
matrix products it performs (``Stage``: operands and dense multiply-accumulates), which ``energy`` prices."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..nn.layers import SpikeQKV
from .provenance import SPIKE, Built

__all__ = ["TensorStats", "Stage", "LayerProbe"]

_INPUT_NAMES = {SpikeQKV: ("q", "k", "v")}  # the attention product's inputs, by name

# Enough for the SEW residual sums of a 16-block Spikformer ({0, ..., 34}); beyond it only the range is kept.
_MAX_DISTINCT = 64


@dataclass
class TensorStats:
    """Running statistics of one input tensor of a layer, over every call seen.

    ``counts`` is the histogram of values (value -> how many elements) while the input is
    integer-valued with at most ``_MAX_DISTINCT`` distinct values; after that
    ``distinct_overflow`` is set, ``counts`` is cleared and only ``min``/``max`` describe it.
    """

    numel: int = 0
    nonzero: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    binary: bool = True
    integer: bool = True
    counts: dict[float, int] = field(default_factory=dict)
    distinct_overflow: bool = False
    built: Built | None = None  # what it holds by construction, over every call (``SynapticProbe(provenance=True)``)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        if x.numel() == 0:  # an empty batch: nothing fed, nothing to count (and no min or max)
            return
        x = x.detach().float()
        nonzero = int(torch.count_nonzero(x))
        self.numel += x.numel()
        self.nonzero += nonzero
        self.total += float(x.sum())
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        binary = bool(((x == 0) | (x == 1)).all())
        self.binary = self.binary and binary
        self.integer = self.integer and (binary or bool((x == x.round()).all()))
        if self.distinct_overflow:
            return
        if not self.integer:
            self.distinct_overflow = True
            self.counts.clear()
            return
        if binary:  # the common case: no sort needed
            pairs = [(0.0, x.numel() - nonzero), (1.0, nonzero)]
        else:
            vals, cnt = torch.unique(x, return_counts=True)
            pairs = zip(vals.tolist(), cnt.tolist())
        for v, c in pairs:
            if c:
                self.counts[v] = self.counts.get(v, 0) + c
        if len(self.counts) > _MAX_DISTINCT:
            self.distinct_overflow = True
            self.counts.clear()

    def update_built(self, built: Built) -> None:
        """Keep the widest kind any call was built as (and the op that made it)."""
        if self.built is None or built.kind > self.built.kind:
            self.built = built

    @property
    def distinct(self) -> set[float]:
        """The distinct values seen (empty once ``distinct_overflow``)."""
        return set(self.counts)

    @property
    def kind(self) -> str:
        """``"spike"`` (all 0/1), ``"integer"`` (e.g. SEW residual sums) or ``"real"``."""
        return "spike" if self.binary else "integer" if self.integer else "real"

    @property
    def firing_rate(self) -> float:
        """Mean value: for spikes, the fraction of ones."""
        return self.total / self.numel if self.numel else 0.0

    @property
    def nonzero_rate(self) -> float:
        return self.nonzero / self.numel if self.numel else 0.0


@dataclass
class Stage:
    """One matrix product a synaptic layer performs, in the order it is computed.

    ``operands`` index ``LayerProbe.inputs``: the inputs that multiply into this product.
    The other factor is the weight (conv/linear) or an intermediate product of the same
    layer (the ``K^T V`` inside ``Q (K^T V)``), never an observed tensor.
    ``macs`` is the dense multiply-accumulate count summed over every call, as if every
    operand element were non-zero.
    """

    label: str
    operands: tuple[int, ...]
    macs: int = 0


def _stages(mod: nn.Module, inputs: list[Tensor], out) -> list[tuple[str, tuple[int, ...], int]]:
    """``(label, operands, dense MACs)`` of each product one call of ``mod`` computes."""
    if isinstance(mod, SpikeQKV):
        q, k, v = inputs[:3]
        lead = q.numel() // (q.shape[-2] * q.shape[-1])  # T * B * heads
        n_q, d = q.shape[-2:]
        n_k, d_v = k.shape[-2], v.shape[-1]
        if mod.kv_first(n_q, d):  # same test the forward uses, so the count follows the computed order
            return [("K^T V", (1, 2), lead * d * n_k * d_v), ("Q (K^T V)", (0,), lead * n_q * d * d_v)]
        return [("Q K^T", (0, 1), lead * n_q * d * n_k), ("(Q K^T) V", (2,), lead * n_q * n_k * d_v)]
    if isinstance(mod, nn.Linear):
        return [("linear", (0,), out.numel() * mod.in_features)]
    # Conv: every output element is one dot product over (C_in / groups) x kernel.
    fan_in = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
    return [("conv", (0,), out.numel() * fan_in)]


@dataclass
class LayerProbe:
    name: str
    module: nn.Module
    order: int            # position of its first call in the forward pass
    readout: bool         # inside the classification head (excluded from the spike-driven verdict)
    inputs: list[TensorStats] = field(default_factory=list)
    calls: int = 0
    stages: list[Stage] = field(default_factory=list)
    # per input: its sum per sample and step this forward pass ([T, B]), and over what each policy ran ([P])
    pending: list[Tensor] = field(default_factory=list)
    charged: list[Tensor] = field(default_factory=list)
    per_step: bool = True  # every call came after ``per_step``, each input as [T, B, ...] or [T * B, ...]
    readout_by: str = ""  # how it is known to be: our head's class, "named", or what its input is pooled by
    last: int = 0         # position of its last call
    # a product written as a bare tensor op (``tensor_ops``): one 0/1 operand makes it additions only
    product: bool = False

    @property
    def kind(self) -> str:
        kinds = {s.kind for s in self.inputs}
        if self.product and "spike" in kinds:
            return "spike"
        return "real" if "real" in kinds else "integer" if "integer" in kinds else "spike"

    @property
    def proven(self) -> bool | None:
        """Every input (a product's: one) is 0/1 by construction (``provenance``), whatever the model is fed;
        None when not traced."""
        if any(s.built is None for s in self.inputs):
            return None
        return (any if self.product else all)(s.built.kind == SPIKE for s in self.inputs)

    @property
    def input_names(self) -> tuple[str, ...]:
        """``("q", "k", "v")`` for the attention product, ``("input",)`` / ``("input0", ...)`` otherwise."""
        names = next((v for k, v in _INPUT_NAMES.items() if isinstance(self.module, k)), None)
        if names is None:
            names = ("input",) if len(self.inputs) == 1 else tuple(f"input{i}" for i in range(len(self.inputs)))
        return names[:len(self.inputs)]
