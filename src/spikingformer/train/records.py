"""A run's records: ``metrics.jsonl`` (one JSON object per epoch), ``metrics.png`` (loss and accuracy curves) and
``summary.json``, all in the run's output folder and all rewritten atomically."""
from __future__ import annotations

from pathlib import Path

from ..utils.outputs import pyplot, save_figure, write_json

__all__ = ["MetricsLog", "plot_curves"]


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss (train/val) and accuracy (train when known, val) against epochs, as a PNG."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    ep = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(ep, [h["val_loss"] for h in history], "s-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (train: with smoothing/mixup targets)", title="loss")
    if all("train_acc" in h for h in history):
        ax_acc.plot(ep, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(ep, [100 * h["val_acc"] for h in history], "s-", label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


class MetricsLog:
    """Keeps ``metrics.jsonl`` and ``metrics.png`` equal to the run's history (only on the main process).

    The history lives in the checkpoint; rewriting the files from it (rather than appending)
    means a run killed after logging an epoch but before checkpointing it never logs that
    epoch twice when resumed.
    """

    def __init__(self, out: Path, enabled: bool = True, title: str = ""):
        self.out, self.enabled, self.title = Path(out), enabled, title

    def restore(self, history: list[dict]) -> None:
        if history:
            self.write(history)

    def write(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "metrics.jsonl", history, lines=True)
        plot_curves(history, self.out / "metrics.png", self.title)

    def summary(self, summary: dict) -> None:
        if self.enabled:
            write_json(self.out / "summary.json", summary)
