"""Spike-driven certificate and the paper's Fig. 3, from what every synaptic layer is fed.

SPEC §3: a model is spike-driven when every Conv/Linear (and the ``Q K^T V`` product)
except the encoding layer receives only 0/1.  The read-out head is exempt too: the
paper's Eq. 20 leaves it out, and the default AvgPooling-FC head (Eq. 15) averages
spikes into reals by design.  ``verify_model`` runs the model under ``SynapticProbe``
and returns a ``Certificate``: per layer, the distinct input values seen (or their
range once there are more than 64), whether they are all 0/1, how the input was built
(``provenance``: 0/1 by construction, for any input and weights, or which op made it
something else), and the verdict: spike-driven and proven, not spike-driven (a layer
received a non-binary value), or binary on this input only (unproven).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

from ..models import list_models
from ..nn.layers import SpikeQKV
from ..utils.errors import InputError
from ..utils.outputs import pyplot, save_figure
from ..utils.progress import progress_bar
from .batches import run_model
from .probe import SynapticProbe
from .stats import LayerProbe

__all__ = ["InputReport", "LayerVerdict", "Certificate", "certify", "verify_model", "plot_fig3"]


def _value_set(values: list[float]) -> str:
    """``{0, 1}``, or ``{0, 1, ..., 16} (17 values)`` when there are many."""
    vals = [f"{v:g}" for v in sorted(values)]
    if len(vals) <= 6:
        return "{" + ", ".join(vals) + "}"
    return f"{{{vals[0]}, {vals[1]}, ..., {vals[-1]}}} ({len(vals)} values)"


@dataclass
class InputReport:
    """One input tensor of a synaptic layer, over every call seen."""

    name: str                         # "input", or "q"/"k"/"v" for the attention product
    kind: str                         # "spike", "integer" or "real"
    min: float
    max: float
    firing_rate: float                # mean value (for spikes, the fraction of ones)
    nonzero: float                    # fraction of non-zero elements
    counts: dict[float, int] | None   # value -> count; None for reals or more than 64 distinct values
    built: str | None = None          # by construction: "spike", "integer" or "real"; None: not traced
    built_by: str | None = None       # the op that made it so ("add" for the SEW residual)

    def describe(self) -> str:
        if self.counts is not None:
            return _value_set(list(self.counts))
        what = "integers" if self.kind == "integer" else "reals"
        return f"{what} in [{self.min:.3g}, {self.max:.3g}]"


@dataclass
class LayerVerdict:
    name: str
    op: str                           # "conv", "linear", "attention", or a bare tensor op ("matmul", "mul", ...)
    role: str                         # "encoding" (sees the raw input), "readout" (head) or "synaptic"
    inputs: list[InputReport]
    readout_by: str = ""              # how the read-out is known: our head's class, "named", or what pools its input
    product: bool = False             # a bare tensor op's product: one 0/1 operand makes it additions only

    @property
    def spike_input(self) -> bool:
        return (any if self.product else all)(i.kind == "spike" for i in self.inputs)

    @property
    def ok(self) -> bool:
        return self.role != "synaptic" or self.spike_input

    @property
    def silent(self) -> bool:
        """A synaptic layer that received nothing but zeros: binary, but no evidence of what it is fed."""
        return self.role == "synaptic" and all(i.nonzero == 0 for i in self.inputs)

    @property
    def proven(self) -> bool | None:
        """Every input is 0/1 by construction, whatever the model is fed; None when not traced."""
        if any(i.built is None for i in self.inputs):
            return None
        return (any if self.product else all)(i.built == "spike" for i in self.inputs)


@dataclass
class Certificate:
    model: str
    layers: list[LayerVerdict]
    notes: list[str] = field(default_factory=list)
    sample: str = ""  # which samples of which data the layers' inputs were seen on (``loading.Prepared.sample``)

    @property
    def violations(self) -> list[LayerVerdict]:
        return [r for r in self.layers if not r.ok]

    @property
    def spike_driven(self) -> bool:
        return not self.violations

    @property
    def silent(self) -> list[LayerVerdict]:
        """Synaptic layers that received only zeros: nothing fired into them, so the run itself shows nothing
        about them (an untrained model in eval mode, say); only their construction can."""
        return [r for r in self.layers if r.silent]

    @property
    def unproven(self) -> list[LayerVerdict]:
        """Synaptic layers that received only 0/1 here but are not built to: another input may give them
        other values.  Without provenance (``certify`` of a plain probe), the silent ones."""
        return [r for r in self.layers if r.role == "synaptic" and r.ok
                and (r.proven is False or r.proven is None and r.silent)]

    @property
    def proven(self) -> bool:
        """Spike-driven for any input and weights: no layer broke the rule and every one is built not to."""
        return self.spike_driven and not self.unproven

    @property
    def readout(self) -> list[LayerVerdict]:
        """The read-out layers, exempt as Eq. 20 exempts the head."""
        return [r for r in self.layers if r.role == "readout"]

    @property
    def exit_code(self) -> int:
        """``verify``'s: 0 proven spike-driven, 1 not spike-driven, 3 binary on this input only."""
        return 1 if not self.spike_driven else 0 if self.proven else 3

    def to_dict(self) -> dict:
        layers = []
        for r in self.layers:
            d = asdict(r)
            for i in d["inputs"]:  # JSON keys must be strings: give the histogram as two lists
                counts = i.pop("counts")
                i["values"] = sorted(counts) if counts is not None else None
                i["counts"] = [counts[v] for v in sorted(counts)] if counts is not None else None
            layers.append(dict(d, spike_input=r.spike_input, ok=r.ok))
        return dict(model=self.model, spike_driven=self.spike_driven, proven=self.proven,
                    readout_layers=[r.name for r in self.readout],
                    non_spike_layers=[r.name for r in self.violations], unproven_layers=[r.name for r in self.unproven],
                    silent_layers=[r.name for r in self.silent], notes=self.notes, sample=self.sample, layers=layers)

    def table(self) -> str:
        width = max([len("layer")] + [len(r.name) + 2 for r in self.layers])
        lines = [f"{'layer':{width}s}  {'role':9s} {'kind':7s} {'fr':>6s}  {'built as':15s}  values seen"]
        for r in self.layers:
            for i in r.inputs:
                name = r.name if len(r.inputs) == 1 else f"{r.name}[{i.name}]"
                built = "-" if i.built is None else i.built if i.built == "spike" else f"{i.built} ({i.built_by})"
                flag = "" if r.ok else "  <- not spikes"
                lines.append(f"{name:{width}s}  {r.role:9s} {i.kind:7s} {i.firing_rate:6.3f}  {built:15s}  "
                             f"{i.describe()}{flag}")
        if not self.spike_driven:
            lines.append(f"verdict: {self.model} is NOT spike-driven: {len(self.violations)} layer(s) received "
                         f"non-binary input: {_names(self.violations)}")
        elif self.proven:
            lines.append(f"verdict: {self.model} is spike-driven: every synaptic layer after the encoding layer "
                         "received only 0/1 (read-out head exempt, as in Eq. 20), and is built to: its input is "
                         "spikes moved only by ops that keep 0/1, whatever the input and weights")
        else:
            lines.append(f"verdict: {self.model} received only 0/1 on this input, but {len(self.unproven)} "
                         f"layer(s) are not fed spikes by construction ({_names(self.unproven, built=True)}): "
                         "another input may give them other values")
        if self.silent:
            covered = all(r.proven for r in self.silent)
            lines.append(f"{'note' if covered else 'warning'}: {len(self.silent)} synaptic layer(s) received "
                         f"nothing but zeros ({_names(self.silent)}): "
                         + ("what they are fed is proven by construction, not by this run" if covered else
                            "nothing fired into them, so this run does not show what they are fed; give real "
                            "data, trained weights or a model in train mode"))
        if self.readout:
            heads = ", ".join(f"{r.name} ({r.readout_by})" for r in self.readout)
            lines.append(f"read-out (exempt, as Eq. 20): {heads}")
        lines += [f"sample: {self.sample}"] if self.sample else []
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _names(layers: list[LayerVerdict], built: bool = False) -> str:
    """The first six names, with the op that built their input when ``built``."""
    def name(r: LayerVerdict) -> str:
        ops = sorted({f"{i.built} ({i.built_by})" for i in r.inputs if i.built not in (None, "spike")})
        return f"{r.name}: {', '.join(ops)}" if built and ops else r.name
    return ", ".join(map(name, layers[:6])) + (", ..." if len(layers) > 6 else "")


