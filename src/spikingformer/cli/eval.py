"""``spikingformer eval``: its command and the report it prints (``evaluation.evaluate_checkpoint`` scores)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.early_exit import plot_steps
from ..analysis.probe import verdict
from ..train import scoring
from ..train.predict import write_predictions
from ..utils.errors import InputError
from ..utils.outputs import FIGURE_SUFFIXES, check_output, write_json
from .args import add_model_kwargs_arg


def _cmd_eval(args: argparse.Namespace) -> int:
    check_output("--json", args.json)
    check_output("--plot", args.plot, suffixes=FIGURE_SUFFIXES)
    check_output("--predictions", args.predictions, suffixes=(".csv", ".json"))
    if args.predictions and args.json and Path(args.predictions).resolve() == Path(args.json).resolve():
        raise InputError(f"--predictions and --json name the same file {args.json}: give each its own")
    r = scoring.evaluate_checkpoint(args.checkpoint, args.data, args.device, args.batch_size, args.workers,
                                       args.config, args.set, tuple(args.early_exit), args.calibrate,
                                       args.max_drop / 100, args.calibrate_seed, args.split,
                                       bool(args.predictions), bool(args.plot))
    if "task" in r:
        _print_glue(r)
    else:
        _print_classifier(r, args.plot)
    if args.predictions:
        about = {k: r[k] for k in ("checkpoint", "model", "split", "val_split", "data_dir")}
        write_predictions(args.predictions, r.pop("predictions"), about)
        print(f"wrote {args.predictions}")
    if args.json:
        write_json(args.json, r)
        print(f"wrote {args.json}")
    return 0


def _print_glue(r: dict) -> None:
    """A GLUE model's scores as ``glue`` prints them: every metric of its task, the headline one after each step."""
    when = f" (after step {r['step']})" if r["step"] is not None else ""
    # the task's metrics first, the loss (which GLUE does not report) last; sorted is stable
    scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(r["val_metrics"].items(), key=lambda kv: "loss" in kv[0]))
    print(f"{r['checkpoint']} ({r['model']}, GLUE {r['task']}){when} on {_title(r)}: {scores}")
    for k, values in r["per_step"].items():
        if len(values) > 1:
            print(f"{k} after each time step: " + ", ".join(f"{t} {v:.4f}" for t, v in enumerate(values, 1)))


def _print_classifier(r: dict, plot: str | None) -> None:
    """An image or event classifier's scores, early exits and spike-driven verdict; ``plot``: a figure to draw."""
    for note in r["notes"]:
        print(f"note: {note}")
    when = f" (after epoch {r['epoch']})" if r["epoch"] is not None else ""
    print(f"{r['checkpoint']} ({r['model']}){when} on {_title(r)}: top-1 {100 * r['val_acc']:.2f} %, "
          f"top-5 {100 * r['val_acc5']:.2f} %, loss {r['val_loss']:.4f}; firing rate {r['firing_rate']:.3f} "
          f"({r['probe_sample']}); "
          f"spike-driven: {verdict(r['spike_driven'], r['proven'])}")
    if r["spike_driven"] and r["unproven_layers"]:
        print(f"note: {len(r['unproven_layers'])} synaptic layer(s) received only spikes here but are not built to "
              f"({', '.join(r['unproven_layers'][:4])}{', ...' if len(r['unproven_layers']) > 4 else ''}); "
              "`spikingformer verify` says which op makes their input")
    steps = r["val_acc_per_step"]
    if len(steps) > 1:
        print("top-1 after each time step: " + ", ".join(f"{t} {100 * a:.2f} %" for t, a in enumerate(steps, 1)))
    cal = r.get("early_exit_calibration")
    if cal:
        print(f"early exit, scored on {cal['scored_images']} of the {r['val_images']} images (top-1 "
              f"{100 * cal['scored']['val_acc']:.2f} % there with every step); its confidence chosen on the other "
              f"{cal['calibration_images']} (a seeded {cal['fraction']:g} of the split, seed {cal['seed']}):")
    for e in r.get("early_exit", []):
        energy = f", {e['backbone_uJ']:.4g} uJ per image" if "backbone_uJ" in e else ""
        print(f"early exit at confidence {e['confidence']:g}: top-1 {100 * e['val_acc']:.2f} % in "
              f"{e['mean_steps']:.2f} of {len(steps)} time steps on average{energy}")
    if cal:
        print_choice(cal)
    if "backbone_uJ" in r:
        print(f"(energy of the backbone, Eq. 20, read-out excluded; {r['backbone_uJ']:.4g} uJ per image for all "
              f"{len(steps)} steps)")
    if plot:
        title = f"{r['model']} on {r['val_split']}"
        if cal:  # the squares score the held-out part: so does the curve beside them
            steps, title = cal["scored"]["val_acc_per_step"], f"{title}, the {cal['scored_images']} not calibrated on"
        plot_steps(steps, plot, title, r.get("early_exit", []),
                   chosen=cal["chosen"]["confidence"] if cal and cal["chosen"] else None)
        print(f"wrote {plot}")


