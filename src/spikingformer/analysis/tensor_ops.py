"""Attention written as bare tensor ops: the products and sums that no synaptic module performs (SPEC §7).

Peers write a spiking transformer's attention with tensor ops, not a module: ``q @ k.transpose(-2, -1) @ v``
(Spikformer, QKFormer), ``torch.matmul``/``bmm``/``einsum``, or SDSA's Hadamard products and column sum
``(q * k).sum(dim=-2, keepdim=True)`` (Spike-Driven Transformer).  ``TensorOps``, a ``TorchFunctionMode``
that ``SynapticProbe`` runs, sees each one and hands it over as a row of its own, named by the module that
ran it and the op's place among that module's ops of its kind in one call (``blocks.0.attn.matmul#2``):

- ``matmul``/``mm``/``bmm`` (``@``) and ``einsum`` (its equation form) of two or more operands, at least one
  of them an activation (the other may be a weight, as a conv's is): dense MACs = every multiply of the
  loop nest, ``output elements x contracted size``;
- ``mul`` of two activations, a Hadamard product (a scale by a weight or a constant folds away, as BN);
  dense MACs = output elements;
- ``sum`` of an activation: each element is added once, dense count = its elements.

The op's inputs are its activation operands, and ``energy.stage_energy`` prices it as any product
(Eq. 19-20): ACs at the rate of its sparsest binary input, else MACs, so a sum of non-spikes counts as
MACs, as Eq. 20 counts every op not fed spikes.  ``q @ k.transpose(-2, -1) @ v`` thus costs what the same
product inside ``SpikeQKV`` costs: ``min(fr_Q, fr_K)``, then ``fr_V`` for the integer ``Q K^T`` times ``V``.

An *activation* is a tensor a submodule returned, or one computed from such: the model's own inputs (images,
token ids, padding masks), its parameters and buffers and the constants it builds are not.  Nothing is
counted inside a synaptic module (its products are priced already), a spiking neuron (its membrane update
is no synapse) or the classification head (its pooling, as an AvgPool, is no synaptic op).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..nn.layers import recomputing
from ..nn.neuron import MultiStepLIF
from .provenance import _op_name

__all__ = ["TensorOps", "spiking_neuron"]

_PRICED = frozenset({"matmul", "mm", "bmm", "einsum", "mul", "sum"})


def spiking_neuron(mod: nn.Module) -> bool:
    """Ours (any backend) or any SpikingJelly neuron (``BaseNode``)."""
    return isinstance(mod, MultiStepLIF) or any(
        c.__name__ == "BaseNode" and c.__module__.startswith("spikingjelly") for c in type(mod).__mro__)


@dataclass
class _Frame:
    name: str
    module: nn.Module
    quiet: bool                                  # inside a module whose ops are not counted
    calls: dict[str, int] = field(default_factory=dict)  # op -> how many ran so far in this call


class TensorOps(TorchFunctionMode):
    """Hands every priced op to ``see(row name, module, op, activation operands, dense MACs)``, before it runs
    (an in-place op changes its operand).  ``attach`` hooks the model's modules, ``quiet`` those whose ops
    are not counted (with everything inside them)."""

    _contexts = itertools.count()

    def __init__(self, see: Callable[[str, nn.Module, str, list[Tensor], int], None]):
        super().__init__()
        self._see = see
        self._attr = f"_spikingformer_activation_{next(self._contexts)}"
        self._frames: list[_Frame] = []
        self._fixed: set[int] = set()

    def attach(self, model: nn.Module, names: dict[nn.Module, str], quiet: set[int]) -> list:
        """Hook every module of ``model`` (``names``: each one's row-name prefix); return the handles."""
        self._fixed = {id(t) for t in itertools.chain(model.parameters(), model.buffers())}
        handles = []
        for mod in model.modules():
            root = mod is model
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, root=root, q=id(mod) in quiet: self._enter(m, names.get(m, ""), q, root)))
            handles.append(mod.register_forward_hook(lambda m, args, out: self._leave(m, out)))
        return handles

    def _enter(self, mod: nn.Module, name: str, quiet: bool, root: bool) -> None:
        if root:  # a forward that raised left its frames behind
            self._frames.clear()
        self._frames.append(_Frame(name, mod, quiet or bool(self._frames and self._frames[-1].quiet)))

    def _leave(self, mod: nn.Module, out) -> None:
        while self._frames and self._frames.pop().module is not mod:
            pass
        for t in _flat([out]):
            self._mark(t)

    def _mark(self, t) -> None:
        if isinstance(t, Tensor) and id(t) not in self._fixed:
            with torch._C.DisableTorchFunction():
                setattr(t, self._attr, True)

    def _active(self, t) -> bool:
        return isinstance(t, Tensor) and getattr(t, self._attr, False)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        frame = self._frames[-1] if self._frames else None
        if frame is not None and not frame.quiet and not recomputing():
            op = _op_name(func)
            tensors, operands = self._operands(op, args, kwargs) if op in _PRICED else ([], [])
            if operands:
                n = frame.calls[op] = frame.calls.get(op, 0) + 1
                with torch._C.DisableTorchFunction():
                    macs = _macs(op, args, tensors)
                self._see(f"{frame.name}.{op}#{n}" if frame.name else f"{op}#{n}", frame.module, op, operands, macs)
        out = func(*args, **kwargs)
        if any(map(self._active, _flat([args, kwargs]))):
            for t in _flat([out]):
                self._mark(t)
        return out

    def _operands(self, op: str, args: tuple, kwargs: dict) -> tuple[list[Tensor], list[Tensor]]:
        """``(every tensor operand, the activations among them)``; no activation when ``op`` is not priced."""
        if op == "einsum":
            if not args or not isinstance(args[0], str):  # the sublist form is not read
                return [], []
            tensors = list(_flat(args[1:]))
        else:
            tensors = [*args[:2], *(kwargs[k] for k in ("input", "other", "mat2") if k in kwargs)]
        tensors = [t for t in tensors if isinstance(t, Tensor)][:1 if op == "sum" else None]
        active = [t for t in tensors if self._active(t)]
        if op == "mul":
            return tensors, active if len(active) == 2 else []
        if op == "sum":
            return tensors, active
        return tensors, active if len(tensors) >= 2 else []  # a one-operand einsum only moves or sums values


