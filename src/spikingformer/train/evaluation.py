"""Evaluation: accuracy and loss over a split, firing rates and the spike-driven verdict, checkpoints.

``spikingformer eval --checkpoint FILE`` (command line: ``eval_cli``) rebuilds the model a checkpoint was trained as and
evaluates it on the validation split it was trained with: the same seeded held-out split when
the dataset has none of its own, so numbers stay comparable across runs; ``--data DIR`` other than
the run's own data scores every sample of a labelled test set (``data.scored_split``).  A ``glue`` run's
checkpoint is scored with its task's GLUE metrics, on its run's split, a dev folder or a TSV file
(``glue.evaluate_glue``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
from torch import nn

from ..analysis.early_exit import calibration_split, choose, merge, score_policies
from ..analysis.energy import policy_energy, steps_and_samples
from ..analysis.probe import SynapticProbe
from ..nn.fast import FastPath, resolve_lif_backend
from ..nn.layers import running_mean
from ..weights import checkpoint as ckpt

__all__ = ["evaluate", "read_outs", "spike_stats", "sampled_spike_stats", "eval_path", "evaluate_checkpoint",
           "asked_options", "run_config", "rebuild", "RunFile", "read_run"]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, path: FastPath | None = None,
             progress: bool = False, per_step: bool = False, exit_at: tuple[float, ...] = (),
             record: list | None = None) -> dict:
    """Mean cross-entropy, top-1 and top-5 accuracy over ``loader``, summed over every process.
    ``path`` gives the autocast dtype and input layout (default: fp32, as laid out).  With ``per_step``
    also ``val_acc_per_step``: the top-1 of the read-out after each time step (``forward_steps``), and
    for each confidence in ``exit_at`` the top-1, mean time steps and backbone energy per image of exiting
    early (``early_exit``), beside the energy of running every step (``backbone_uJ``).  ``record`` gets
    each batch's top-5 ``(class indices, probabilities, targets)`` on the CPU, in the loader's order."""

    from ..utils.progress import progress_bar
    from .distributed import all_reduce_sum

    path = path or FastPath.off()
    model.eval()
    # with early exits a probe counts, per layer, the synaptic events of the sample-steps each policy runs
    probe = SynapticProbe(model) if per_step and exit_at else None
    # loss, top1, top5, n[, top1 after step 1..T], T the inputs' (a sequence's may differ from model.T);
    # zeros where this process's shard of the split is empty
    sums, images = None, 0
    with probe or contextlib.nullcontext():
        for x, y in progress_bar(loader, "eval", enabled=progress):
            x, y = path.to_input(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            path.step_begin()
            if probe is not None:
                probe.per_step(*steps_and_samples(x, None, None, model))
            with path.autocast(device):
                if per_step:
                    logits, steps = (out.float() for out in read_outs(model, x))
                else:
                    logits = model(x).float()  # with CUDA graphs the output lives only until the next step
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            if record is not None:
                record.append((top.cpu(), logits.softmax(1).gather(1, top).cpu(), y.cpu()))
            batch = [nn.functional.cross_entropy(logits, y, reduction="sum").double(), (top[:, 0] == y).sum().double(),
                     (top == y[:, None]).any(1).sum().double(), torch.tensor(float(len(y)), device=device).double()]
            images += len(y)
            if per_step:
                batch += list((steps.argmax(-1) == y).sum(1).double()) + score_policies(steps, y, exit_at, probe)
            batch = torch.stack(batch)
            if sums is None:
                sums = torch.zeros_like(batch)
            elif len(batch) != len(sums):
                raise ValueError(f"per_step: a batch of {len(steps)} time steps after one of "
                                 f"{len(sums) - len(batch) + len(steps)}")
            sums += batch
    if sums is None:
        sums = torch.zeros(4 + (model.T + 2 * len(exit_at) if per_step else 0), dtype=torch.float64, device=device)
    loss, top1, top5, n, *rest = all_reduce_sum(sums).tolist()
    if n == 0:
        raise RuntimeError("the validation split is empty")
    out = {"val_loss": loss / n, "val_acc": top1 / n, "val_acc5": top5 / n, "val_images": int(n)}
    if not per_step:
        return out
    n_steps = len(rest) - 2 * len(exit_at)
    exits = [{"confidence": p, "val_acc": rest[n_steps + 2 * i] / n, "mean_steps": rest[n_steps + 2 * i + 1] / n}
             for i, p in enumerate(exit_at)]
    out["val_acc_per_step"] = [c / n for c in rest[:n_steps]]
    if exit_at:
        out["early_exit"] = exits
        # this process's share of the split: eval runs as one process (the probe's counts are not all-reduced)
        uJ = policy_energy(probe, images) if images else None
        if uJ is not None:
            out["backbone_uJ"] = uJ.pop()
            for e, u in zip(exits, uJ):
                e["backbone_uJ"] = u
    return out


def read_outs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(x)`` and ``model.forward_steps(x)`` (logits ``[B, classes]``, and ``[T, B, classes]`` after each
    time step) from one pass of the backbone and the head."""
    head = model.head
    pooled = head.pool_steps(model.forward_features(x))
    return head.finish(pooled.mean(0)), head.finish(running_mean(pooled))


