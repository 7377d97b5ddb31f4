"""What every tensor is built from: the proof half of "spike-driven".

``SynapticProbe`` sees the values a layer received on one input.  That shows a violation when one
happens, but a layer fed binary values on this input may be fed others on the next, and a layer
that nothing fired into (an untrained model in eval mode) shows nothing at all.  ``SpikeProvenance``
answers for every input: while it is active it follows each tensor the forward pass computes
(a ``TorchFunctionMode`` sees every torch function and tensor method) and labels it with the kind of
value it holds **by construction**, whatever the input and the weights:

- ``SPIKE``: only 0/1. A comparison makes one (the Heaviside step ``(H - V_th >= 0)`` of Eq. 2 is
  a bool), and so does any op that only moves, copies, selects or takes the maximum of such values
  (reshapes, ``cat``, ``MaxPool``, a cast), or multiplies two of them.
  ``1 - s`` of spikes ``s`` is one too (logical NOT: SEW ResNet's IAND ``s * (1 - s')``).
- ``INTEGER``: a sum or product of spikes and integers (the SEW residual ``S + S'``, ``K^T V``).
- ``REAL``: anything else (a conv, BatchNorm, a mean, a scale, the model's input).

An in-place write (``x[i] = y``, ``x.copy_(y)``, ``x += y``) relabels ``x`` and the tensor it is a view of
with the wider of their label and the written value's, so spikes written into spikes stay spikes and a
real value written names the op that made it (``real (mean)``); other views of that tensor read its label.

The rules are a whitelist: an op they do not know gives ``REAL``, so a proof can fail on an exotic
op that does preserve 0/1, never pass on one that does not.  Each label keeps the op that made it
(``origin``), so a layer that is not fed spikes says why: ``integer (add)`` for the SEW residual.
Opaque kernels are not seen through: ``SynapticProbe`` takes a neuron at its word only where its firing
rule is known to emit 0/1 (``spike_neuron``: ours, stock SpikingJelly IF/LIF/PLIF with a Heaviside
surrogate), any other only as far as the context traced it (``neuron_output``).  A write the
version counters do not follow (through ``t.data``, or on a ``torch.inference_mode`` tensor) widens the
label of every tensor on the storage written.
"""
from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..nn.neuron import MultiStepLIF

__all__ = ["SPIKE", "INTEGER", "REAL", "KIND_NAMES", "Built", "SpikeProvenance", "spike_neuron", "hooked_neuron",
           "neuron_output"]

SPIKE, INTEGER, REAL = 0, 1, 2
KIND_NAMES = ("spike", "integer", "real")

# Ops whose every output value is one of their tensor inputs' values, or 0 (padding, an empty slot).
_MOVES = frozenset("""
    view view_as reshape reshape_as flatten unflatten permute transpose swapaxes swapdims movedim t T mT
    contiguous clone detach squeeze unsqueeze expand expand_as broadcast_to repeat repeat_interleave tile
    getitem narrow select index_select gather take take_along_dim masked_select chunk split tensor_split
    unbind cat concat concatenate stack hstack vstack dstack flip fliplr flipud roll rot90 pixel_shuffle
    pixel_unshuffle channel_shuffle unfold to type type_as float half bfloat16 double cpu cuda
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d max amax min amin maximum minimum relu where
    masked_fill data
""".split())
_ELEMENTWISE_EXTREMES = frozenset({"max", "min", "maximum", "minimum"})  # ``torch.max(a, b)``: values of both
# Only the first output of these is values (the rest are indices).
_WITH_INDICES = frozenset(n for n in _MOVES if n.endswith("with_indices") or "adaptive_max" in n) | {"max", "min"}
_PRODUCTS = frozenset({"mul", "multiply"})                                  # 0/1 x 0/1 is 0/1
_SUMS = frozenset({"add", "sub", "subtract", "neg", "negative", "sum", "cumsum",  # integers stay integers
                   "matmul", "mm", "bmm", "einsum"})
_CONSTANTS = frozenset({"zeros", "zeros_like", "ones", "ones_like", "new_zeros", "new_ones", "zero"})
_IN_PLACE_DUNDERS = frozenset(f"__i{op}__" for op in """
    add sub mul truediv floordiv mod pow matmul and or xor lshift rshift""".split())
