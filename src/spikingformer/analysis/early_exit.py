"""Early exit (``eval --early-exit``): each sample stops at the first time step its read-out is sure of.

Neurons never look ahead, so a sample stopped after ``t`` steps is answered exactly as a run of ``t``
steps would answer it, and one pass of all ``T`` steps scores every confidence threshold at once.
A threshold read off the split that scores it flatters itself; ``--calibrate`` chooses it on one seeded
part of the split (``calibration_split``, ``choose``) and scores it on the other, and ``merge`` still
gives the whole split's figures from the two passes.
"""
from __future__ import annotations

import torch

from ..utils.errors import InputError
from ..utils.outputs import pyplot, save_figure

__all__ = ["early_exit", "score_policies", "calibration_split", "choose", "merge", "plot_steps"]


def early_exit(steps: torch.Tensor, y: torch.Tensor, confidence: float) -> tuple[torch.Tensor, ...]:
    """Correct answers, time steps used, and each sample's last step (``[B]``, 0-based) when each sample
    stops at the first step whose read-out (``steps``, logits ``[T, B, classes]`` after each step) gives its
    top class a softmax probability of at least ``confidence``, or after the last step."""
    probs, pred = steps.softmax(-1).max(-1)                            # [T, B]
    sure = probs >= confidence
    sure[-1] = True
    stop = sure.to(torch.uint8).argmax(0)                              # the first sure step of each sample
    answer = pred.gather(0, stop[None])[0]
    return (answer == y).sum().double(), (stop + 1).sum().double(), stop


def score_policies(steps: torch.Tensor, y: torch.Tensor, exit_at: tuple[float, ...], probe=None) -> list[torch.Tensor]:
    """Correct answers and time steps used by each ``early_exit`` policy of ``exit_at`` on one batch; a
    ``probe.SynapticProbe`` is charged with the sample-steps each policy ran, then with all of them."""
    sums, stops = [], []
    for p in exit_at:
        correct, used, stop = early_exit(steps, y, p)
        sums += [correct, used]
        stops.append(stop)
    if probe is not None:
        stops.append(torch.full_like(stops[0], len(steps) - 1))
        probe.charge(torch.arange(len(steps), device=steps.device)[None, :, None] <= torch.stack(stops)[:, None])
    return sums


def calibration_split(n: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` sample indices: ``round(fraction * n)`` to choose a threshold on, the rest to
    score it on (both sorted, so each part is read in the split's own order)."""
    if not 0 < fraction < 1:
        raise InputError(f"--calibrate is the fraction of the split to choose the threshold on, in (0, 1); "
                         f"got {fraction}")
    k = round(fraction * n)
    if not 0 < k < n:
        raise InputError(f"--calibrate {fraction} of {n} samples leaves one part empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:k]), sorted(order[k:])


def choose(policies: list[dict], all_steps_acc: float, max_drop: float) -> dict | None:
    """The policy (an entry of ``evaluate``'s ``early_exit``) that costs least, in backbone energy where it
    was measured and else in mean time steps, among those whose top-1 is at most ``max_drop`` (a fraction)
    below that of running every step; None when none is."""
    fit = [p for p in policies if p["val_acc"] >= all_steps_acc - max_drop - 1e-12]
    return min(fit, key=lambda p: (p.get("backbone_uJ", p["mean_steps"]), -p["val_acc"]), default=None)


def merge(parts: list[dict]) -> dict:
    """The whole split's figures from ``evaluate`` on disjoint parts of it: means weighted by images."""
    n = sum(p["val_images"] for p in parts)
    out = {"val_images": n}
    for key in ("val_loss", "val_acc", "val_acc5", "backbone_uJ"):
        if all(key in p for p in parts):
            out[key] = sum(p[key] * p["val_images"] for p in parts) / n
    if all("val_acc_per_step" in p for p in parts):
        out["val_acc_per_step"] = [sum(p["val_acc_per_step"][t] * p["val_images"] for p in parts) / n
                                   for t in range(len(parts[0]["val_acc_per_step"]))]
    return out


def plot_steps(acc: list[float], path: str, title: str, exits: list[dict] = (), chosen: float | None = None) -> None:
    """Top-1 accuracy of the read-out after each time step, and of the ``early_exit`` policies at their mean
    time steps (labelled with their confidence and energy; the ``chosen`` one ringed), as a figure (PNG, PDF
    or SVG by ``path``'s suffix)."""
    import textwrap

    from matplotlib.ticker import MaxNLocator


    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], marker="o", label="every sample stopped after t steps")
    if exits:
        ax.plot([e["mean_steps"] for e in exits], [100 * e["val_acc"] for e in exits], "s", color="C1",
                label="early exit (confidence: backbone energy per image)")
        for e in exits:
            label = f"{e['confidence']:g}" + (f": {e['backbone_uJ']:.3g} uJ" if "backbone_uJ" in e else "")
            # written vertically, into the plot: policies a fraction of a step apart keep their labels apart
            low = e["val_acc"] < 0.5
            ax.annotate(label, (e["mean_steps"], 100 * e["val_acc"]), fontsize=6.5, rotation=90, ha="center",
                        va="bottom" if low else "top", textcoords="offset points", xytext=(0, 7 if low else -7))
        pick = [e for e in exits if e["confidence"] == chosen]
        if pick:
            ax.plot(pick[0]["mean_steps"], 100 * pick[0]["val_acc"], "o", markersize=12, markerfacecolor="none",
                    color="C3", label="chosen on the calibration part")
        ax.legend(fontsize=7, loc="center right")
        ax.margins(x=0.15)  # room for the last square's label
    ax.set(xlabel="time steps given to the read-out", ylabel="top-1 accuracy (%)")
    ax.set_title(textwrap.fill(title, 60), fontsize=8)  # split names are long: wrapped, not cut at the edge
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    save_figure(fig, path)