PROBE_BATCHES = 4  # batches of a split's batch size: the sample its firing rate and verdict are read off


@torch.no_grad()
def spike_stats(model: nn.Module, loader, device: torch.device) -> dict:
    """Mean firing rate of every spike input to a synaptic layer (encoding layer and read-out excluded)
    and the spike-driven verdict, from ``SynapticProbe`` on every ``(x, y)`` batch of ``loader``."""
    model.eval()
    images = 0
    with SynapticProbe(model, provenance=True) as probe:
        for x, _ in loader:
            model(x.to(device))
            images += x.shape[1] if x.dim() == 5 else len(x)  # [T, B, ...] sequences or [B, ...] images
    spiking = [s for r in probe.ordered[1:] if not r.readout for s in r.inputs if s.kind == "spike"]
    total, numel = sum(s.total for s in spiking), sum(s.numel for s in spiking)
    return {"firing_rate": total / numel if numel else 0.0, **probe.verdict(), "probe_images": images}


def sampled_spike_stats(model: nn.Module, data, device: torch.device, batch_size: int, seed: int) -> dict:
    """``spike_stats`` on a seeded, class-balanced sample of ``PROBE_BATCHES`` batches of ``data.val`` (a
    ``DataSplits``; its first batches would be one class), and the sample's name (``probe_sample``: "1024 of 5000
    images, class-balanced, seed 0" of ``data.val_name``)."""
    from torch.utils.data import DataLoader

    from ..data.split import split_sample

    sample, named = split_sample(data.val, PROBE_BATCHES * batch_size, seed)
    loader = DataLoader(sample, batch_size, collate_fn=data.collate)
    return {**spike_stats(model, loader, device), "probe_sample": named}


def eval_path(cfg, device: torch.device | str) -> FastPath:
    """How ``eval`` runs a model of config ``cfg`` on ``device``: uncompiled (one pass over the split
    does not repay compiling), in the config's precision, with the neurons its training runs there.
    On CUDA that is the Triton kernels, which the fast path's validation used too; uncompiled they
    inferred 2.3-4.8x faster than the reference where the PyTorch loop did 1.0-1.6x (README)."""
    trains_with = FastPath.from_modes(cfg.fast, cfg.amp, device, cfg.compile_mode, cfg.lif_backend)
    backend = resolve_lif_backend(cfg.lif_backend, trains_with.compile, device)
    return dataclasses.replace(FastPath.from_modes("off", cfg.amp, device), lif_backend=backend)


def asked_options(given: dict) -> dict:
    """The model options among parsed ``--set`` overrides (``model_args.*``, and ``img_size``, which sizes the
    model too): asked for on the command line, they win over what the weights record (another T or size)."""
    if not isinstance(given.get("model_args", {}), dict):
        raise ValueError(f"--set model_args={given['model_args']!r}: model options are set one by one, "
                         "e.g. --set model_args.T=8")
    return {**given.get("model_args", {}), **({"img_size": given["img_size"]} if "img_size" in given else {})}