_REFLECTED = ("add", "sub", "mul", "matmul", "and")


class Built(NamedTuple):
    """The kind of value a tensor holds by construction, and the op that made it."""

    kind: int
    origin: str

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]


def _op_name(func) -> str:
    """``add`` for ``torch.add``, ``Tensor.add_``, ``Tensor.__radd__`` and ``Tensor.__iadd__``; a property
    getter (``Tensor.T``) by its property's name, a setter (``t.data = x``) as ``set_data``."""
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):
        prop = getattr(getattr(func, "__self__", None), "__name__", name)
        name = prop if name == "__get__" else f"set_{prop}"
    dunder = name.startswith("__")
    name = name.strip("_")
    if dunder and name[:1] in "ri" and name[1:] in _REFLECTED:
        name = name[1:]
    return {"truediv": "div", "and": "mul"}.get(name, name)


def _scalar_kind(v: Any) -> int | None:
    if isinstance(v, bool) or v in (0, 1):
        return SPIKE
    if isinstance(v, (int, float)):
        return INTEGER if float(v).is_integer() else REAL
    return None


class SpikeProvenance(TorchFunctionMode):
    """``with SpikeProvenance() as prov: model(x)``; then ``prov.of(tensor)`` is its ``Built`` label.

    Labels are kept on the tensors themselves, under an attribute of this context's own, so a tensor
    another context labelled reads as unlabelled here, and contexts may nest (an ``estimate_energy``
    inside a probe): each sees every op and keeps its own labels.  A tensor made outside the context
    (the model's input, its parameters) is ``REAL`` ("input"), or ``SPIKE`` if it is a bool tensor.
    """

    _contexts = itertools.count()

    def __init__(self):
        super().__init__()
        self._attr = f"_spikingformer_built_{next(self._contexts)}"
        # What was written where no version counter tells the tensors sharing the storage (through ``t.data``,
        # which shares ``t``'s storage but not its counter, or on an inference tensor, which has none), per
        # storage: it widens the label of every tensor on that storage.
        self._by_storage: dict[int, Built] = {}

    def of(self, t: Tensor) -> Built:
        with torch._C.DisableTorchFunction():  # reading ``_base`` or ``_version`` is no op of the model
            return self._of(t)

    def _of(self, t: Tensor) -> Built:
        if t.dtype == torch.bool:
            return Built(SPIKE, "bool")
        built = self._tagged(t)
        written = self._by_storage.get(_storage(t)) if self._by_storage else None
        return built if written is None else _wider(built, written)

    def _tagged(self, t: Tensor) -> Built:
        tag = getattr(t, self._attr, None)
        if tag is None:
            return Built(REAL, "input")
        if tag[1] == _version(t):
            return tag[0]
        # views share their base's version counter: a write through any of them voids the label, but an
        # element changed since is one of the base's, which every write the context saw relabelled
        base = _base(t)
        return _wider(tag[0], self._tagged(base)) if base is not None else Built(REAL, "modified in place")

    def label(self, t: Tensor, built: Built, alias: bool = False) -> None:
        """``alias``: ``t`` is a ``.data`` of another tensor (a write to it is kept per storage)."""
        with torch._C.DisableTorchFunction():
            setattr(t, self._attr, (built, _version(t), alias or self._alias(t)))

    def _alias(self, t: Tensor) -> bool:
        return getattr(t, self._attr, (None, None, False))[2]

    def _kind(self, v: Any) -> int | None:
        if isinstance(v, Tensor):
            return self.of(v).kind
        if isinstance(v, (list, tuple)):
            kinds = [k for k in map(self._kind, v) if k is not None]
            return max(kinds) if kinds else None
        return _scalar_kind(v)

    def _rule(self, name: str, args: tuple, kwargs: dict) -> Built:
        if name in _CONSTANTS:
            return Built(SPIKE, name)
        if name == "set_data":  # ``t.data = x``: ``t`` now holds ``x``'s values
            return self.of(args[1])
        if name == "setitem":  # ``t[i] = value``: the rest of ``t`` keeps its values
            return _wider(self.of(args[0]), self._written_value(args[2]))
        if name == "copy":  # ``t.copy_(src)``: the values of ``src``
            return self.of(args[1]) if len(args) > 1 and isinstance(args[1], Tensor) else Built(REAL, name)
        if name in _MOVES:
            # the values moved: the first argument (a tensor, or the list ``cat`` joins), never the shapes,
            # dims, indices or dtypes after it; ``where``/``masked_fill``/``maximum`` also take the others'
            values = [args[0]] if args else list(kwargs.values())[:1]
            if name == "repeat_interleave" and len(args) + len(kwargs) == 1:  # the one-argument form makes indices
                return Built(REAL, name)
            if name == "where":  # the condition only selects
                values = list(args[1:]) + [kwargs[k] for k in ("input", "other") if k in kwargs]
            elif name == "masked_fill":
                values = [args[0], args[-1] if len(args) > 2 else kwargs.get("value")]
            elif name in _ELEMENTWISE_EXTREMES:
                values = [a for a in args if isinstance(a, Tensor)]
        elif name == "pad":  # zero padding adds 0s; any other mode or value is not followed
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            value = kwargs.get("value", args[3] if len(args) > 3 else None)
            if mode != "constant" or value not in (None, 0):
                return Built(REAL, name)
            values = args[:1]
        elif name in _PRODUCTS or name in _SUMS:
            values = [a for a in (*args, *kwargs.values()) if isinstance(a, (Tensor, list, tuple)) and not _is_shape(a)
                      or _scalar_kind(a) is not None]
        else:
            return Built(REAL, name)
        kinds = [self._kind(v) for v in values]
        kind = max((k for k in kinds if k is not None), default=REAL)
        if name in _SUMS:
            kind = max(kind, INTEGER)
        if name in _PRODUCTS or name in _SUMS:  # a new value is made here
            return Built(kind, name)
        # a moved value keeps the op that made it (``real (batch_norm)`` through any reshape)
        made = (self.of(t).origin for t in _flat(values) if isinstance(t, Tensor) and self.of(t).kind == kind)
        return Built(kind, next(made, name))

    def _logical_not(self, func, args: tuple, kwargs: dict) -> bool:
        """``1 - s`` of spikes ``s`` (``1.0 - s``, ``torch.sub(1, s)``, ``torch.rsub(s, 1)``) is 0/1: the
        constant must be exactly 1 (``2 - s`` is not), a Python number (a tensor's values are not followed)."""
        raw = getattr(func, "__name__", "")
        if len(args) != 2 or kwargs.get("alpha", 1) != 1 or raw not in ("__rsub__", "rsub", "sub", "subtract"):
            return False
        s, one = args if raw in ("__rsub__", "rsub") else args[::-1]
        return (isinstance(s, Tensor) and isinstance(one, (bool, int, float)) and one == 1
                and self.of(s).kind == SPIKE)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        # before the call: an in-place op changes its own operand
        built = Built(SPIKE, "not") if self._logical_not(func, args, kwargs) else self._rule(name, args, kwargs)
        written = [(t, base, base is not None and self.of(base))
                   for t, base in ((t, _base(t)) for t in _written(func, args, kwargs))]
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (list, tuple)) else (out,)
        for i, o in enumerate(outs):
            if isinstance(o, Tensor):
                self.label(o, Built(SPIKE, name) if o.dtype == torch.bool else
                           built if i == 0 or name not in _WITH_INDICES else Built(REAL, "indices"))
        if name == "data" and isinstance(out, Tensor):
            self.label(out, built, alias=True)
        for t, base, base_before in written:
            if name in ("setitem", "set_data"):  # they return nothing
                self.label(t, built)
            if base is not None:
                self.label(base, _wider(base_before, self.of(t)))
            if _version(t) is None or any(self._alias(a) for a in (t, base) if a is not None):
                key = _storage(t)
                self._by_storage[key] = _wider(self._by_storage.get(key, Built(SPIKE, "")), self.of(t))
        return out

    def _written_value(self, value: Any) -> Built:
        if isinstance(value, Tensor):
            return self.of(value)
        kind = self._kind(value)
        return Built(REAL if kind is None else kind, "setitem")