def _layer_verdict(rec: LayerProbe, encoding: bool) -> LayerVerdict:
    op = rec.stages[0].label if rec.product else "attention" if isinstance(rec.module, SpikeQKV) \
        else "linear" if isinstance(rec.module, nn.Linear) else "conv"
    role = "readout" if rec.readout else "encoding" if encoding else "synaptic"
    inputs = [InputReport(n, s.kind, s.min, s.max, s.firing_rate, s.nonzero_rate,
                          None if s.distinct_overflow else dict(sorted(s.counts.items())),
                          None if s.built is None else s.built.name, None if s.built is None else s.built.origin)
              for n, s in zip(rec.input_names, rec.inputs)]
    return LayerVerdict(rec.name, op, role, inputs, rec.readout_by, rec.product)


def certify(probe: SynapticProbe, model_name: str = "") -> Certificate:
    """The certificate for what ``probe`` recorded; the probe's encoding layer (the first synaptic layer
    called, or none for a model that encodes by an embedding lookup, such as the text model) is exempt."""
    probe.require_run()
    first = probe.encoding_layer
    return Certificate(model_name, [_layer_verdict(r, r is first) for r in probe.judged])


@torch.no_grad()
def verify_model(model: nn.Module, inputs: Tensor | dict | Iterable, model_name: str | None = None,
                 progress: bool = False, readout: str | Iterable[str] | None = None) -> Certificate:
    """Run ``model`` (in its current mode) on ``inputs`` (a tensor or text batch dict, or an iterable
    of them or of ``(x, y)`` pairs) and certify whether it is spike-driven (see ``certify``), following
    how every input was built (``provenance``).  ``progress``: a progress bar over the batches.  ``readout``:
    the module(s) that are the read-out head (default: found by ``SynapticProbe``)."""
    batches = [inputs] if isinstance(inputs, (Tensor, dict)) else inputs
    with SynapticProbe(model, provenance=True, readout=readout) as probe:
        for x in progress_bar(batches, "verify", enabled=progress):
            run_model(model, x)
    return certify(probe, model_name or type(probe.model).__name__)