def run_config(path, name: str, model_args: dict, config: dict, sets: list[str] = (), source: str = "",
               extra: dict | None = None):
    """``(cfg, model_args)``: the config a checkpoint's model ``name`` was trained (or a recipe read it) with,
    and its model options, both with ``--set`` applied; ``extra``: keys the command line sets by their own
    options.  The weights fix the model: a ``--set model=`` naming another is refused."""
    from .config import TrainConfig, apply_overrides, from_dict, parse_overrides

    given = parse_overrides(list(sets))
    if given.get("model", name) != name:
        raise ValueError(f"--set model={given['model']}: {path} holds a {name}")
    margs = {**model_args, **asked_options(given)}
    # --set reaches the run's own config too (limit_val=500, model_args.T=8), and the data follows the model
    # that runs: event recordings become frames at its T (an export at another T, or --set model_args.T)
    config = apply_overrides(apply_overrides(config, given), {"model_args": margs})
    where = (source or f"{path} config") + (f" + --set {' '.join(sets)}" if sets else "")
    return from_dict(TrainConfig, dict(config, **(extra or {})), where), margs


def rebuild(path, name: str, model_args: dict, weights: dict, build: dict, asked: dict) -> nn.Module:
    """The model ``name`` (vision or text) with ``model_args`` and the ``weights`` of ``path`` (``build``: what the
    file says of it); when they do not fit, the ``--set`` model options ``asked`` are named as a possible cause."""
    from .. import create_model
    from ..weights.loading import load_into

    try:
        model = create_model(name, **model_args)
    except (TypeError, ValueError) as e:  # an option that does not exist, or a value it cannot take
        raise ValueError(f"{name}: {e}" + (f" (--set {asked})" if asked else "")) from None
    try:
        return load_into(model, path, weights, build, f"{name} with {model_args}")
    except ValueError as e:
        if not asked:
            raise
        raise ValueError(f"{e}; --set {asked} may change the weights' shapes (T does not)") from None


@dataclasses.dataclass
class RunFile:
    """A run's checkpoint, or a ``.safetensors`` exported from one, as read: what it records of its model
    (``meta``: name, options, classes, task), the weights, ``build`` (the run's config; ``folded``) and the
    checkpoint's training state (its progress; ``{}`` for a ``.safetensors``)."""
    meta: dict
    weights: dict
    build: dict
    state: dict


def read_run(path) -> RunFile:
    """``path`` read as a run's checkpoint (a vision, ``mlm`` or ``glue`` run's) or an export of one."""
    if ckpt.is_safetensors(path):
        weights, build = ckpt.load_weights(path)
        meta = {"model": build.get("model"), "model_args": build.get("model_args"), **build.get("data", {})}
        return RunFile(meta, weights, build, {})
    state = ckpt.load_checkpoint(path, hint=" (for a state_dict or official weights add --config RECIPE, "
                                          "e.g. --config cifar10, which names the model and the data)")
    return RunFile(state["meta"], state["model"], {"config": state["config"]}, state)


