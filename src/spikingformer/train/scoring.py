"""``spikingformer eval``'s library: score a checkpoint on a split.

It rebuilds the model a checkpoint was trained as and evaluates it on the validation split it was trained with:
the same seeded held-out split when the dataset has none of its own, so numbers stay comparable across runs;
a ``data_dir`` other than the run's own data scores every sample of a labelled test set
(``data.scored_split``).  A ``glue`` run's checkpoint is scored with its task's GLUE metrics, on its run's
split, a dev folder or a TSV file (``glue.evaluate_glue``).  Early exit over time steps is scored and
calibrated here too.
"""
from __future__ import annotations

import dataclasses
import os

from ..analysis.early_exit import calibration_split, choose, merge
from ..data import DataError, scored_split
from ..models import model_modality
from ..utils.errors import InputError
from ..weights.loading import Weights, read_weights
from .classify import model_kwargs
from .config import TrainConfig, from_dict, load_config, parse_overrides, validate_device
from .distributed import resolve_device
from .engine import resolve_img_size
from .evaluation import evaluate, sampled_spike_stats
from .glue import evaluate_glue
from .predict import split_records
from .runs import asked_options, eval_path, run_config


@dataclasses.dataclass
class _Source:
    """What eval scores with: the config that reads the data, the weights (and their model's name)."""
    cfg: object
    weights: Weights
    margs: dict | None       # None until the data says the classes (a recipe's)
    img_size: int
    classes: list[str] | None   # those the weights were trained on, when the file records them
    n_classes: int | None
    epoch: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def evaluate_checkpoint(path: str, data_dir: str | None = None, device: str = "auto", batch_size: int | None = None,
                        workers: int | None = None, recipe: str | None = None, sets: list[str] = (),
                        exit_at: tuple[float, ...] = (), calibrate: float | None = None, max_drop: float = 0.005,
                        calibrate_seed: int = 0, split: str | None = None, predictions: bool = False,
                        plot: bool = False) -> dict:
    """Evaluate a checkpoint on a validation split or a given test set.

    Without ``recipe``, ``path`` is a run's checkpoint (or a ``.safetensors`` exported from one): its model
    is rebuilt and evaluated on the split it was trained with.  With ``recipe`` (a YAML config, plus ``--set``
    overrides), ``path`` may hold any weights ``checkpoint.load_weights`` reads, the official repositories'
    included: the recipe names the model, the dataset and its evaluation transform.

    Which samples (``data.scored_split``): ``data_dir`` ``None``, or the run's own data, gives the run's validation
    split; another ``data_dir`` is a labelled test set, scored whole; ``split`` (``"val"`` or ``"test"``)
    forces either reading.  With ``predictions``, ``"predictions"`` holds a record per sample
    (``predict.split_records``).

    ``exit_at`` scores early-exit policies (``early_exit``); with ``calibrate``, a seeded ``calibrate``
    share of the split chooses the cheapest one within ``max_drop`` (a fraction) of every step's top-1
    (``choose``), the ``early_exit`` figures are those of the rest, and the whole split's are ``merge``d.

    A ``glue`` run's checkpoint is scored with its task's GLUE metrics instead (``glue.evaluate_glue``); the
    options of image and event classifiers (``exit_at``, ``split``, ``workers``, ``plot``: whether the caller
    plots the per-step top-1) are refused for it before anything is scored."""
    validate_device(device)
    _check_options(exit_at, batch_size, calibrate, max_drop, split)
    dev = resolve_device(device)  # a device this machine lacks is named before any file is read
    run = read_weights(path, unnamed=f"{path} is not a spikingformer checkpoint (a run's, or an export of one): for "
                                     "a state_dict or official weights add --config RECIPE, e.g. --config cifar10, "
                                     "which names the model and the data") \
        if recipe is None else None
    if run is not None and model_modality(run.name) == "text":
        _image_only(path, run.name, {"--early-exit": exit_at, "--calibrate": calibrate is not None,
                                     "--split": split, "--workers": workers is not None, "--plot": plot})
        return evaluate_glue(path, run, data_dir, device, batch_size, sets, predictions)
    extra = {k: v for k, v in (("device", device), ("val_batch_size", batch_size), ("workers", workers))
             if v is not None}
    given = parse_overrides(list(sets))
    src = (_run_source(path, run, sets, extra) if recipe is None else
           _recipe_source(path, recipe, sets, extra, asked_options(given)))
    data, folder, notes = scored_split(src.cfg, data_dir, split, src.classes, src.img_size, given)
    _check_classes(data, src.classes, src.n_classes, folder or src.cfg.dataset, path)
    margs = src.margs
    if margs is None:  # the options the weights were made with win over the recipe's, the command line over both
        margs = {**model_kwargs(src.cfg, len(data.classes), data.in_chans), **src.weights.model_args,
                 **asked_options(given)}
    model = src.weights.build(margs, asked_options(given)).to(dev)
    record = [] if predictions else None
    result = _score(model, data, src.cfg, dev, tuple(exit_at), calibrate, calibrate_seed, max_drop, record)
    out = {"checkpoint": str(path), "model": src.weights.name, "epoch": src.epoch,
           "split": data.val_name.partition(" ")[0],
           "val_split": data.val_name, "data_dir": folder, **result,
           **sampled_spike_stats(model, data, dev, src.cfg.val_batch_size, src.cfg.seed), "notes": src.notes + notes}
    if predictions:
        out["predictions"] = split_records(data, record.pop(), record)
    return out


