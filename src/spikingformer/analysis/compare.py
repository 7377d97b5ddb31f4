"""The papers' comparison tables rebuilt: every model row, built, proven and priced by the same tools.

For each named model that a paper's table lists (``models.paper_facts``: Spikingformer Tables 2-3, Spikformer
V2's), ``compare`` gives one ``ComparisonRow`` per result reported: our parameter count beside the paper's, the
spike-driven verdict of the provenance proof with the first layer that breaks it and the op that made its input,
and the energy per image priced by Eq. 19-20 where it does not depend on a trained model's firing rates:

- at the firing rates an official repository publishes for its trained model (``published``);
- for an ANN (``ann=True``, T = 1): every synaptic layer sees real values, so every product is a MAC whatever
  the weights, and the count is exact.

Elsewhere the energy column stays empty: an untrained model's firing rates are not a trained one's, and a
figure priced at them would compare nothing with the paper's.  The verdict is a property of the construction:
it is proven on a one-image forward at a small input (train-mode BatchNorm, so the neurons fire) and holds for
the full-size model, whose layers are the same.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models import create_model, list_models, paper_facts
from ..utils.errors import MissingDependency
from ..utils.progress import progress_bar
from .energy import estimate_energy
from .published import PUBLISHED_RATES, energy_at_published_rates, published_rates
from .verify import Certificate, verify_model

__all__ = ["ComparisonRow", "compare", "verdict_words", "table_models", "buildable"]


@dataclass
class ComparisonRow:
    table: str
    model: str
    dataset: str
    T: int
    params_M: float
    paper_params_M: float | None
    spike_driven: bool
    proven: bool
    verdict: str                    # in words, with the first layer that breaks the property and why
    paper_top1: float | None
    paper_energy_mJ: float | None
    energy_mJ: float | None         # ours, where the firing rates are known (module docstring)
    energy_basis: str               # what ``energy_mJ`` is priced at, or why there is none

    def to_dict(self) -> dict:
        return asdict(self)


def table_models(pattern: str | None = None) -> list[str]:
    """The named vision models that a paper's table reports a result for (matching ``pattern``, a shell glob)."""
    return [n for n in list_models(pattern, "vision") if paper_facts(n).reported]


def buildable(name: str) -> bool:
    """Whether the named model builds here: False for one whose optional package is missing (SEW ResNet:
    SpikingJelly), which ``compare`` leaves out."""
    try:
        with torch.device("meta"):
            create_model(name)
    except MissingDependency:
        return False
    return True


def verdict_words(cert: Certificate) -> str:
    """``yes, proven`` / ``NO (N layers): first LAYER, integers|reals made by OP`` / ``yes on this input``
    (no value ranges: they vary with the input, the verdict does not)."""
    if cert.spike_driven:
        return "yes, proven" if cert.proven else f"yes on this input ({len(cert.unproven)} layers not built to)"
    first = cert.violations[0]
    bad = next(i for i in first.inputs if i.kind != "spike")
    made = f" made by {bad.built_by}" if bad.built_by else ""
    return f"NO ({len(cert.violations)} layers): first `{first.name}`, {bad.kind}s{made}"


def _small_input(model) -> torch.Tensor:
    """Two images of the model's size, or of four patches a side for the ImageNet-sized ones (a cheaper forward
    through the same layers, with tokens enough for a residual's spikes to meet)."""
    size = model.cfg.img_size if model.cfg.img_size <= 64 else 4 * model.patch_size
    torch.manual_seed(0)
    return torch.randn(2, model.cfg.in_chans, size, size)


def _energy(name: str, T: int, ann: bool) -> tuple[float | None, str]:
    if name not in PUBLISHED_RATES and not ann:
        return None, "no published firing rates"
    model = create_model(name, T=T).eval()
    x = torch.randn(1, *model.default_input_size)
    if ann:
        return estimate_energy(model, x, model_name=name).total_mJ, "an ANN, every product a MAC: exact at any weights"
    report = energy_at_published_rates(model, x, published_rates(name), T, name)
    return report.total_mJ, f"at the official firing rates ({PUBLISHED_RATES[name][0]})"


def _one_model(name: str) -> list[ComparisonRow]:
    facts = paper_facts(name)
    with torch.device("meta"):
        params = sum(p.numel() for p in create_model(name).parameters()) / 1e6
    model = create_model(name, T=1).train()
    cert = verify_model(model, _small_input(model), name)
    energies = {}
    rows = []
    for r in facts.reported:
        if r.energy_mJ is not None and r.T not in energies:  # only rows the paper prices are priced
            energies[r.T] = _energy(name, r.T, getattr(model.cfg, "ann", False))
        mj, basis = energies.get(r.T, (None, "the paper gives no energy for this row"))
        rows.append(ComparisonRow(r.table, name, r.dataset + (f" ({r.note})" if r.note else ""), r.T, params,
                                  facts.params_M, cert.spike_driven, cert.proven, verdict_words(cert), r.top1,
                                  r.energy_mJ, mj, basis))
    return rows


def compare(pattern: str | None = None, progress: bool = False) -> list[ComparisonRow]:
    """The rows of every table model matching ``pattern`` (``table_models``) that builds here (``buildable``), sorted
    by table (the Spikingformer paper's first), then dataset."""
    rows = []
    for name in progress_bar([n for n in table_models(pattern) if buildable(n)], "models", enabled=progress):
        rows += _one_model(name)
    return sorted(rows, key=lambda r: (not r.table.startswith("Spikingformer "), r.table, r.dataset, r.model, r.T))
