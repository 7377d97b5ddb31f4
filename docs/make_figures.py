"""Regenerate the figures of the docs with the library's own commands (not run by the test suite: a few minutes).

    PYTHONPATH=src python docs/make_figures.py            # energy and Fig. 3 figures (a minute or two)
    PYTHONPATH=src python docs/make_figures.py --demo     # and the demo's training and per-step curves (2-3 min more)

Every figure is of an untrained model on random N(0,1) input (seed 0), except the --demo ones, which train the
demo's model on the bundled 8x8 digits; none is drawn by hand.  The PNGs land in docs/img/.
"""
from __future__ import annotations

import argparse
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
        if args.demo:  # a training curve and the read-out after each time step
            run = f"{tmp}/demo"
            spikingformer("demo", "--output", run)
            shutil.copy(Path(run) / "metrics.png", IMG / "demo_metrics.png")
            spikingformer("eval", "--checkpoint", f"{run}/last.pt", "--early-exit", "0.5", "0.7", "0.9", "0.99",
                          "--plot", str(IMG / "demo_per_step.png"))
    for png in IMG.glob("*.png"):
        if png.name != "cifar10_speedrun_h100.png":
            shrink(png)


def shrink(png: Path) -> None:
    """A 256-colour palette: the same picture in well under 200 KB."""
    from PIL import Image

    Image.open(png).convert("RGB").quantize(colors=256).save(png, optimize=True)


if __name__ == "__main__":
    main()
