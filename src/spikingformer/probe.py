"""See what every synaptic layer is fed: the ground truth behind "spike-driven" and the energy model.

A synaptic layer is any ``nn.Conv*``/``nn.Linear`` and the attention product
``SpikeQKV``.  ``SynapticProbe`` hooks them all, runs nothing itself, and accumulates,
per layer and per input tensor, whether every value was 0/1 (spikes), an integer, or
real, plus the firing rate.  Nothing is tied to one architecture: any module tree
built from PyTorch layers works.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .layers import ClassifierHead, SpikeQKV

__all__ = ["TensorStats", "LayerProbe", "SynapticProbe", "SYNAPTIC_TYPES"]

SYNAPTIC_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, SpikeQKV)
_MAX_DISTINCT = 16


@dataclass
class TensorStats:
    """Running statistics of one input tensor of a layer, over every call seen."""

    numel: int = 0
    nonzero: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    binary: bool = True
    integer: bool = True
    distinct: set = field(default_factory=set)  # at most _MAX_DISTINCT values, then stops growing
    distinct_overflow: bool = False

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().float()
        self.numel += x.numel()
        self.nonzero += int(torch.count_nonzero(x))
        self.total += float(x.sum())
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.binary = self.binary and bool(((x == 0) | (x == 1)).all())
        self.integer = self.integer and bool((x == x.round()).all())
        if not self.distinct_overflow:
            vals = torch.unique(x) if self.integer else x.flatten()[: _MAX_DISTINCT + 1].unique()
            self.distinct.update(float(v) for v in vals[: _MAX_DISTINCT + 1])
            if len(self.distinct) > _MAX_DISTINCT or not self.integer:
                self.distinct_overflow = len(self.distinct) > _MAX_DISTINCT or not self.integer

    @property
    def kind(self) -> str:
        """``"spike"`` (all 0/1), ``"integer"`` (e.g. SEW residual sums) or ``"real"``."""
        return "spike" if self.binary else "integer" if self.integer else "real"

    @property
    def firing_rate(self) -> float:
        """Mean value: for spikes, the fraction of ones."""
        return self.total / self.numel if self.numel else 0.0


@dataclass
class LayerProbe:
    name: str
    module: nn.Module
    order: int            # position of its first call in the forward pass
    readout: bool         # inside the classification head (excluded from the spike-driven verdict)
    inputs: list[TensorStats] = field(default_factory=list)
    calls: int = 0

    @property
    def kind(self) -> str:
        kinds = {s.kind for s in self.inputs}
        return "real" if "real" in kinds else "integer" if "integer" in kinds else "spike"


class SynapticProbe:
    """Context manager: ``with SynapticProbe(model) as probe: model(x)``; then read ``probe.layers``.

    ``probe.encoding_layer`` is the first synaptic layer called (it sees the raw input);
    ``probe.spike_driven`` is True when every other non-readout layer saw only 0/1.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers: dict[str, LayerProbe] = {}
        self._handles = []

    def __enter__(self) -> "SynapticProbe":
        readout = {id(m) for h in self.model.modules() if isinstance(h, ClassifierHead) for m in h.modules()}
        for name, mod in self.model.named_modules():
            if isinstance(mod, SYNAPTIC_TYPES):
                self._handles.append(mod.register_forward_pre_hook(self._hook(name or type(mod).__name__,
                                                                              id(mod) in readout)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str, readout: bool):
        def hook(mod, args):
            rec = self.layers.get(name)
            if rec is None:
                tensors = [a for a in args if isinstance(a, Tensor)]
                rec = self.layers[name] = LayerProbe(name, mod, len(self.layers), readout,
                                                     [TensorStats() for _ in tensors])
            rec.calls += 1
            for stats, a in zip(rec.inputs, (a for a in args if isinstance(a, Tensor))):
                stats.update(a)
        return hook

    @property
    def ordered(self) -> list[LayerProbe]:
        return sorted(self.layers.values(), key=lambda r: r.order)

    @property
    def encoding_layer(self) -> LayerProbe | None:
        return self.ordered[0] if self.layers else None

    @property
    def violations(self) -> list[LayerProbe]:
        """Layers (beyond the encoding layer and the read-out) fed anything but spikes."""
        return [r for r in self.ordered[1:] if not r.readout and r.kind != "spike"]

    @property
    def spike_driven(self) -> bool:
        if not self.layers:
            raise RuntimeError("the probe saw no synaptic layer: run a forward pass inside the `with` block")
        return not self.violations
