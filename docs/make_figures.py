"""Regenerate the figures of the docs with the library's own commands (not run by the test suite: a few minutes).

    PYTHONPATH=src python docs/make_figures.py            # energy, Fig. 3 and architecture figures (2-3 min)
    PYTHONPATH=src python docs/make_figures.py --demo     # and the demo's training and per-step curves (2-3 min more)

Every figure is of an untrained model on random N(0,1) input (seed 0), except the --demo ones, which train the
demo's model on the bundled 8x8 digits; none is drawn by hand.  The PNGs land in docs/img/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMG = Path(__file__).resolve().parent / "img"


def spikingformer(*args: str, ok=(0,)) -> None:
    cmd = [sys.executable, "-m", "spikingformer.cli", *args]
    print("$ spikingformer", " ".join(args), flush=True)
    done = subprocess.run(cmd)
    if done.returncode not in ok:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", action="store_true", help="also train the demo and draw its curves (1-2 min)")
    args = ap.parse_args()
    IMG.mkdir(exist_ok=True)
    # the per-layer input firing rate and energy (Eq. 19-20), Spikingformer against Spikformer V1 of one size
    spikingformer("energy", "--model", "spikingformer_4_384", "--plot", str(IMG / "energy_spikingformer_4_384.png"))
    spikingformer("energy", "--model", "spikformer_4_384", "--plot", str(IMG / "energy_spikformer_4_384.png"))
    # the paper's Fig. 3, Spikformer V1 beside Spikingformer: what the last block's synaptic layers receive
    # (verify exits 1: Spikformer is not spike-driven)
    with tempfile.TemporaryDirectory() as tmp:
        spikingformer("verify", "--model", "spikformer_4_384", "--plot", f"{tmp}/verify", ok=(1,))
        shutil.copy(Path(tmp) / "verify" / "fig3.png", IMG / "fig3_4_384.png")
        # the two architectures side by side: which synaptic layers see spikes (verify's certificates, as JSON)
        certs = []
        for name, code in (("spikingformer_4_384", 0), ("spikformer_4_384", 1)):
            spikingformer("verify", "--model", name, "--json", f"{tmp}/{name}.json", ok=(code,))
            certs.append(json.loads(Path(f"{tmp}/{name}.json").read_text()))
        architecture(certs, IMG / "architecture_4_384.png")
        if args.demo:  # a training curve and the read-out after each time step
            run = f"{tmp}/demo"
            spikingformer("demo", "--output", run)
            shutil.copy(Path(run) / "metrics.png", IMG / "demo_metrics.png")
            spikingformer("eval", "--checkpoint", f"{run}/last.pt", "--early-exit", "0.5", "0.7", "0.9", "0.99",
                          "--plot", str(IMG / "demo_per_step.png"))
    for png in IMG.glob("*.png"):
        if png.name != "cifar10_speedrun_h100.png":
            shrink(png)


_KIND_COLOURS = {"spike": "tab:blue", "integer": "tab:red", "real": "tab:gray"}


def architecture(certs: list[dict], path: Path) -> None:
    """One column per model: its synaptic layers in the order they run, each coloured by what its input was built
    as (spike, integer, real), from ``spikingformer verify --json``; the read-out head is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = max(len(c["layers"]) for c in certs)
    fig, axes = plt.subplots(1, len(certs), figsize=(5.2 * len(certs), 0.24 * rows + 1.2))
    for ax, cert in zip(axes, certs):
        for i, layer in enumerate(cert["layers"]):
            kinds = [inp["built"] if inp["built"] in _KIND_COLOURS else inp["kind"] for inp in layer["inputs"]]
            worst = max(kinds, key=list(_KIND_COLOURS).index)
            ax.barh(i, 1, color=_KIND_COLOURS[worst], edgecolor="white")
            label = layer["name"] + ("  (read-out)" if layer["role"] == "readout" else "")
            ax.text(0.02, i, label, va="center", fontsize=7, color="white")
        verdict = "spike-driven" if cert["spike_driven"] else "not spike-driven"
        ax.set(title=f"{cert['model']}: {verdict}", xlim=(0, 1), ylim=(rows - 0.5, -0.5), xticks=[], yticks=[])
    fig.legend(handles=[Patch(color=c, label=f"input built as {k}") for k, c in _KIND_COLOURS.items()],
               loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shrink(png: Path) -> None:
    """A 256-colour palette: the same picture in well under 200 KB."""
    from PIL import Image

    Image.open(png).convert("RGB").quantize(colors=256).save(png, optimize=True)


if __name__ == "__main__":
    main()
