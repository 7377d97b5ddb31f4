"""``spikingformer demo``: train a small Spikingformer on scikit-learn's bundled 8x8 digits, on the CPU.

Nothing is downloaded.  The run goes through the full training engine (timm AdamW, cosine
schedule with warm-up, label smoothing, checkpoints, metrics), so it is also the quickest
end-to-end check of an installation.  It reports accuracy on a seeded, class-balanced
held-out validation split (the digits have no official one), the mean firing rate of the
spikes fed to synaptic layers, the energy per image of Eq. 19-20 and whether the model is
spike-driven.  ``--compare`` trains a Spikformer V1 of the same size beside it: the papers'
comparison (accuracy, energy, spike-driven or not) in miniature.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ..analysis.energy import E_AC_PJ, E_MAC_PJ, estimate_energy
from ..analysis.probe import verdict
from ..data import build_data
from ..train.classify import run
from ..train.config import TrainConfig
from ..utils.errors import InputError
from ..utils.outputs import check_output, write_json
from ..weights.loading import load_model

__all__ = ["demo_config", "register_cli"]

DEMO_EPOCHS = 12


# 1 block of 64, 4 heads, T = 4; pooling only before the last tokenizer conv: 8x8 digits -> 4x4 = 16 tokens
DEMO_ARGS = dict(depth=1, dim=64, num_heads=4, T=4, img_size=8, downsample=(False, False, False, True))
DEMO_MODEL = "spikingformer_4_256"  # its family; DEMO_ARGS give the size
# --compare: the paper's comparison in miniature (its Tables 1-2), Spikingformer against Spikformer V1
COMPARED = {DEMO_MODEL: "Spikingformer", "spikformer_4_384": "Spikformer (SEW)"}


def demo_config(epochs: int = DEMO_EPOCHS, output: str = "runs/demo", seed: int = 0, model: str = DEMO_MODEL):
    """``model`` (a Spikingformer, or with ``--compare`` also a Spikformer V1) at ``DEMO_ARGS``'s size and a
    schedule that fits one to two minutes on 2 cores."""
    return TrainConfig(
        model=model, model_args=dict(DEMO_ARGS),
        dataset="digits", val_split="holdout", holdout=360, seed=seed,
        batch_size=32, val_batch_size=360, workers=0,
        opt="adamw", lr=2e-3, weight_decay=0.01, smoothing=0.1,
        sched="cosine", epochs=epochs, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5, cooldown_epochs=0,
        sched_on_updates=True, amp="off", device="cpu", output=output, progress=False)


def _energy_mJ(cfg, out: Path) -> float:
    """Eq. 19-20 energy per image of the run's final model over its held-out digits."""
    model = load_model(str(out / "last.pt"))
    val = build_data(cfg, model.cfg.img_size).val
    return estimate_energy(model, torch.stack([val[i][0] for i in range(len(val))])).total_mJ


def _train(args: argparse.Namespace, model: str, out: Path) -> dict:
    cfg = demo_config(args.epochs, str(out), args.seed, model)
    s = run(cfg)
    # the registry name picks the family; DEMO_ARGS, the size
    return dict(model=model, label=COMPARED[model], model_args=dict(DEMO_ARGS), val_acc=s["final_val_acc"],
                best_val_acc=s["best_val_acc"], firing_rate=s["firing_rate"], energy_uJ=1e3 * _energy_mJ(cfg, out),
                spike_driven=s["spike_driven"], proven=s["proven"], params=s["params"], seconds=s["seconds"],
                val_split=s["val_split"], epochs=args.epochs, non_spike_layers=s["non_spike_layers"],
                probe_images=s["probe_images"])


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise InputError("--epochs must be >= 1")
    check_output("--json", args.json)
    check_output("--output", args.output, folder=True)
    # A model this small gains little from intra-op threads, and OpenMP threads that spin-wait
    # slow it down by orders of magnitude on a machine that is busy with anything else.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="spikingformer-demo-") as tmp:
        out = Path(args.output or tmp)
        if args.output and any((out / sub / "last.pt").exists() for sub in ("", *COMPARED)):
            raise InputError(f"{out} already holds a run; choose another --output")
        runs = ([_train(args, m, out / m) for m in COMPARED] if args.compare
                else [_train(args, DEMO_MODEL, out)])
    if args.compare:
        print(f"\nthe same block (1 x {DEMO_ARGS['dim']}, T = {DEMO_ARGS['T']}), split and schedule; "
              f"{runs[0]['val_split']}:")
        print(f"{'model':18s} {'val acc':>8s} {'firing rate':>12s} {'energy/image':>13s}  spike-driven")
        for r in runs:
            print(f"{r['label']:18s} {100 * r['val_acc']:7.2f}% {r['firing_rate']:12.3f} "
                  f"{r['energy_uJ']:10.3f} uJ  {verdict(r['spike_driven'], r['proven'])}")
    else:
        r = runs[0]
        print(f"\nvalidation accuracy: {100 * r['val_acc']:.2f} % on {r['val_split']}")
        print(f"mean firing rate:    {r['firing_rate']:.3f} (spikes fed to synaptic layers, over "
              f"{r['probe_images']} validation images)")
        print(f"energy:              {r['energy_uJ']:.3f} uJ per image "
              f"(Eq. 19-20, 45 nm: {E_AC_PJ} pJ per AC, {E_MAC_PJ} pJ per MAC)")
        print(f"spike-driven:        {verdict(r['spike_driven'], r['proven'])}"
              + (f" ({', '.join(r['non_spike_layers'])})" if r["non_spike_layers"] else ""))
        print(f"time:                {r['seconds']:.1f} s ({r['params']:,} parameters, {args.epochs} epochs, CPU)")
    if args.json:
        keys = ("label", "model", "model_args", "val_acc", "best_val_acc", "firing_rate", "energy_uJ", "spike_driven",
                "proven", "params", "seconds", "val_split", "epochs")
        rows = [{k: r[k] for k in keys} for r in runs]
        write_json(args.json, {"runs": rows} if args.compare else rows[0])
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="train a small Spikingformer on the bundled 8x8 digits (CPU, one to two minutes)",
        description="Train a 1-block Spikingformer (T=4) on scikit-learn's bundled 8x8 digits on the CPU, then "
                    "print accuracy on a seeded class-balanced held-out validation split (360 of 1797 images), "
                    "the mean firing rate, its energy per image (Eq. 19-20) and whether the model is spike-driven. "
                    "Nothing is downloaded.")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and the held-out split (default 0)")
    p.add_argument("--output", metavar="DIR", help="keep the run (checkpoints, metrics.jsonl, metrics.png) here")
    p.add_argument("--compare", action="store_true",
                   help="also train a Spikformer V1 (SEW residual) of the same size on the same split and schedule, "
                        "and compare accuracy, firing rate, energy and the spike-driven verdict (about 2.5 minutes "
                        "on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="write val_acc, firing_rate, energy_uJ, seconds (and more) as JSON")
    p.set_defaults(func=_cmd_demo)
