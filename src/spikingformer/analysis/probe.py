"""See what every synaptic layer is fed: the ground truth behind "spike-driven" and the energy model.

A synaptic layer is any ``nn.Conv*``/``nn.Linear`` and the attention product
``SpikeQKV``.  ``SynapticProbe`` hooks them all, runs nothing itself, and accumulates,
per layer and per input tensor, whether every value was 0/1 (spikes), an integer, or
real, plus the firing rate; and, per layer, the dense multiply-accumulate count of each
matrix product it performs (``LayerProbe.stages``), from which ``energy`` derives Eq. 19.
Nothing is tied to one architecture: any module tree built from PyTorch layers works.
A ``torch.compile``d model, or one with compiled parts, runs eagerly inside the probe, so it is
probed as the model it wraps, under the same layer names.

For a policy that stops samples early (``eval --early-exit``), ``per_step`` and ``charge`` also count,
per layer input, only the sample-steps the policy ran, from which ``energy.policy_energy`` prices it.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..nn.layers import ClassifierHead, SpikeQKV, recomputing
from ..utils.errors import InputError
from .provenance import SpikeProvenance, hooked_neuron, neuron_output
from .stats import LayerProbe, Stage, TensorStats, _stages
from .tensor_ops import TensorOps, spiking_neuron

__all__ = ["SynapticProbe", "SYNAPTIC_TYPES", "verdict"]

SYNAPTIC_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, SpikeQKV)
# What a read-out's input is made by: a pooling or mean over tokens or time steps.
_POOLS = frozenset("""mean avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
                      adaptive_avg_pool3d""".split())


def verdict(spike_driven: bool, proven: bool | None = None) -> str:
    """The spike-driven verdict in words: ``NO`` (a layer received a non-spike), ``yes, proven`` (and every
    layer is built to receive spikes), or ``yes on this data`` (not proven: some layer is not built to)."""
    return "NO" if not spike_driven else "yes" if proven is None else "yes, proven" if proven else "yes on this data"


def _tensors(args: tuple, kwargs: dict) -> list[Tensor]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]


def _step_sums(x: Tensor, T: int, B: int) -> Tensor | None:
    """``[T, B]``: ``x`` summed per time step and sample, or None when it is not laid out time-major."""
    if x.dim() >= 2 and tuple(x.shape[:2]) == (T, B) or x.dim() >= 1 and x.shape[0] == T * B:
        return x.detach().float().reshape(T, B, -1).sum(-1)
    return None


def _plus(total: Tensor | None, x: Tensor) -> Tensor:
    return x if total is None else total + x


def _named_modules(model: nn.Module, names: str | Iterable[str] | None) -> list[nn.Module]:
    """The modules of ``model`` called ``names`` (as ``named_modules`` names them, without ``_orig_mod``)."""
    names = [names] if isinstance(names, str) else list(names or [])
    modules = {_uncompiled_name(n): m for n, m in model.named_modules()}
    for n in names:
        if n not in modules or not any(isinstance(m, SYNAPTIC_TYPES) for m in modules[n].modules()):
            why = "no module" if n not in modules else "no synaptic layer (Conv, Linear or SpikeQKV) in the module"
            raise InputError(f"readout {n!r}: {type(model).__name__} has {why} of that name")
    return [modules[n] for n in names]


def _uncompiled_name(name: str) -> str:
    """A submodule's name as in the uncompiled model: ``blocks.0._orig_mod.attn`` -> ``blocks.0.attn``."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