def _macs(op: str, args: tuple, tensors: list[Tensor]) -> int:
    """The dense count of one call (module docstring), from its tensor operands' shapes."""
    if op == "sum":
        return tensors[0].numel()
    if op == "mul":
        return math.prod(torch.broadcast_shapes(*(t.shape for t in tensors)))
    if op == "einsum":
        return _einsum_macs(args[0], tensors)
    a, b = tensors
    n, k = (1, a.shape[0]) if a.dim() == 1 else a.shape[-2:]
    m = 1 if b.dim() == 1 else b.shape[-1]
    return math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])) * n * k * m


def _einsum_macs(equation: str, tensors: list[Tensor]) -> int:
    """The loop nest of ``equation``: the product of every index's size (the ``...`` dims broadcast)."""
    sizes, batch = {}, []
    for spec, t in zip(equation.split("->")[0].replace(" ", "").split(","), tensors):
        letters = spec.replace("...", "")
        lead = spec.find("...")
        if lead >= 0:
            batch.append(t.shape[lead:t.dim() - (len(letters) - lead)])
        dims = t.shape[:lead] + t.shape[t.dim() - (len(letters) - lead):] if lead >= 0 else t.shape
        sizes.update(zip(letters, dims))
    return math.prod(sizes.values()) * math.prod(torch.broadcast_shapes(*batch) if batch else ())


def _flat(items):
    for a in items:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        elif isinstance(a, dict):
            yield from _flat(list(a.values()))
        else:
            yield a