def _version(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor keeps none
        return None


def _is_shape(a: Any) -> bool:
    return isinstance(a, torch.Size) or isinstance(a, (list, tuple)) and all(isinstance(i, int) for i in a)


def _flat(items):
    for a in items:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


def _storage(t: Tensor) -> int | None:
    try:
        with torch._C.DisableTorchFunction():
            return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor with no storage (a meta or fake tensor)
        return None


def _base(t: Tensor) -> Tensor | None:
    """The tensor ``t`` is a view of (which shares its storage and version counter), or None."""
    with torch._C.DisableTorchFunction():  # an enclosing context must not see this read as an op
        return t._base


def _wider(a: Built, b: Built) -> Built:
    """The label covering the values of both: the wider kind, and the op that made it."""
    return b if b.kind > a.kind else a


def _written(func, args: tuple, kwargs: dict) -> list[Tensor]:
    """The tensors an op writes into: ``x`` of ``x[i] = y``, ``x.add_(y)``, ``x += y``, ``x.data = y``; ``out=``."""
    raw = getattr(func, "__name__", "")
    in_place = (raw in ("__setitem__", *_IN_PLACE_DUNDERS) or raw.endswith("_") and not raw.startswith("_")
                or _op_name(func) == "set_data")
    targets = [args[0]] if in_place and args else []
    targets += [t for t in _flat([kwargs.get("out")]) if t is not None]
    return [t for t in targets if isinstance(t, Tensor)]


# SpikingJelly's stock neurons, whose output is their surrogate's forward (the exact classes: a subclass may
# override the firing rule), and its stock surrogates whose spiking forward is ``heaviside``: ``(x >= 0)``.
_SPIKINGJELLY_NEURONS = ("IFNode", "LIFNode", "ParametricLIFNode")
_HEAVISIDE_SURROGATES = frozenset("""
    Sigmoid ATan PiecewiseQuadratic PiecewiseExp SoftSign SuperSpike Erf NonzeroSignLogAbs PiecewiseLeakyReLU
    SquarewaveFourierSeries S2NN QPseudoSpike LeakyKReLU FakeNumericalGradient LogTailedReLU Rect
""".split())


def _spikingjelly_neuron(mod: nn.Module) -> bool:
    return any(c.__name__ == "BaseNode" and c.__module__.startswith("spikingjelly") for c in type(mod).__mro__)


def spike_neuron(mod: nn.Module) -> bool:
    """A neuron whose firing rule is known to emit only 0/1, so its output is taken at its word: ours (the
    Triton kernels are tested to spike as the PyTorch loop does), or a stock SpikingJelly IF/LIF/PLIF node
    firing through a stock Heaviside surrogate in spiking mode."""
    if type(mod) is MultiStepLIF:
        return True
    if not _spikingjelly_neuron(mod):
        return False
    from spikingjelly.activation_based import neuron, surrogate

    sg = getattr(mod, "surrogate_function", None)
    return (any(type(mod) is getattr(neuron, n, None) for n in _SPIKINGJELLY_NEURONS)
            and type(sg).__name__ in _HEAVISIDE_SURROGATES and type(sg) is getattr(surrogate, type(sg).__name__)
            and getattr(sg, "spiking", False) is True)


def hooked_neuron(mod: nn.Module) -> bool:
    """A neuron whose output the probe labels itself: one the provenance context may not see into (ours on the
    Triton backend, any SpikingJelly node: their multi-step loops are custom ops or CUDA kernels)."""
    if isinstance(mod, MultiStepLIF):
        return mod.backend != "torch" or type(mod) is not MultiStepLIF
    return _spikingjelly_neuron(mod)


def neuron_output(mod: nn.Module, traced: Built, name: str) -> Built:
    """What a hooked neuron's output is built as: spikes if ``spike_neuron``; else what the context traced,
    when it saw every op (a ``torch`` backend) and found spikes; else not proven, naming the neuron."""
    if spike_neuron(mod):
        return Built(SPIKE, f"{type(mod).__name__} {name}")
    if traced.kind == SPIKE and getattr(mod, "backend", "torch") == "torch":
        return traced
    return Built(REAL, f"neuron {type(mod).__name__}: firing rule not known to emit 0/1")
