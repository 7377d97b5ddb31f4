"""``spikingformer train``: supervised training from a YAML recipe, resumable, several GPUs with torchrun."""
from __future__ import annotations

import argparse
import os

from ..analysis.probe import verdict
from ..train.classify import run
from ..train.config import load_config, parse_overrides
from ..train.engine import resolve_img_size
from ..train.run import resume_config
from ..utils.outputs import check_output, write_json
from .args import add_run_args


def _cmd_train(args: argparse.Namespace) -> int:
    check_output("--json", args.json)
    cfg, overrides = load_config(args.config, args.set), parse_overrides(args.set)
    resolve_img_size(cfg)  # unknown model names and model_args fail here, before any data loads
    if args.resume:
        cfg = resume_config(cfg, overrides)
    s = run(cfg, resume=args.resume, overrides=overrides)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"{s['val_split']}: final top-1 {100 * s['final_val_acc']:.2f} %, best {100 * s['best_val_acc']:.2f} % "
              f"(epoch {s['best_epoch']}); firing rate {s['firing_rate']:.3f} ({s['probe_sample']}); spike-driven: "
              f"{verdict(s['spike_driven'], s['proven'])}; {s['seconds']:.0f} s -> {cfg.output}/summary.json")
        if args.json:
            write_json(args.json, s)
            print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a YAML recipe (configs/*.yaml); resumable, torchrun-ready",
        description="Train from a YAML config (`spikingformer recipes` lists the paper recipes). Every key of the config "
                    "can be overridden with --set key=value (model_args.depth=2 reaches into the model's "
                    "overrides); unknown keys are errors. Several GPUs: torchrun --nproc_per_node=N -m "
                    "spikingformer.cli train --config FILE.")
    add_run_args(p, "YAML file of TrainConfig keys")
    p.set_defaults(func=_cmd_train)