class SynapticProbe:
    """Context manager: ``with SynapticProbe(model) as probe: model(x)``; then read ``probe.layers``.

    ``probe.encoding_layer`` is the first synaptic layer called (it sees the raw input);
    ``probe.spike_driven`` is True when every other non-readout layer saw only 0/1.  A model
    that encodes without a synaptic layer (the text model's embedding lookup) says so with
    ``synaptic_encoding = False``: then no layer is exempt and ``encoding_layer`` is None.

    ``provenance=True`` also follows how every input was built (``provenance.SpikeProvenance``), so
    ``unproven`` names the layers not fed spikes by construction: proof for any input, not one run.

    ``probe.ops`` holds the products and sums written as bare tensor ops (``tensor_ops``: a peer's
    ``q @ k.transpose(-2, -1) @ v``), each one recorded as a layer is, for its energy; the verdict is the
    synaptic layers'.  ``priced`` is both, in the order they first ran.
    The read-out (exempt, as Eq. 20 exempts it) is our ``ClassifierHead``, the modules named by ``readout``, or
    else, with ``provenance``, a model's last synaptic layer if a pooling or mean feeds it (``_find_readout``).
    """

    def __init__(self, model: nn.Module, provenance: bool = False, readout: str | Iterable[str] | None = None):
        self.model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the model it compiles
        self.readout = _named_modules(self.model, readout)
        self.provenance = SpikeProvenance() if provenance else None
        self.exempt_first = getattr(model, "synaptic_encoding", True)
        self.layers: dict[str, LayerProbe] = {}
        self.ops: dict[str, LayerProbe] = {}
        self._ops = TensorOps(self._see_op)
        self._handles = []
        self._stance = None
        self._layout: tuple[int, int] | None = None  # (T, B) of the next forward, for ``charge``
        self.steps_run: Tensor | None = None         # per policy, the sample-steps ``charge`` counted
        self.steps_seen = 0                          # the sample-steps of every charged forward pass
        self._calls = 0

    def __enter__(self) -> "SynapticProbe":
        # Compiled code would run without the hooks, and the provenance mode cannot see into it.
        self._stance = torch.compiler.set_stance("force_eager")
        heads = self.readout or [h for h in self.model.modules() if isinstance(h, ClassifierHead)]
        readout = {id(m): "named" if self.readout else type(h).__name__ for h in heads for m in h.modules()}
        names = {mod: _uncompiled_name(name) for name, mod in self.model.named_modules()}
        quiet = set(readout) | {id(m) for m in self.model.modules()
                                if isinstance(m, SYNAPTIC_TYPES) or spiking_neuron(m)}
        self._handles += self._ops.attach(self.model, names, quiet)
        for name, mod in self.model.named_modules():
            if isinstance(mod, SYNAPTIC_TYPES):
                name = _uncompiled_name(name) or type(mod).__name__
                self._handles.append(mod.register_forward_pre_hook(self._input_hook(name, readout.get(id(mod), "")),
                                                                   with_kwargs=True))
                self._handles.append(mod.register_forward_hook(self._count_hook(name), with_kwargs=True))
        if self.provenance is not None:
            for name, mod in self.model.named_modules():
                if hooked_neuron(mod):
                    self._handles.append(mod.register_forward_hook(self._neuron_hook(_uncompiled_name(name))))
            self.provenance.__enter__()
        self._ops.__enter__()  # inside the provenance mode: it reads an op's operands before that labels them
        return self

    def __exit__(self, *exc) -> None:
        self._ops.__exit__(*exc)
        if self.provenance is not None:
            self.provenance.__exit__(*exc)
            self._find_readout()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._stance is not None:
            self._stance.__exit__(*exc)
            self._stance = None

    def _neuron_hook(self, name: str):
        def hook(mod, args, out):
            if isinstance(out, Tensor):
                self.provenance.label(out, neuron_output(mod, self.provenance.of(out), name))
        return hook

    def _find_readout(self) -> None:
        """Without a read-out known (our head, or named): the last synaptic layer called is one if every input
        it was fed is made by a pooling or mean (over tokens or time steps): nothing synaptic runs on its output."""
        if not self.layers or any(r.readout for r in self.layers.values()):
            return
        last = max(self.layers.values(), key=lambda r: r.last)
        origins = {s.built and s.built.origin for s in last.inputs}
        if last is not self.encoding_layer and len(origins) == 1 and origins <= _POOLS:
            last.readout, last.readout_by = True, f"last synaptic layer, fed by {origins.pop()}"

    def _input_hook(self, name: str, readout: str):
        def hook(mod, args, kwargs):
            if recomputing():  # gradient checkpointing runs the layer again in the backward pass: not a call
                return
            tensors = _tensors(args, kwargs)
            rec = self.layers.get(name)
            if rec is None:
                rec = self.layers[name] = LayerProbe(name, mod, len(self.layers) + len(self.ops), bool(readout),
                                                     [TensorStats() for _ in tensors], readout_by=readout)
            self._observe(rec, tensors)
        return hook

    def _see_op(self, name: str, mod: nn.Module, op: str, tensors: list[Tensor], macs: int) -> None:
        rec = self.ops.get(name)
        if rec is None:
            rec = self.ops[name] = LayerProbe(name, mod, len(self.layers) + len(self.ops), False,
                                              [TensorStats() for _ in tensors],
                                              stages=[Stage(op, tuple(range(len(tensors))))], product=op != "sum")
        self._observe(rec, tensors)
        rec.stages[0].macs += macs

    def _observe(self, rec: LayerProbe, tensors: list[Tensor]) -> None:
        rec.calls += 1
        rec.last, self._calls = self._calls, self._calls + 1
        if self.provenance is not None:
            for stats, a in zip(rec.inputs, tensors):
                stats.update_built(self.provenance.of(a))
        with torch._C.DisableTorchFunction():  # the probe's own arithmetic is no part of the model
            self._record(rec, tensors)

    def _record(self, rec: LayerProbe, tensors: list[Tensor]) -> None:
        for stats, a in zip(rec.inputs, tensors):
            stats.update(a)
        if not rec.readout:
            sums = [_step_sums(a, *self._layout) if self._layout else None for a in tensors]
            if any(s is None for s in sums):
                rec.per_step = False  # a call no policy can be charged for: policy_energy gives None
            else:
                rec.pending = list(map(_plus, rec.pending or [None] * len(sums), sums))

    def per_step(self, T: int, B: int) -> None:
        """The next forward pass runs ``B`` samples for ``T`` steps: keep each input's sum per sample and step
        (an input laid out ``[T, B, ...]`` or ``[T * B, ...]``, time-major as SPEC §1) until ``charge``."""
        self._layout = (T, B)

    @torch.no_grad()
    def charge(self, runs: Tensor) -> None:
        """Count the sample-steps of the last forward pass that each of ``P`` policies ran: ``runs [P, T, B]``
        is 1 where a policy ran sample ``b`` at step ``t``.  Each non-readout input adds its sum over those
        sample-steps to ``LayerProbe.charged``; ``energy.policy_energy`` prices them."""
        runs = runs.float()
        for rec in self.priced:
            if rec.pending:
                spent = [torch.einsum("ptb,tb->p", runs, sums).double().cpu() for sums in rec.pending]
                rec.charged = list(map(_plus, rec.charged or [None] * len(spent), spent))
            rec.pending = []
        self.steps_run = _plus(self.steps_run, runs.sum((1, 2)).double().cpu())
        self.steps_seen += runs[0].numel()
        self._layout = None

    def _count_hook(self, name: str):
        # A forward (post) hook: a conv's MAC count needs its output size.
        def hook(mod, args, kwargs, out):
            if recomputing():
                return
            rec = self.layers[name]
            for label, operands, macs in _stages(mod, _tensors(args, kwargs), out):
                # by label, not position: the attention product runs in the other order on a batch whose
                # token count is on the other side of the head dim (text batches padded to their longest)
                stage = next((s for s in rec.stages if s.label == label), None)
                if stage is None:
                    stage = Stage(label, operands)
                    rec.stages.append(stage)
                stage.macs += macs
        return hook

    @property
    def ordered(self) -> list[LayerProbe]:
        return sorted(self.layers.values(), key=lambda r: r.order)

    @property
    def priced(self) -> list[LayerProbe]:
        """The synaptic layers and the tensor ops (``ops``), in the order they first ran: what ``energy`` prices."""
        return sorted([*self.layers.values(), *self.ops.values()], key=lambda r: r.order)

    @property
    def judged(self) -> list[LayerProbe]:
        """What the verdict reads: the synaptic layers and the products written as bare tensor ops (a peer's
        ``q @ k.transpose(-2, -1)``: fed no spike operand, it multiplies), in the order they first ran."""
        return sorted([*self.layers.values(), *(r for r in self.ops.values() if r.product)], key=lambda r: r.order)

    @property
    def encoding_layer(self) -> LayerProbe | None:
        return self.ordered[0] if self.layers and self.exempt_first else None

    @property
    def violations(self) -> list[LayerProbe]:
        """Layers (beyond the encoding layer and the read-out) fed anything but spikes."""
        return [r for r in self.judged if r is not self.encoding_layer and not r.readout and r.kind != "spike"]

    @property
    def silent(self) -> list[LayerProbe]:
        """Layers (beyond the encoding layer and the read-out) fed nothing but zeros: binary, but nothing
        fired into them, so the run shows nothing about what they are fed (``verify`` exits 3 on them)."""
        return [r for r in self.judged if r is not self.encoding_layer and not r.readout
                and all(s.nonzero == 0 for s in r.inputs)]

    @property
    def unproven(self) -> list[LayerProbe]:
        """Layers (beyond the encoding layer and the read-out) not fed 0/1 by construction (``provenance``)."""
        if self.provenance is None:
            raise RuntimeError("build the probe with provenance=True to know how inputs were built")
        return [r for r in self.judged if r is not self.encoding_layer and not r.readout and not r.proven]

    @property
    def proven(self) -> bool:
        """Spike-driven on this run, and every layer built to receive spikes (``provenance``): for any input."""
        return self.spike_driven and not self.unproven

    def verdict(self) -> dict:
        """The verdict as every command's JSON gives it: ``spike_driven``, ``proven`` and the layers behind them
        (``non_spike_layers``, ``unproven_layers``, ``silent_layers``)."""
        return {"spike_driven": self.spike_driven, "proven": self.proven,
                "readout_layers": [r.name for r in self.ordered if r.readout],
                "non_spike_layers": [r.name for r in self.violations],
                "unproven_layers": [r.name for r in self.unproven], "silent_layers": [r.name for r in self.silent]}

    def require_run(self) -> None:
        """Raise a ``RuntimeError`` saying why, unless some synaptic layer was fed some value."""
        if not any(isinstance(m, SYNAPTIC_TYPES) for m in self.model.modules()):
            raise RuntimeError(f"{type(self.model).__name__} has no synaptic layer (Conv, Linear or SpikeQKV) to probe")
        if not any(s.numel for r in self.layers.values() for s in r.inputs):
            raise RuntimeError("the probe saw no synaptic layer run: run a forward pass, on a non-empty batch, "
                               "inside the `with` block")

    @property
    def spike_driven(self) -> bool:
        self.require_run()
        return not self.violations
