"""``spikingformer demo``: train a small Spikingformer on scikit-learn's bundled 8x8 digits, on the CPU.

Nothing is downloaded.  The run goes through the full training engine (timm AdamW, cosine
schedule with warm-up, label smoothing, checkpoints, metrics), so it is also the quickest
end-to-end check of an installation.  It reports accuracy on a seeded, class-balanced
held-out validation split (the digits have no official one), the mean firing rate of the
spikes fed to synaptic layers, and whether the model is spike-driven.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["demo_config", "register_cli"]

DEMO_EPOCHS = 12


def demo_config(epochs: int = DEMO_EPOCHS, output: str = "runs/demo", seed: int = 0):
    """A Spikingformer (1 block, dim 64, 4 heads, T = 4; pooling only before the last tokenizer
    conv, so 8x8 digits become 4x4 = 16 tokens) and a schedule that fits about a minute on 2 cores."""
    from .config import TrainConfig

    return TrainConfig(
        model="spikingformer_4_256",
        model_args=dict(depth=1, dim=64, num_heads=4, T=4, img_size=8, downsample=(False, False, False, True)),
        dataset="digits", val_split="holdout", holdout=360, seed=seed,
        batch_size=32, val_batch_size=360, workers=0,
        opt="adamw", lr=2e-3, weight_decay=0.01, smoothing=0.1,
        sched="cosine", epochs=epochs, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5, cooldown_epochs=0,
        sched_on_updates=True, amp="off", device="cpu", output=output, progress=False)


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .metrics import write_json
    from .train import run

    if args.epochs < 1:
        print("error: --epochs must be >= 1", file=sys.stderr)
        return 2
    # A model this small gains little from intra-op threads, and OpenMP threads that spin-wait
    # slow it down by orders of magnitude on a machine that is busy with anything else.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="spikingformer-demo-") as tmp:
        out = args.output or tmp
        if args.output and (Path(out) / "last.pt").exists():
            print(f"error: {out} already holds a run; choose another --output", file=sys.stderr)
            return 2
        s = run(demo_config(args.epochs, out, args.seed))
    print(f"\nvalidation accuracy: {100 * s['final_val_acc']:.2f} % on {s['val_split']}")
    print(f"mean firing rate:    {s['firing_rate']:.3f} (spikes fed to synaptic layers, over "
          f"{s['probe_images']} validation images)")
    print(f"spike-driven:        {'yes' if s['spike_driven'] else 'NO: ' + ', '.join(s['non_spike_layers'])}")
    print(f"time:                {s['seconds']:.1f} s ({s['params']:,} parameters, {args.epochs} epochs, CPU)")
    if args.json:
        keys = ("val_acc", "firing_rate", "seconds", "spike_driven", "val_split", "params", "best_val_acc")
        record = dict(s, val_acc=s["final_val_acc"], epochs=args.epochs)
        write_json(args.json, {k: record[k] for k in (*keys, "epochs")})
        print(f"wrote {args.json}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser(
        "demo", help="train a small Spikingformer on the bundled 8x8 digits (CPU, about a minute)",
        description="Train a 1-block Spikingformer (T=4) on scikit-learn's bundled 8x8 digits on the CPU, then "
                    "print accuracy on a seeded class-balanced held-out validation split (360 of 1797 images), "
                    "the mean firing rate and whether the model is spike-driven. Nothing is downloaded.")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and the held-out split (default 0)")
    p.add_argument("--output", metavar="DIR", help="keep the run (checkpoints, metrics.jsonl, metrics.png) here")
    p.add_argument("--json", metavar="FILE", help="write val_acc, firing_rate, seconds (and more) as JSON")
    p.set_defaults(func=_cmd_demo)