def _title(r: dict) -> str:
    """The split scored, as printed: its name, and the folder it was read from where the name does not say it."""
    folder = r["data_dir"]
    return r["val_split"] if folder is None or str(folder) in r["val_split"] else f"{r['val_split']} of {folder}"


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint (a run's, or official weights with a recipe) on its validation split "
                     "or a labelled test set",
        description="Report top-1/top-5 accuracy, loss, mean firing rate, the spike-driven verdict and the top-1 of "
                    "the read-out after each time step (what the model scores when stopped early). A run's "
                    "checkpoint, or a .safetensors exported from one, is rebuilt and evaluated on the validation "
                    "split it was trained with (the same seeded held-out split when it had one), or on all of a labelled "
                    "test set --data DIR, and names which it scored: e.g. `test (DIR, 10000 images)`. "
                    "Other weights (a state_dict, or the official repositories' checkpoints, whose tensor names "
                    "are converted) need --config: the recipe names the model, dataset and evaluation transform, e.g. "
                    "`spikingformer eval --checkpoint spikingformer-8-512.pth.tar --config configs/imagenet_8_512.yaml "
                    "--data /data/imagenet`. A `glue` run's checkpoint is scored with its GLUE task's metrics (MCC, "
                    "accuracy, F1, Pearson/Spearman, as glue reports them) and their value after each time step: on "
                    "the split the run evaluated on, or on every row of --data: a task folder's dev.tsv (MNLI: "
                    "dev_matched.tsv + dev_mismatched.tsv) as `dev`, any TSV file in the task's layout as "
                    "`test (FILE, N examples)`.")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="best.pt/last.pt of a run (train or glue) or a .safetensors exported from one, or (with "
                        "--config) any weights file")
    p.add_argument("--config", metavar="FILE|RECIPE", help="YAML recipe for weights that are not a run's checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), of --config or of the run's own config: "
                        "limit_val=500, model_args.T=8 (evaluate at another T), ...")
    add_model_kwargs_arg(p, as_set=True)
    p.add_argument("--data", metavar="DIR|FILE.tsv",
                   help="a labelled test set, every sample of which is scored: class folders of images, N-MNIST "
                        "recordings with their '#sample #class' list, CIFAR10-DVS class folders, or a dataset root "
                        "with a test split of its own (CIFAR's batches, N-MNIST's Train/ + Test/, DVS128 Gesture, "
                        "DIR/train/ + DIR/val/), whose test split is scored; class folders are matched to the "
                        "checkpoint's classes by name. The run's own data folder (the config's "
                        "data_dir, or its train/) and a root holding DIR/train/ only give its validation split, as "
                        "without --data. For a glue run: a GLUE task folder (or data root) holding the task's dev "
                        "file(s), or a TSV file in the task's layout, every row of which is scored")
    p.add_argument("--split", choices=("val", "test"),
                   help="force how --data is read: val, as the run's dataset root, whose validation split the "
                        "config holds out (or names); test, as a test set (without --data: the run's data's own "
                        "test split, for a run that held out its val split)")
    p.add_argument("--predictions", metavar="FILE.csv|FILE.json",
                   help="also write each sample's prediction: its file (or index), true class, whether the top-1 "
                        "and the top-5 hold it, and the top-5 classes with their probabilities (GLUE: each row's "
                        "FILE:LINE, its label, and the classes by probability or, for STS-B, the predicted score)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default: the config's)")
    p.add_argument("--workers", type=int, default=None, help="data-loading worker processes (default: the config's)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="plot top-1 accuracy against the time steps the read-out is given (.png, .pdf or .svg)")
    _add_early_exit_args(p)
    p.set_defaults(func=_cmd_eval)


def print_choice(cal: dict) -> None:
    """The line that says which confidence ``--calibrate`` chose, and what it scores where it was not chosen."""
    within = (f"within {100 * cal['max_drop']:g} points of every step's "
              f"{100 * cal['calibration']['val_acc']:.2f} % on the calibration part")
    pick = cal["chosen"]
    if pick is None:
        print(f"chosen: none; no confidence kept the top-1 {within}")
        return
    cost = "energy" if "backbone_uJ" in pick else "time steps"
    energy = f", {pick['backbone_uJ']:.4g} uJ per image" if "backbone_uJ" in pick else ""
    print(f"chosen: confidence {pick['confidence']:g}, the least {cost} {within}; on the scored part: top-1 "
          f"{100 * pick['val_acc']:.2f} % in {pick['mean_steps']:.2f} time steps on average{energy}")


def _add_early_exit_args(p: argparse.ArgumentParser) -> None:
    """Stopping each sample at the first confident time step, scored and calibrated (``analysis.early_exit``)."""
    p.add_argument("--early-exit", nargs="+", type=float, default=[], metavar="P",
                   help="also score stopping each sample at the first time step whose read-out gives its top class "
                        "a softmax probability of at least P (0 < P <= 1): top-1, mean time steps and the backbone's "
                        "energy per image (Eq. 20, from the spikes of the steps each sample ran) per P")
    p.add_argument("--calibrate", type=float, metavar="FRACTION",
                   help="choose the early-exit confidence on a seeded FRACTION of the split (e.g. 0.5): the one of "
                        "least energy whose top-1 there is within --max-drop of every step's; the early-exit "
                        "figures are then those of the rest of the split, which the choice never saw")
    p.add_argument("--max-drop", type=float, default=0.5, metavar="POINTS",
                   help="top-1 (percentage points) an early exit may lose against every step, for --calibrate "
                        "(default 0.5)")
    p.add_argument("--calibrate-seed", type=int, default=0, metavar="N",
                   help="seed of the --calibrate split (default 0)")