# ---------------------------------------------------------------- Fig. 3

_COLORS = {"spike": "tab:blue", "integer": "tab:red", "real": "tab:gray"}


def block_histogram(cert: Certificate, prefix: str) -> tuple[dict[float, int], bool]:
    """Histogram of the inputs to the conv/linear layers whose name starts with ``prefix``,
    and whether any of them had too many distinct values to be counted."""
    layers = [r for r in cert.layers if r.name.startswith(prefix) and r.op != "attention"]
    if not layers:
        raise InputError(f"{cert.model} has no conv/linear layer named {prefix}*")
    hist: dict[float, int] = {}
    for i in (i for r in layers for i in r.inputs):
        for v, c in (i.counts or {}).items():
            hist[v] = hist.get(v, 0) + c
    return dict(sorted(hist.items())), any(i.counts is None for r in layers for i in r.inputs)


def plot_fig3(certs: list[Certificate], prefix: str, path: str) -> str:
    """The paper's Fig. 3 as a PNG: per model, the histogram of the values fed to the
    conv/linear layers of one block (``prefix``, e.g. ``"blocks.7."``) and the mean input of
    every synaptic layer (the firing rate where the input is spikes)."""
    from matplotlib.patches import Patch

    fig, axes = pyplot().subplots(2, len(certs), figsize=(7 * len(certs), 8), squeeze=False)
    for col, cert in enumerate(certs):
        hist, partial = block_histogram(cert, prefix)
        values, counts = list(hist), list(hist.values())
        nonzero = 1 - hist.get(0.0, 0) / max(sum(counts), 1)
        ax = axes[0, col]
        ax.bar(values, counts, width=0.8, color=_COLORS["spike" if set(values) <= {0.0, 1.0} else "integer"])
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)  # bars from 1 up, so {0, 1} and {0, ..., 16} read alike
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
        ax.set_xlabel(f"input value of the conv/linear layers of {prefix.rstrip('.')}")
        ax.set_ylabel("number of inputs (log)")
        ax.set_title(f"({chr(ord('a') + col)}) {cert.model}: values {_value_set(values)}", fontsize=10)
        note = f"nonzero ratio {nonzero:.1%}" if hist else "nothing to count"
        ax.text(0.98, 0.95, note + ("\n(some inputs not counted: reals or >64 values)" if partial else ""),
                transform=ax.transAxes, ha="right", va="top", fontsize=9)
        # The encoding layer's real input has no firing rate; the head is the read-out.
        layers = [r for r in cert.layers if r.role == "synaptic"]
        kinds = ["spike" if r.spike_input else "real" if any(i.kind == "real" for i in r.inputs) else "integer"
                 for r in layers]
        ax = axes[1, col]
        ax.bar(range(len(layers)), [sum(i.firing_rate for i in r.inputs) / len(r.inputs) for r in layers],
               color=[_COLORS[k] for k in kinds])
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([r.name for r in layers], rotation=90, fontsize=4.5)
        ax.set_ylabel("mean input value (= firing rate for spikes)")
        ax.set_title(f"{cert.model}: input of every synaptic layer after the encoding layer", fontsize=10)
        ax.legend(handles=[Patch(color=_COLORS[k], label=k) for k in sorted(set(kinds))], fontsize=8,
                  loc="upper left")
    fig.suptitle("Spike-driven behaviour (Spikingformer paper, Fig. 3)" +
                 "".join(f"\n{n}" for n in dict.fromkeys(n for c in certs for n in c.notes)), fontsize=10)
    save_figure(fig, path, dpi=150)
    return path


