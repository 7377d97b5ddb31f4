"""``spikingformer predict``: classify image files, event recordings or folders with a trained model."""
from __future__ import annotations

import argparse
import sys

from ..train.config import validate_device
from ..train.predict import accuracy, load_predictor, predict_files, write_prediction_csv
from ..utils.errors import InputError
from ..utils.outputs import check_output, write_json
from .args import add_model_kwargs_arg


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.topk < 1 or args.batch_size < 1:
        raise InputError(f"--topk and --batch-size must be >= 1, got {args.topk} and {args.batch_size}")
    check_output("--json", args.json)
    check_output("--csv", args.csv)
    validate_device(args.device)
    pred = load_predictor(args.checkpoint, args.config, args.classes, args.device, args.set)
    records, skipped = predict_files(pred, args.inputs, args.topk, args.batch_size, args.workers)
    for s in skipped:
        print(f"skipped: {s['error']}", file=sys.stderr)
    if not records:
        raise InputError(f"none of the {len(skipped)} {pred.files.noun}(s) could be read")
    for r in records:
        after = "; after each step: " + ", ".join(f"{c} {p:.3f}" for c, p in r["per_step"]) if "per_step" in r else ""
        print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]) + after)
    acc = accuracy(records)
    if acc:
        print(f"accuracy on the {acc['count']} of {len(records)} {pred.files.noun}s whose class their folder or "
              f"label list names: top-1 {100 * acc['top1']:.2f} %, top-5 {100 * acc['top5']:.2f} %")
    if args.json:
        write_json(args.json, {"checkpoint": args.checkpoint, "model": pred.name, "accuracy": acc,
                               "predictions": records, "skipped": skipped})
    if args.csv:
        write_prediction_csv(args.csv, records)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify image files, event recordings or folders with a trained model (top-k classes, "
                        "JSON/CSV)",
        description="Classify images with a checkpoint: a run's best.pt/last.pt, or a .safetensors exported from "
                    "one, brings its model, class names and evaluation transform (resize, crop, normalise). A run "
                    "trained on event data classifies single-sample recordings of its dataset instead (nmnist: .bin, "
                    ".bs2, .npz; cifar10_dvs: .aedat, .npz; dvs128_gesture: one window as .npz, not a raw .aedat "
                    "recording of many gestures), integrated into frames as eval integrates them, and also reports "
                    "the top-1 after each time step. Other weights (a state_dict, official weights) need --config: "
                    "the recipe names the model and how images are read; classes are then numbered unless --classes "
                    "names them. --set overrides a key of that config as with eval, e.g. --set model_args.T=8 to "
                    "predict at another T. Files in class folders named as the model's classes (DIR/cat/1.jpg), or "
                    "N-MNIST recordings listed in the '#sample #class' list beside them, have a known class: their "
                    "top-1 and top-5 accuracy and count are reported too.")
    p.add_argument("inputs", nargs="+", metavar="FILE|DIR",
                   help="image files (event recordings for an event-trained model), or folders searched recursively")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the trained weights")
    p.add_argument("--config", metavar="FILE|RECIPE", help="recipe for weights that are not a run's checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the run's config or of --config (repeatable), as eval takes it: "
                        "model_args.T=8 (predict at another T), img_size, mean, std, crop_pct, ...")
    add_model_kwargs_arg(p, as_set=True)
    p.add_argument("--classes", metavar="FILE", help="class names, one per line, in the model's class order")
    p.add_argument("--topk", type=int, default=5, help="classes reported per file (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="files per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="file-reading worker processes (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--json", metavar="FILE", help="also write every prediction as JSON (event recordings: with "
                                                   "per_step, the [class, prob] of the top-1 after each time step)")
    p.add_argument("--csv", metavar="FILE", help="also write path, class_1, prob_1, ... as CSV (with label, correct "
                                                  "and in_top5 for files of a known class)")
    p.set_defaults(func=_cmd_predict)
