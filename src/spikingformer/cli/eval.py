"""``spikingformer eval``: its command and the report it prints (``evaluation.evaluate_checkpoint`` scores)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..analysis.early_exit import plot_steps, print_choice
from ..analysis.probe import verdict
from ..train import evaluation
from ..utils.errors import InputError
from ..weights import checkpoint as ckpt


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..train.predict import write_predictions
    from ..utils.outputs import FIGURE_SUFFIXES, check_output, write_json

    try:
        check_output("--json", args.json)
        check_output("--plot", args.plot, suffixes=FIGURE_SUFFIXES)
        check_output("--predictions", args.predictions, suffixes=(".csv", ".json"))
        if args.predictions and args.json and Path(args.predictions).resolve() == Path(args.json).resolve():
            raise InputError(f"--predictions and --json name the same file {args.json}: give each its own")
        r = evaluation.evaluate_checkpoint(args.checkpoint, args.data, args.device, args.batch_size, args.workers,
                                           args.config, args.set, tuple(args.early_exit), args.calibrate,
                                           args.max_drop / 100, args.calibrate_seed, args.split,
                                           bool(args.predictions), bool(args.plot))
    except (ckpt.CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
