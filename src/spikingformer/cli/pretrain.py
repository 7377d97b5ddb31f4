"""``spikingformer pretrain``: MAE-style self-supervised pre-training of a Spikformer V2 encoder."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..models.mae import SpikformerV2MAE
from ..train.config import load_config, parse_overrides
from ..train.pretrain import PretrainConfig, run
from ..train.run import resume_config
from ..utils.outputs import check_output, write_json
from .args import add_run_args


def _cmd_pretrain(args: argparse.Namespace) -> int:
    check_output("--json", args.json)
    cfg, overrides = load_config(args.config, args.set, cls=PretrainConfig), parse_overrides(args.set)
    with torch.device("meta"):  # unknown or non-V2 models and bad model_args fail here, before any data loads
        SpikformerV2MAE(cfg.mae_config())
    if args.resume:
        cfg = resume_config(cfg, overrides)
    s = run(cfg, resume=args.resume, overrides=overrides)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"{s['val_split']}: masked-patch loss {s['final_val_loss']:.4f} (predicting each patch's mean: "
              f"{s['val_baseline_loss']:.4f}); {s['steps']} steps in {s['seconds']:.0f} s -> {s['checkpoint']}")
        if args.json:
            write_json(Path(args.json), s)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="MAE-style self-supervised pre-training of a Spikformer V2 (V2 §4.2); resumable",
        description="Pre-train a Spikformer V2 encoder by masked image modelling: 75 % of the 16x16 patches "
                    "are hidden, a light ANN Transformer decoder reconstructs their normalized pixels, the loss "
                    "is the MSE on masked patches (1.0 = predicting each patch's mean). The YAML takes every "
                    "train key (data, optimizer, schedule, engine) plus mask_ratio, decoder_dim, decoder_depth, "
                    "decoder_heads, norm_pix_loss; model_args.T sets the time steps (default 1). Writes last.pt, "
                    "metrics.jsonl/png, reconstruction.png and summary.json to the output folder. Fine-tune a "
                    "classifier from its encoder with `spikingformer train --config imagenet_v2_finetune --set "
                    "init_from=OUTPUT/last.pt` (any Spikformer V2 recipe of the same model; in Python, "
                    "spikingformer.train.pretrain.load_pretrained_encoder).",
        epilog="example: spikingformer pretrain --config cifar10_v2_mae_pretrain --set data_dir=DIR, then "
               "spikingformer train --config cifar10_v2_finetune --set data_dir=DIR "
               "--set init_from=runs/cifar10_v2_mae_pretrain/last.pt")
    add_run_args(p, "YAML file of PretrainConfig keys")
    p.set_defaults(func=_cmd_pretrain)