@dataclasses.dataclass
class _Source:
    """What eval scores with: the config that reads the data, the model's name, options and weights."""
    cfg: object
    name: str
    margs: dict | None       # None until the data says the classes (a recipe's)
    weights: dict
    build: dict
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
    from ..data import scored_split
    from ..models import model_modality
    from .classify import model_kwargs
    from .config import parse_overrides, validate_device
    from .distributed import resolve_device

    validate_device(device)
    _check_options(exit_at, batch_size, calibrate, max_drop, split)
    dev = resolve_device(device)  # a device this machine lacks is named before any file is read
    run = read_run(path) if recipe is None else None
    if run is not None and model_modality(run.meta["model"]) == "text":
        from .glue import evaluate_glue

        _image_only(path, run.meta["model"], {"--early-exit": exit_at, "--calibrate": calibrate is not None,
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
        margs = {**model_kwargs(src.cfg, len(data.classes), data.in_chans), **src.build.get("model_args", {}),
                 **asked_options(given)}
    model = rebuild(path, src.name, margs, src.weights, src.build, asked_options(given)).to(dev)
    record = [] if predictions else None
    result = _score(model, data, src.cfg, dev, tuple(exit_at), calibrate, calibrate_seed, max_drop, record)
    out = {"checkpoint": str(path), "model": src.name, "epoch": src.epoch, "split": data.val_name.partition(" ")[0],
           "val_split": data.val_name, "data_dir": folder, **result,
           **sampled_spike_stats(model, data, dev, src.cfg.val_batch_size, src.cfg.seed), "notes": src.notes + notes}
    if predictions:
        from .predict import split_records

        out["predictions"] = split_records(data, record.pop(), record)
    return out


def _check_options(exit_at, batch_size, calibrate, max_drop, split) -> None:
    bad = [p for p in exit_at if not 0 < p <= 1]
    if bad:
        raise ValueError(f"early-exit confidences are softmax probabilities in (0, 1], got {bad}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if calibrate is not None and not exit_at:
        raise ValueError("--calibrate chooses among early-exit confidences: add --early-exit P [P ...]")
    if not 0 <= max_drop <= 1:
        raise ValueError(f"--max-drop is the top-1 an early exit may lose, in points from 0 to 100; "
                         f"got {100 * max_drop:g}")
    if split not in (None, "val", "test"):
        raise ValueError(f"--split must be val or test, got {split!r}")


def _image_only(path, model: str, given: dict) -> None:
    named = [option for option, used in given.items() if used]
    if named:
        raise ValueError(f"{', '.join(named)}: for image and event classifiers; {path} holds the text model "
                         f"{model}, scored with its GLUE task's metrics")


def _run_source(path, run: RunFile, sets, extra) -> _Source:
    """An image or event classifier's run (``read_run``): its config, with ``--set``, reads the data."""
    meta, build = run.meta, run.build
    if not build.get("config") or "classes" not in meta:
        raise ValueError(f"{path} does not record the run it came from (exported from a state_dict?): "
                         "add --config RECIPE, e.g. --config cifar10")
    cfg, margs = run_config(path, meta["model"], meta["model_args"], build["config"], sets, extra=extra)
    if os.path.isdir(meta.get("data_root") or "") and cfg.data_dir == build["config"].get("data_dir"):
        # the folder the run read, wherever eval runs from: a relative data_dir names another folder elsewhere,
        # and the run's own images, given by their absolute path, would be scored as a test set
        cfg = dataclasses.replace(cfg, data_dir=meta["data_root"])
    return _Source(cfg, meta["model"], margs, run.weights, build, margs.get("img_size") or meta["img_size"],
                   meta["classes"], meta["model_args"].get("num_classes"), run.state.get("progress", {}).get("epoch"))


def _recipe_source(path, recipe, sets, extra, asked: dict) -> _Source:
    """Any weights, read as the YAML ``recipe`` (plus ``--set``) says: model, dataset, evaluation transform."""
    from ..weights.official import check_family
    from .config import TrainConfig, from_dict, load_config
    from .engine import resolve_img_size

    cfg = load_config(recipe, list(sets))
    cfg = from_dict(TrainConfig, dict(cfg.to_dict(), **extra), f"{recipe} + command line")
    weights, build = ckpt.load_weights(path, cfg.model)  # the recipe's model reads names two layouts share
    check_family(cfg.model, build.get("official"), path)
    if build.get("model") not in (None, cfg.model):
        raise ValueError(f"{path} holds a {build['model']}, not the recipe's {cfg.model}")
    # the data follows the model that runs: the weights' T and size win over the recipe's (and --set over
    # both), so event recordings become frames at the T the model was exported with
    shaping = {k: build.get("model_args", {})[k] for k in ("T", "img_size") if k in build.get("model_args", {})}
    cfg = dataclasses.replace(cfg, model_args={**cfg.model_args, **shaping, **asked})
    # the classes an export records are checked against the data's: a file trained on others would score shifted
    return _Source(cfg, cfg.model, None, weights, build, resolve_img_size(cfg), build.get("data", {}).get("classes"),
                   build.get("model_args", {}).get("num_classes"), notes=list(build.get("notes", [])))


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
    from ..data import DataError

    if (classes is not None and data.classes != list(classes)) or (n is not None and n != len(data.classes)):
        trained = f"{list(classes)[:5]}... ({len(classes)} classes)" if classes is not None else f"{n} classes"
        raise DataError(f"{folder} has classes {data.classes[:5]}... ({len(data.classes)}) but {path} was "
                        f"trained on {trained}")