def _check_options(exit_at, batch_size, calibrate, max_drop, split) -> None:
    bad = [p for p in exit_at if not 0 < p <= 1]
    if bad:
        raise InputError(f"early-exit confidences are softmax probabilities in (0, 1], got {bad}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if calibrate is not None and not exit_at:
        raise InputError("--calibrate chooses among early-exit confidences: add --early-exit P [P ...]")
    if not 0 <= max_drop <= 1:
        raise InputError(f"--max-drop is the top-1 an early exit may lose, in points from 0 to 100; "
                         f"got {100 * max_drop:g}")
    if split not in (None, "val", "test"):
        raise InputError(f"--split must be val or test, got {split!r}")


def _image_only(path, model: str, given: dict) -> None:
    named = [option for option, used in given.items() if used]
    if named:
        raise InputError(f"{', '.join(named)}: for image and event classifiers; {path} holds the text model "
                         f"{model}, scored with its GLUE task's metrics")


def _run_source(path, run: Weights, sets, extra) -> _Source:
    """An image or event classifier's run: its config, with ``--set``, reads the data."""
    recorded = run.info.get("data", {})
    if not run.config or "classes" not in recorded:
        raise InputError(f"{path} does not record the run it came from (exported from a state_dict?): "
                         "add --config RECIPE, e.g. --config cifar10")
    cfg, margs = run_config(path, run.name, run.model_args, run.config, sets, extra=extra)
    if os.path.isdir(recorded.get("data_root") or "") and cfg.data_dir == run.config.get("data_dir"):
        # the folder the run read, wherever eval runs from: a relative data_dir names another folder elsewhere,
        # and the run's own images, given by their absolute path, would be scored as a test set
        cfg = dataclasses.replace(cfg, data_dir=recorded["data_root"])
    return _Source(cfg, run, margs, margs.get("img_size") or recorded["img_size"], recorded["classes"],
                   run.model_args.get("num_classes"), run.info.get("epoch"))


def _recipe_source(path, recipe, sets, extra, asked: dict) -> _Source:
    """Any weights, read as the YAML ``recipe`` (plus ``--set``) says: model, dataset, evaluation transform."""
    cfg = load_config(recipe, list(sets))
    cfg = from_dict(TrainConfig, dict(cfg.to_dict(), **extra), f"{recipe} + command line")
    weights = read_weights(path, cfg.model, named_by="the recipe's")  # it reads names two layouts share
    build = weights.info
    # the data follows the model that runs: the weights' T and size win over the recipe's (and --set over
    # both), so event recordings become frames at the T the model was exported with
    shaping = {k: build.get("model_args", {})[k] for k in ("T", "img_size") if k in build.get("model_args", {})}
    cfg = dataclasses.replace(cfg, model_args={**cfg.model_args, **shaping, **asked})
    # the classes an export records are checked against the data's: a file trained on others would score shifted
    return _Source(cfg, weights, None, resolve_img_size(cfg), build.get("data", {}).get("classes"),
                   build.get("model_args", {}).get("num_classes"), notes=weights.notes)


def _loader(data, cfg, part: list[int] | None = None):
    from torch.utils.data import DataLoader, Subset

    split = data.val if part is None else Subset(data.val, part)
    return DataLoader(split, cfg.val_batch_size, num_workers=cfg.workers, collate_fn=data.collate)


def _score(model, data, cfg, dev, exit_at, calibrate, calibrate_seed, max_drop, record) -> dict:
    """``evaluate`` over ``data.val``, or with ``calibrate`` over its two parts, merged; ``record`` gets the
    per-sample batches (``evaluate``) and, last, the order of the samples they came in."""
    run_as = eval_path(cfg, dev)
    ready = run_as.prepare(model)
    how = dict(progress=cfg.progress, per_step=True, exit_at=exit_at, record=record)
    if calibrate is None:
        parts = [None]
        result = evaluate(ready, _loader(data, cfg), dev, run_as, **how)
    else:
        parts = calibration_split(len(data.val), calibrate, calibrate_seed)
        cal, scored = (evaluate(ready, _loader(data, cfg, part), dev, run_as, **how) for part in parts)
        result = {**merge([cal, scored]), "early_exit": scored["early_exit"],
                  "early_exit_calibration": _calibration(cal, scored, calibrate, calibrate_seed, max_drop)}
    if record is not None:
        record.append([i for part in parts for i in (range(len(data.val)) if part is None else part)])
    return result


def _calibration(cal: dict, scored: dict, fraction: float, seed: int, max_drop: float) -> dict:
    """What ``--calibrate`` chose on ``cal`` and how it scores on ``scored``: the whole record, for ``--json``."""
    pick = choose(cal["early_exit"], cal["val_acc"], max_drop)
    return {"fraction": fraction, "seed": seed, "max_drop": max_drop,
            "calibration_images": cal["val_images"], "scored_images": scored["val_images"],
            "calibration": {"val_acc": cal["val_acc"], "early_exit": cal["early_exit"]},
            "scored": {"val_acc": scored["val_acc"], "val_acc_per_step": scored["val_acc_per_step"],
                       **({"backbone_uJ": scored["backbone_uJ"]} if "backbone_uJ" in scored else {})},
            "chosen": None if pick is None else
            next(e for e in scored["early_exit"] if e["confidence"] == pick["confidence"])}


def _check_classes(data, classes: list[str] | None, n: int | None, folder: str, path) -> None:
    """The evaluation data must have the classes (names, else number) the weights were trained on."""
    if (classes is not None and data.classes != list(classes)) or (n is not None and n != len(data.classes)):
        trained = f"{list(classes)[:5]}... ({len(classes)} classes)" if classes is not None else f"{n} classes"
        raise DataError(f"{folder} has classes {data.classes[:5]}... ({len(data.classes)}) but {path} was "
                        f"trained on {trained}")