def counterpart(name: str) -> str | None:
    """The Spikformer for a Spikingformer (and back) of the same size, if registered."""
    if name.startswith("spikingformer_"):
        other = "spikformer_" + name.removeprefix("spikingformer_").removeprefix("dagger_")
    elif name.startswith("spikformer_") and not name.startswith("spikformer_v2_"):
        other = "spikingformer_" + name.removeprefix("spikformer_")
    else:
        return None
    return other if other in list_models() else None


def block_prefix(cert: Certificate, block: str | None) -> str:
    """The layer-name prefix of the block ``--plot`` histograms: ``--block N`` is ``blocks.N.``, any other
    ``--block`` a prefix as given (``stages.2.`` of a user's model); by default the last ``blocks.N.``, or
    for a model named otherwise the first numbered level of its last synaptic layer (``block.3.fc`` -> ``block.3.``)."""
    if block is not None:
        return f"blocks.{block}." if block.isdigit() else block if block.endswith(".") else block + "."
    ids = {int(r.name.split(".")[1]) for r in cert.layers
           if r.name.startswith("blocks.") and r.name.split(".")[1].isdigit()}
    if ids:
        return f"blocks.{max(ids)}."
    for r in reversed([r for r in cert.layers if r.role == "synaptic"]):
        parts = r.name.split(".")
        numbered = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        if numbered:
            return ".".join(parts[:numbered[0] + 1]) + "."
    raise InputError(f"{cert.model} has no numbered blocks (`blocks.N.` layers): pass --block PREFIX")
