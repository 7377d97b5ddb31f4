"""Theoretical energy per image (Spikingformer Eq. 19-20, SPEC §7), measured from real forward passes.

Every synaptic product the model performs is recorded by ``SynapticProbe``: each
Conv/Linear and the two matrix products of the attention ``Q K^T V`` (``SpikeQKV``), in
the order actually computed.  A product whose input is binary spikes costs
``SOP = fr * T * FLOPs`` accumulates (Eq. 19); any other product costs ``T * FLOPs``
multiply-accumulates.  ``FLOPs`` is the dense MAC count of one time step for one image
and ``fr`` the measured firing rate of the input.  Energy
``E = E_AC * sum(ACs) + E_MAC * sum(MACs)`` (Eq. 20) with ``E_AC = 0.9 pJ`` and
``E_MAC = 4.6 pJ`` (45 nm).  BatchNorm is not counted: it folds into the preceding
conv/linear at deployment (see ``deploy.fold_bn``), and the elementwise scale ``s`` of
the attention folds into the next neuron's threshold.

Counting the attention product (``Q``, ``K``, ``V`` spike matrices of ``N`` tokens x ``d``
channels per head; ``SpikeQKV.kv_first`` picks the order):

- ``K^T V`` (computed first when ``N > d``): a product of two spike matrices.  An
  event-driven core walks the spikes of one factor and accumulates the matching row of
  the other, so it walks the sparser one: ``min(fr_K, fr_V) * T * FLOPs`` ACs, ``FLOPs =
  d * N * d`` per head.  As for a conv's weights, the other factor is counted dense.
  This is also the official Spikingformer energy script's choice.
- ``Q (K^T V)``: ``K^T V`` is a matrix of integer counts, ``Q`` is spikes: every spike of
  ``Q`` adds one integer row, ``fr_Q * T * FLOPs`` ACs with ``FLOPs = N * d * d``.
- The other order, ``(Q K^T) V``: ``min(fr_Q, fr_K)`` for ``Q K^T`` and ``fr_V`` for the
  product of the integer ``Q K^T`` with ``V``, each over ``N * N * d`` per head.

In general a product costs ACs when at least one factor is observed to be binary (driven
by the sparsest binary factor) and MACs otherwise; the intermediate product is never
assumed binary.  Each input's firing rate is pooled over every batch, as for any layer.  Padded
text batches can run the attention in both orders (``N`` on either side of ``d``): each
order's count is then its own row, priced at those pooled rates, an approximation where the
batches of one order fire more than those of the other.

Attention written as bare tensor ops rather than a module (a peer's ``q @ k.transpose(-2, -1) @ v``,
``einsum``, SDSA's Hadamard products ``q * k`` and column sums) is priced by the same rule, one row per op,
named by the module that ran it (``blocks.0.attn.matmul#1``; ``tensor_ops``): dense count = the op's
multiplies (a sum: its input's elements), its inputs the activations it multiplies.  Ops inside a synaptic
module (``SpikeQKV``'s own products), a neuron or the head are not counted again.

Integer-valued inputs (Spikformer's SEW residual sums, ``{0, 1, ..., 2L + 1}``) have two
readings, the two calculations the official energy script offers for the paper's recalculation
of Spikformer (its ``spike_rate``, Appendix G calculations 1 and 2):

- ``integer_inputs="mac"`` (default, SPEC §7, calculation 2): an integer times a float weight is
  a multiplication, so the layer costs ``T * FLOPs`` MACs, as for a real input;
- ``integer_inputs="ac"`` (calculation 1): a value ``k`` is ``k`` spikes arriving together, so
  the layer costs ``mean(input) * T * FLOPs`` ACs; ``fr`` is then that mean, which may exceed 1.

The classification head (the read-out, left out of Eq. 20: our ``ClassifierHead``, a peer model's last
synaptic layer fed by a pooling or mean, or the modules named by ``readout=``) is reported as its own rows
(``readout``) and *included* in ``total_mJ``, as MACs unless its input is spikes (only the
SN-FC-AvgPooling head of Eq. 18): deployed hardware does run it.  ``backbone_mJ`` is the
total without it, the quantity Eq. 20 defines, and ``readout_mJ`` the difference.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from ..utils.errors import InputError
from ..utils.outputs import pyplot, save_figure, write_csv, write_json
from ..utils.progress import progress_bar
from .batches import run_model
from .probe import SynapticProbe, verdict
from .stats import LayerProbe, Stage

__all__ = ["E_MAC_PJ", "E_AC_PJ", "LayerEnergy", "EnergyReport", "estimate_energy", "energy_from_probe",
           "stage_energy", "policy_energy"]

E_MAC_PJ = 4.6  # 45 nm, Horowitz 2014, as the paper
E_AC_PJ = 0.9
COLUMNS = ("name", "op", "kind", "readout", "fr", "nonzero", "flops", "ac", "mac", "uJ")
INTEGER_INPUTS = ("mac", "ac")


@dataclass
class LayerEnergy:
    """One synaptic product: a conv/linear, or one of the two products of ``Q K^T V``."""

    name: str
    op: str                 # "conv", "linear", "K^T V", "Q (K^T V)", "Q K^T", "(Q K^T) V"; a bare op: "matmul", ...
    kind: str               # "spike" (ACs), "integer" (MACs, or ACs with integer_inputs="ac") or "real" (MACs)
    readout: bool           # inside the classification head (Eq. 20 leaves it out)
    fr: float | None        # mean of the input driving the ACs (spikes: the firing rate); None for a MAC product
    nonzero: float          # fraction of non-zero elements of that input
    flops: float            # dense MACs per image and time step (Eq. 19's FLOPs)
    ac: float               # accumulates per image: fr * T * FLOPs
    mac: float              # multiply-accumulates per image: T * FLOPs
    uJ: float               # energy per image, microjoules


def _check_integer_inputs(integer_inputs: str) -> None:
    if integer_inputs not in INTEGER_INPUTS:
        raise InputError(f"integer_inputs must be one of {', '.join(INTEGER_INPUTS)}, got {integer_inputs!r}")


def stage_energy(rec: LayerProbe, stage: Stage, images: int, T: int, e_mac: float = E_MAC_PJ,
                 e_ac: float = E_AC_PJ, integer_inputs: str = "mac") -> LayerEnergy:
    """Eq. 19 for one product of one layer, per image (see the module docstring for the rule)."""
    flops = stage.macs / (images * T)  # a layer run once per image (e.g. AvgPool-FC) shows its count / T
    events = _event_operands(rec, stage, integer_inputs)
    if events:
        driver = min((rec.inputs[i] for i in events), key=lambda s: s.firing_rate)
        fr = driver.firing_rate
        ac, mac = fr * T * flops, 0.0
    else:  # a real factor makes the product real-valued
        driver = min((rec.inputs[i] for i in stage.operands), key=lambda s: s.kind != "real")
        fr, ac, mac = None, 0.0, T * flops
    return LayerEnergy(rec.name, stage.label, driver.kind, rec.readout, fr, driver.nonzero_rate, flops, ac, mac,
                       (e_ac * ac + e_mac * mac) * 1e-6)


def _event_operands(rec: LayerProbe, stage: Stage, integer_inputs: str) -> list[int]:
    """The inputs of ``stage`` that arrive as events (spikes, or counts with ``integer_inputs="ac"``): the
    product costs accumulates driven by the sparsest of them, or multiply-accumulates when there is none."""
    _check_integer_inputs(integer_inputs)
    return [i for i in stage.operands if rec.inputs[i].binary
            or (integer_inputs == "ac" and rec.inputs[i].integer and rec.inputs[i].min >= 0)]


def policy_energy(probe: SynapticProbe, images: int, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ,
                  integer_inputs: str = "mac") -> list[float] | None:
    """Backbone energy per image (Eq. 20, µJ) of each policy ``probe.charge`` counted over ``images``
    samples, or None where a layer ran without ``probe.per_step`` or its inputs were not laid out per
    time step.  Each product is priced as ``stage_energy`` prices it, from the sample-steps the policy ran
    only: accumulates from the events of its sparsest event input there, multiply-accumulates by the share
    of the sample-steps it ran.  So a policy that stops every sample after ``t`` steps costs what
    ``estimate_energy`` gives the model run for ``t`` steps."""
    layers = [r for r in probe.priced if not r.readout]
    if probe.steps_run is None or any(not r.per_step or not r.charged for r in layers):
        return None
    share = probe.steps_run / probe.steps_seen  # [P] float64
    pj = torch.zeros_like(share)
    for rec in layers:
        for stage in rec.stages:
            events = _event_operands(rec, stage, integer_inputs)
            if events:  # the fraction of the dense products that an event drove, in the sample-steps run
                fired = torch.stack([rec.charged[i] / rec.inputs[i].numel for i in events])
                pj += e_ac * fired.amin(0) * stage.macs / images
            else:
                pj += e_mac * share * stage.macs / images
    return (pj * 1e-6).tolist()


@dataclass
class EnergyReport:
    """Per-layer and total energy per sample.  ``mac``/``ac`` are operation counts per sample.

    A sample is an image (``[B, C, H, W]``, or ``[T, B, 2, H, W]`` event frames) or, for a text
    model, a token sequence (``unit="sequence"``); ``images`` counts the samples measured."""

    model: str
    T: int
    images: int
    e_mac: float
    e_ac: float
    layers: list[LayerEnergy]
    spike_driven: bool
    notes: list[str] = field(default_factory=list)
    proven: bool | None = None  # and every layer built to receive spikes (``provenance``); None: not traced
    unit: str = "image"
    integer_inputs: str = "mac"
    model_config: dict = field(default_factory=dict)  # the options the model was built with (its size, T, ...)
    sample: str = ""  # which samples of which data the figures are measured on (``loading.Prepared.sample``)

    @property
    def mac(self) -> float:
        return sum(r.mac for r in self.layers)

    @property
    def ac(self) -> float:
        return sum(r.ac for r in self.layers)

    @property
    def total_mJ(self) -> float:
        return (self.e_ac * self.ac + self.e_mac * self.mac) * 1e-9  # pJ -> mJ

    @property
    def readout_mJ(self) -> float:
        return sum(r.uJ for r in self.layers if r.readout) * 1e-3

    @property
    def backbone_mJ(self) -> float:
        """Without the read-out head: the quantity of Eq. 20."""
        return self.total_mJ - self.readout_mJ

    def to_dict(self) -> dict:
        return dict(model=self.model, T=self.T, unit=self.unit, images=self.images, e_mac_pJ=self.e_mac,
                    e_ac_pJ=self.e_ac,
                    mac=self.mac, ac=self.ac, total_mJ=self.total_mJ, backbone_mJ=self.backbone_mJ,
                    readout_mJ=self.readout_mJ, spike_driven=self.spike_driven, proven=self.proven, notes=self.notes,
                    integer_inputs=self.integer_inputs, model_config=self.model_config, sample=self.sample,
                    layers=[asdict(r) for r in self.layers])

    def table(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':{width}s}  {'op':10s} {'kind':7s} {'fr':>6s} {'FLOPs/step':>10s} "
                 f"{'AC':>10s} {'MAC':>10s} {'uJ':>10s}"]
        for r in self.layers:
            fr = f"{r.fr:.4f}" if r.fr is not None else "-"
            lines.append(f"{r.name:{width}s}  {r.op:10s} {r.kind:7s} {fr:>6s} {_si(r.flops):>10s} "
                         f"{_si(r.ac):>10s} {_si(r.mac):>10s} {r.uJ:10.3f}" + ("  (readout)" if r.readout else ""))
        lines += [
            f"total per {self.unit}: {self.ac / 1e9:.6g} G AC x {self.e_ac:g} pJ + {self.mac / 1e9:.6g} G MAC x "
            f"{self.e_mac:g} pJ = {self.total_mJ:.6g} mJ",
            f"  of which read-out head {self.readout_mJ:.6g} mJ; without it (Eq. 20) {self.backbone_mJ:.6g} mJ",
            f"  T={self.T}, {self.images} {self.unit}(s), spike-driven: {verdict(self.spike_driven, self.proven)}"
            + (", integer inputs counted as ACs" if self.integer_inputs == "ac" else "")]
        lines += [f"sample: {self.sample}"] if self.sample else []
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def write_json(self, path: str) -> None:
        write_json(path, self.to_dict())

    def write_plot(self, path: str) -> None:
        """Two panels in network order: each layer's input firing rate (the ``fr`` of Eq. 19; a product
        whose input is not spikes has none) and its energy per sample, coloured by AC or MAC."""
        from matplotlib.patches import Patch


        plt = pyplot()
        rows, x = self.layers, range(len(self.layers))
        colour = {"spike": "tab:blue", "integer": "tab:orange", "real": "tab:red"}
        colours = [colour[r.kind] for r in rows]
        hatches = ["//" if r.readout else "" for r in rows]
        fig, (ax_fr, ax_e) = plt.subplots(2, 1, sharex=True, figsize=(max(8.0, 2 + 0.16 * len(rows)), 7))
        for ax, values in ((ax_fr, [r.fr or 0.0 for r in rows]), (ax_e, [r.uJ for r in rows])):
            for xi, v, c, h in zip(x, values, colours, hatches):
                ax.bar(xi, v, color=c, hatch=h, edgecolor="white" if h else c, linewidth=0)
            ax.grid(axis="y", alpha=0.3)
        ax_fr.set(ylabel="input firing rate", title=f"{self.model}, T={self.T}: spike inputs' firing rates")
        ax_e.set(ylabel=f"uJ per {self.unit} (log)", yscale="log",
                 title=f"energy: {self.total_mJ:.4g} mJ per {self.unit}, {self.backbone_mJ:.4g} mJ without the "
                       f"read-out (Eq. 20)")
        ax_e.set_xticks(list(x), [f"{r.name} {r.op}" if r.op not in ("conv", "linear") else r.name for r in rows],
                        rotation=90, fontsize=6)
        kinds = {r.kind for r in rows}
        def as_ac(k):
            return k == "spike" or (k == "integer" and self.integer_inputs == "ac")

        legend = [Patch(color=colour[k], label=f"{k} input: {'AC' if as_ac(k) else 'MAC'}, "
                                               f"{self.e_ac if as_ac(k) else self.e_mac:g} pJ")
                  for k in colour if k in kinds]
        if any(r.readout for r in rows):
            legend.append(Patch(facecolor="grey", hatch="//", edgecolor="white", label="read-out head"))
        ax_e.legend(handles=legend, fontsize=7, loc="upper right")
        save_figure(fig, path)

    def write_csv(self, path: str) -> None:
        write_csv(path, list(COLUMNS), ([asdict(r)[c] for c in COLUMNS] for r in self.layers))


def _si(x: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3f}{suffix}"
    return f"{x:.0f}"


def energy_from_probe(probe: SynapticProbe, images: int, T: int, e_mac: float = E_MAC_PJ,
                      e_ac: float = E_AC_PJ, model_name: str = "", integer_inputs: str = "mac") -> EnergyReport:
    """Turn what ``probe`` recorded over ``images`` images at ``T`` steps into an ``EnergyReport``."""
    probe.require_run()
    rows = [stage_energy(rec, st, images, T, e_mac, e_ac, integer_inputs) for rec in probe.priced
            for st in rec.stages]
    return EnergyReport(model_name, T, images, e_mac, e_ac, rows, probe.spike_driven, integer_inputs=integer_inputs,
                        proven=probe.proven if probe.provenance is not None else None)


def steps_and_samples(x: Tensor | dict, T: int | None, time_major: bool | None, model: nn.Module) -> tuple[int, int]:
    """``(T, samples)`` of one input batch: ``[T, B, ...]`` if time-major, else ``[B, ...]`` (or a text
    batch, a dict of ``forward`` keyword inputs) repeated T times."""
    if isinstance(x, dict):
        time_major, x = False, x["input_ids"]
    time_major = x.dim() == 5 if time_major is None else time_major  # SPEC §1: 5-d inputs are [T, B, C, H, W]
    if time_major:
        if T is not None and T != x.shape[0]:
            raise InputError(f"T={T} but the time-major input has {x.shape[0]} steps (shape {tuple(x.shape)})")
        return x.shape[0], x.shape[1]
    model_T = getattr(model, "T", None)
    if T and model_T and T != model_T:
        raise InputError(f"T={T} but {type(model).__name__} runs {model_T} steps on a static input: "
                         f"build it with T={T}")
    T = T or model_T
    if not T:
        raise InputError(f"cannot tell the number of time steps of {type(model).__name__}: pass T=")
    return T, x.shape[0]


@torch.no_grad()
def estimate_energy(model: nn.Module, inputs: Tensor | dict | Iterable, *, T: int | None = None,
                    time_major: bool | None = None, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ,
                    model_name: str | None = None, unit: str = "image", integer_inputs: str = "mac",
                    progress: bool = False, readout: str | Iterable[str] | None = None) -> EnergyReport:
    """Run ``model`` on ``inputs`` (a tensor or text batch dict, or an iterable of them or of
    ``(x, y)`` pairs) and return its energy per image, or per ``unit`` (Eq. 19-20).

    The model runs in the mode it is in: call ``model.eval()`` first for deployment
    figures.  ``T`` defaults to the input's time axis (5-d inputs, or ``time_major=True``)
    or to ``model.T`` for static images.  ``integer_inputs``: ``"mac"`` or ``"ac"``, how integer-valued
    inputs count (module docstring).  ``progress``: a progress bar over the batches.  ``readout``: the
    module(s) that are the read-out head (default: found by ``SynapticProbe``).
    """
    _check_integer_inputs(integer_inputs)  # before the forward passes, not after
    if e_mac < 0 or e_ac < 0:
        raise InputError(f"energies per operation must be >= 0 pJ, got e_mac={e_mac}, e_ac={e_ac}")
    batches = [inputs] if isinstance(inputs, (Tensor, dict)) else inputs
    images, steps = 0, set()
    with SynapticProbe(model, provenance=True, readout=readout) as probe:
        for x in progress_bar(batches, "energy", enabled=progress):
            x = x[0] if isinstance(x, (tuple, list)) else x
            t, b = steps_and_samples(x, T, time_major, model)
            steps.add(t)
            images += b
            run_model(model, x)
    if not images:
        raise InputError("no input: give at least one non-empty batch")
    if len(steps) > 1:
        raise InputError(f"batches with different numbers of time steps {sorted(steps)}: estimate them apart")
    report = energy_from_probe(probe, images, steps.pop(), e_mac, e_ac, model_name or type(probe.model).__name__,
                               integer_inputs)
    report.unit = unit
    cfg = getattr(model, "cfg", None)  # a JSON report names the model's size, not only its name
    report.model_config = json.loads(json.dumps(asdict(cfg), default=str)) if is_dataclass(cfg) else {}
    return report
