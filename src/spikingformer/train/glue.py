"""GLUE fine-tuning: ``spikingformer glue`` (the paper's NLU section, Table 4).

A sequence head (Eq. 15 over real tokens) on a ``models.text`` backbone, from an
``spikingformer mlm`` checkpoint (``init``) or from scratch; cross-entropy, or MSE on STS-B.
Training, devices, ``torchrun`` and resume: ``spikingformer.train.text_engine``.

Evaluation split (``val_split``, as the vision engine's): ``auto`` evaluates on the official
GLUE dev file(s) when ``data_dir/TASK/`` holds them (MNLI: ``dev_matched.tsv`` and
``dev_mismatched.tsv``, both reported, as ``_m`` / ``_mm``) and trains on all of ``train.tsv``;
without them, or with ``holdout``, a seeded class-balanced fraction of ``train.tsv`` is held out.
Every report names the split it used.  ``spikingformer eval`` scores a run's checkpoint with the same
functions (``score_splits``, ``per_step_scores``): on the run's split, a dev folder or any TSV file
(``evaluate_glue``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import DataError
from ..data import glue as gdata
from ..data import text as tdata
from ..data.split import balanced_split
from ..models import create_model, model_modality
from ..nn.fast import FastPath
from ..utils.errors import ConfigError, InputError
from ..weights import checkpoint as ckpt
from .config import apply_overrides, from_dict, parse_overrides
from .distributed import DistInfo, gather_objects, resolve_device, session
from .predict import prediction_record
from .runs import asked_options
from .text_engine import TextTask, TextTrainConfig, epoch_order, eval_shard, expand, finish, fit, to_device

__all__ = ["GlueConfig", "GlueSplits", "glue_splits", "predict", "answers", "score_splits", "per_step_scores",
           "records", "evaluate_glue", "run_glue"]

VAL_SPLITS = ("auto", "holdout")


@dataclass
class GlueConfig(TextTrainConfig):
    task: str = "sst2"                # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli
    data_dir: str = "~/.cache/spikingformer/glue"  # holds TASK/train.tsv (CoLA/, SST-2/, ...) and TASK/dev*.tsv
    init: str = ""                    # MLM checkpoint to start from; "": from scratch
    max_len: int = 128
    val_split: str = "auto"           # auto: official dev file(s) if present, else holdout | holdout: always
    holdout_fraction: float = 0.1     # seeded, class-balanced share of train.tsv held out for evaluation
    limit_train: int = 0              # >0: train on a seeded class-balanced subset of this size
    lr: float = 2e-4
    output: str = "runs/glue"

    def __post_init__(self):
        super().__post_init__()
        try:
            gdata.get_task(self.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.val_split not in VAL_SPLITS:
            raise ConfigError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {self.val_split!r}")
        if not 0 < self.holdout_fraction < 1 or self.limit_train < 0:
            raise ConfigError("holdout_fraction must lie in (0, 1) and limit_train be >= 0")


@dataclass
class GlueSplits:
    """The training examples and every evaluation split of one GLUE run."""

    train: gdata.GlueDataset
    evals: list[tuple[str, str, gdata.GlueDataset]]  # (metric suffix, name for reports, examples)
    split: str = "val"  # val: held out of train.tsv | dev: the official dev file(s) | test: a file eval was given

    @property
    def name(self) -> str:
        return "; ".join(name for _, name, _ in self.evals)


def _limit(idx: list[int], labels: list[int], n: int, seed: int) -> list[int]:
    """A seeded class-balanced subset of ``n`` of ``idx`` (all of them when ``n`` is 0 or not smaller)."""
    if not n or n >= len(idx):
        return idx
    _, keep = balanced_split([labels[i] for i in idx], n, seed)
    return [idx[k] for k in keep]


def _limited(n: int, total: int) -> str:
    """What a split's name adds when ``limit_val`` evaluates on ``n`` of its ``total`` examples: the split
    itself is unchanged (and so is what training may not see), as the vision splits say it."""
    return f", limited to {n} val examples" if n < total else ""


def _whole_files(task: gdata.GlueTask, files: list[tuple[str, Path]], limit: int,
                 name: Callable[[Path, int], str]) -> list[tuple[str, str, list, Path]]:
    """``(suffix, name, examples, path)`` of each file of ``files`` (``(suffix, path)``), every row of it or its
    first ``limit``, named ``name(path, rows)`` and what ``limit`` left out."""
    out = []
    for suffix, path in files:
        whole = gdata.read_glue(task, path)
        held = whole[:limit or None]
        out.append((suffix, f"{name(path, len(whole))}{_limited(len(held), len(whole))}", held, path))
    return out


def _dev_name(path: Path, n: int) -> str:
    return f"{path.stem} (official GLUE dev split, {n} examples)"


def glue_splits(cfg: GlueConfig, task: gdata.GlueTask, tok: tdata.WordPieceTokenizer) -> GlueSplits:
    """``cfg.val_split``: the official dev file(s) (``auto``, when present) or a seeded held-out share of train."""
    train_file = expand(cfg.data_dir) / task.folder / "train.tsv"
    examples = gdata.read_glue(task, train_file)
    # Regression (STS-B) has no classes to balance: one pseudo-class makes balanced_split a seeded random pick.
    labels = [0 if task.is_regression else int(e.label) for e in examples]
    dev = gdata.official_dev_files(task, expand(cfg.data_dir)) if cfg.val_split == "auto" else None
    if dev:
        train_idx, evals = list(range(len(examples))), _whole_files(task, dev, cfg.limit_val, _dev_name)
    else:
        n_val = max(1, round(len(examples) * cfg.holdout_fraction))
        train_idx, val_idx = balanced_split(labels, n_val, cfg.seed)
        kept = _limit(val_idx, labels, cfg.limit_val, cfg.seed + 2)
        why = "" if cfg.val_split == "holdout" else f"; no official {' + '.join(task.dev)} found"
        evals = [("", f"val (held-out {len(val_idx)} of {len(examples)} {task.folder} train examples, "
                      f"{'random' if task.is_regression else 'class-balanced'}, seed {cfg.seed}{why})"
                      f"{_limited(len(kept), len(val_idx))}", [examples[i] for i in kept], train_file)]
    train_idx = _limit(train_idx, labels, cfg.limit_train, cfg.seed + 1)
    return GlueSplits(gdata.GlueDataset([examples[i] for i in train_idx], tok, cfg.max_len, train_file),
                      [(sfx, name, gdata.GlueDataset(held, tok, cfg.max_len, path)) for sfx, name, held, path in evals],
                      "dev" if dev else "val")


def _key(name: str, suffix: str) -> str:
    """``accuracy`` for a single evaluation split, ``accuracy_m`` / ``accuracy_mm`` for MNLI's two."""
    return f"{name}_{suffix}" if suffix else name


def _suffixed(metrics: dict, suffix: str) -> dict:
    return {_key(k, suffix): v for k, v in metrics.items()}


# ---------------------------------------------------------------- scoring: `glue` while it trains, and `eval`

def _loss_sum(task: gdata.GlueTask, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task.is_regression:
        return F.mse_loss(out.squeeze(-1).float(), labels.float(), reduction="sum")
    return F.cross_entropy(out.float(), labels.long(), reduction="sum")


def predict(model, task: gdata.GlueTask, ds: gdata.GlueDataset, batch_size: int, info: DistInfo,
            per_step: bool = False) -> tuple[list, float]:
    """Each example's output on ``ds`` (its logits, or its score on STS-B) and the mean loss, each process
    scoring its share; with ``per_step``, the outputs of the read-out after each time step (``forward_steps``),
    the last being the model's."""
    steps, loss = None, 0.0
    part = eval_shard(len(ds), info)
    for s in range(part.start, part.stop, batch_size):
        b = to_device(gdata.collate([ds[i] for i in range(s, min(part.stop, s + batch_size))], ds.pad_id),
                      info.device)
        args = b["input_ids"], b["token_type_ids"], b["attention_mask"]
        outs = model.forward_steps(*args).float() if per_step else model(*args).float()[None]
        loss += float(_loss_sum(task, outs[-1], b["labels"]))
        steps = steps or [[] for _ in outs]
        for rows, out in zip(steps, outs):
            rows += out.squeeze(-1).tolist() if task.is_regression else out.tolist()
    shares = gather_objects((steps, loss))  # contiguous shares in rank order: the dataset's order
    n_steps = next(len(share) for share, _ in shares if share)
    merged = [[p for share, _ in shares if share for p in share[t]] for t in range(n_steps)]
    return merged if per_step else merged[0], sum(x for _, x in shares) / len(ds)


def answers(task: gdata.GlueTask, outputs: list) -> list:
    """The class of each output (``predict``): its largest logit, the first of equal ones as ``argmax``; on
    STS-B the score itself."""
    return outputs if task.is_regression else [max(range(len(o)), key=o.__getitem__) for o in outputs]


def score_splits(model, task: gdata.GlueTask, evals: list, batch_size: int, info: DistInfo) -> tuple[dict, list]:
    """The loss and every GLUE metric of ``task`` on each split of ``evals`` (``GlueSplits.evals``), keyed as a
    run's ``val_metrics`` (``accuracy``; MNLI's ``accuracy_m`` / ``accuracy_mm``), and each split's outputs."""
    metrics, outputs = {}, []
    for suffix, _, ds in evals:
        out, loss = predict(model, task, ds, batch_size, info)
        metrics.update(_suffixed(dict(loss=loss, **gdata.task_metrics(task, answers(task, out), ds.labels)), suffix))
        outputs.append(out)
    return metrics, outputs


def per_step_scores(model, task: gdata.GlueTask, evals: list, batch_size: int, info: DistInfo) -> dict:
    """How early the answer is made: the headline metric of the read-out after each time step, per split."""
    return {_key(task.metric, suffix): [gdata.task_metrics(task, answers(task, out), ds.labels)[task.metric]
                                        for out in predict(model, task, ds, batch_size, info, per_step=True)[0]]
            for suffix, _, ds in evals}


def records(task: gdata.GlueTask, ds: gdata.GlueDataset, outputs: list) -> list[dict]:
    """A record per example of ``ds``, as ``eval --predictions`` writes them: its file and line (``path``), its
    true label and the classes by probability (``predict.prediction_record``), or on STS-B the ``score``."""
    where = [f"{ds.source}:{ex.line}" for ex in ds.examples]
    if task.is_regression:
        return [{"path": w, "label": y, "score": s} for w, y, s in zip(where, ds.labels, outputs)]
    probs = torch.tensor(outputs).softmax(-1).tolist() if outputs else []
    # sorted is stable: of equal probabilities the first class leads, as in `answers`
    return [prediction_record(w, sorted(((task.labels[j], j, p) for j, p in enumerate(row)), key=lambda t: -t[2]),
                              task.labels[int(y)]) for w, y, row in zip(where, ds.labels, probs)]


# ---------------------------------------------------------------- `eval` of a glue run's checkpoint

# What draws the run's held-out split and says its task: changed, eval would score other examples (some trained
# on) under the run's split name, or read them as another task's.
_RUN_FIXED = ("task", "val_split", "holdout_fraction", "seed")


def evaluate_glue(path, run, data: str | None = None, device: str = "auto", batch_size: int | None = None,
                  sets: list[str] = (), predictions: bool = False) -> dict:
    """Score the checkpoint ``path`` of a ``glue`` run (``run``: its ``Weights``): on the split the run
    evaluated on without ``data``; with it, on every row of the TSV file ``data`` (``test``) or on the official
    dev file(s) of the task folder ``data`` (or of ``data/TASK/``).  The loss and every GLUE metric of the task,
    keyed as the run's ``val_metrics``, the headline metric after each time step (``per_step``), the split's
    name and size; with ``predictions``, a record per example (``records``)."""
    if "task" not in run.config:
        raise InputError(f"{path} holds the text model {run.name} but no glue run's config (an mlm run's "
                         "masked-LM scores are in its summary.json): eval scores `spikingformer glue` checkpoints")
    cfg, given = _eval_config(path, run.config, sets, device, batch_size)
    task = gdata.get_task(cfg.task)
    split, evals, folder = _scored(cfg, task, data, given, path)
    asked = asked_options(given)  # --set model_args.T=8: the model at another T
    model = run.build(asked, asked)
    info = DistInfo(0, 1, resolve_device(cfg.device))
    model.to(info.device).eval()
    # the run's precision (its evaluations ran so), uncompiled: one pass does not repay compiling
    precision = FastPath.from_modes("off", cfg.amp, info.device)
    with torch.no_grad(), precision.autocast(info.device):
        metrics, outputs = score_splits(model, task, evals, cfg.batch_size, info)
        per_step = per_step_scores(model, task, evals, cfg.batch_size, info)
    out = dict(checkpoint=str(path), model=run.name, task=task.name, step=run.info.get("step"),
               split=split, val_split="; ".join(name for _, name, _ in evals), data_dir=folder,
               val_examples=sum(len(ds) for _, _, ds in evals), metric=task.metric,
               value=metrics[_key(task.metric, evals[0][0])], val_metrics=metrics, per_step=per_step)
    if predictions:
        out["predictions"] = [r for (_, _, ds), outs in zip(evals, outputs) for r in records(task, ds, outs)]
    return out


def _eval_config(path, config: dict, sets: list[str], device: str,
                 batch_size: int | None) -> tuple[GlueConfig, dict]:
    """The run's config with ``--set`` (its ``data_dir`` or ``vocab`` moved, ``limit_val``, ``model_args.T``),
    and the parsed overrides; eval's device and batch size."""
    given = parse_overrides(list(sets))
    fixed = [k for k in _RUN_FIXED if k in given]
    if fixed:
        raise InputError(f"--set {', '.join(fixed)}: {path} is scored on the split and task its run used; "
                         "--data DIR|FILE.tsv scores other examples")
    extra = {"device": device, **({"batch_size": batch_size} if batch_size is not None else {})}
    where = f"{path} config" + (f" + --set {' '.join(sets)}" if sets else "")
    return from_dict(GlueConfig, dict(apply_overrides(config, given), **extra), where), given


def _scored(cfg: GlueConfig, task: gdata.GlueTask, data: str | None, given: dict, path) -> tuple[str, list, str]:
    """``(split, evals, data_dir)`` that eval scores (``evaluate_glue``).  The run's own ``limit_val`` (a smoke
    test's) reaches only the run's split; a given file or folder is scored whole unless ``--set limit_val``."""
    try:
        tok = tdata.WordPieceTokenizer(expand(cfg.vocab))
        if data is None:
            splits = glue_splits(cfg, task, tok)
            return splits.split, splits.evals, str(expand(cfg.data_dir))
        split, files = _given(task, expand(data), cfg.limit_val if "limit_val" in given else 0)
    except FileNotFoundError as e:  # the run's vocabulary or data moved, or MNLI's other dev file is missing
        moved = "vocab=FILE" if "vocabulary" in str(e) else "data_dir=DIR" if data is None else ""
        raise DataError(f"{e}" + (f" (--set {moved} where the run's files moved)" if moved else "")) from None
    except ValueError as e:  # another task's file, or a malformed one: the checkpoint's task says what was expected
        raise DataError(f"{e}" + ("" if data is None else f" ({path} was fine-tuned on {task.folder}: --data takes "
                                  f"a dev folder or TSV file of {task.folder})")) from None
    evals = [(sfx, name, gdata.GlueDataset(rows, tok, cfg.max_len, src)) for sfx, name, rows, src in files]
    return split, evals, str(expand(data))


def _given(task: gdata.GlueTask, data: Path, limit: int) -> tuple[str, list]:
    """``--data``: every row of a TSV file, a test set; or the official dev file(s) of a task folder, or of a
    GLUE data root's ``TASK/``, named as ``glue`` names them."""
    if data.is_file():
        return "test", _whole_files(task, [("", data)], limit, lambda p, n: f"test ({p}, {n} examples)")
    dev = (gdata.official_dev_files(task, data) or gdata.dev_files(task, data)) if data.is_dir() else None
    if not dev:
        raise DataError(f"--data {data}: " + ("no such file or folder" if not data.exists() else
                        f"no {task.folder} {' + '.join(task.dev)} in it or in {data / task.folder}; --data "
                        "FILE.tsv scores every row of a file"))
    return "dev", _whole_files(task, dev, limit, _dev_name)


# ---------------------------------------------------------------- fine-tuning

def run_glue(cfg: GlueConfig, resume: bool = False, json_path: str | None = None) -> dict:
    """Fine-tune ``cfg`` (or continue ``cfg.output``'s run with ``resume``); return the summary."""
    with session(cfg.device) as info:
        return _run(cfg, info, resume, json_path)


def _model(cfg: GlueConfig, task: gdata.GlueTask, tok: tdata.WordPieceTokenizer, resume: bool):
    """The sequence model ``cfg`` fine-tunes: the ``init`` checkpoint's architecture under a fresh head."""
    if cfg.init:
        init_state, build = ckpt.load_weights(expand(cfg.init))
        if build.get("model") is not None and model_modality(build["model"]) != "text":  # options that fit no text model
            raise ConfigError(f"init {cfg.init} holds a vision model ({build['model']}), not a text model: "
                              f"start from a `spikingformer mlm` checkpoint")
        model_args = {**build.get("model_args", {}), **cfg.model_args}
    else:
        model_args = {"max_len": cfg.max_len, **cfg.model_args}
    model_args.update(head="sequence", num_classes=task.num_classes, vocab_size=len(tok), pad_id=tok.pad_id)
    model = create_model(cfg.model, **model_args)
    if model.cfg.max_len < cfg.max_len:
        raise ConfigError(f"max_len {cfg.max_len} exceeds the model's max_len {model.cfg.max_len}")
    if cfg.init and not (resume and (expand(cfg.output) / "last.pt").is_file()):
        ckpt.load_backbone(model, init_state, cfg.init)  # the MLM encoder; the sequence head starts fresh
    return model


def _majority(task: gdata.GlueTask, train: gdata.GlueDataset, evals: list) -> dict:
    """What predicting the training split's most frequent class scores on each split."""
    labels = [int(y) for y in train.labels]
    majority = max(set(labels), key=labels.count)
    return {k: v for suffix, _, ds in evals
            for k, v in _suffixed(gdata.task_metrics(task, [majority] * len(ds), ds.labels), suffix).items()}


def _run(cfg: GlueConfig, info, resume: bool, json_path: str | None) -> dict:
    torch.manual_seed(cfg.seed)
    task = gdata.get_task(cfg.task)
    tok = tdata.WordPieceTokenizer(expand(cfg.vocab))
    splits = glue_splits(cfg, task, tok)
    train, val_name = splits.train, splits.name
    model = _model(cfg, task, tok, resume)

    def evaluate(model) -> dict:
        out = score_splits(model, task, splits.evals, cfg.batch_size, info)[0]
        # val_acc / val_loss feed MetricsLog's curves: the first split's (MNLI-m); Pearson stands in on STS-B.
        first = splits.evals[0][0]
        return {"val_acc": out.get(_key("accuracy", first), out.get("pearson")),
                "val_loss": out[_key("loss", first)], **{f"val_{k}": v for k, v in out.items()}}

    def batch_at(step: int) -> dict:
        _, idx = epoch_order(len(train), cfg.batch_size, cfg.seed, step)
        return gdata.collate([train[int(i)] for i in idx], tok.pad_id)

    meta = dict(model=cfg.model, model_args=dataclasses.asdict(model.cfg), task=task.name, init=cfg.init)
    history = fit(cfg, info, TextTask(
        model=model, meta=meta, batch_at=batch_at, evaluate=evaluate, units=lambda b: len(b["labels"]),
        loss=lambda m, b: _loss_sum(task, m(b["input_ids"], b["token_type_ids"], b["attention_mask"]), b["labels"]),
        per_epoch=max(1, len(train) // cfg.batch_size)), resume)
    aliases = {"val_acc", "val_loss" if splits.evals[0][0] else ""}  # the curves' copies of a split's figures
    final = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_") and k not in aliases}
    headline = [_key(task.metric, sfx) for sfx, _, _ in splits.evals]
    summary = dict(command="glue", task=task.name, metric=task.metric, value=final[headline[0]],
                   val_metrics=final, model=cfg.model, init=cfg.init or "scratch", steps=cfg.steps,
                   train_examples=len(train), val_split=val_name, checkpoint=str(expand(cfg.output) / "last.pt"))
    if not task.is_regression:
        summary["majority_baseline"] = _majority(task, train, splits.evals)
    model.eval()
    with torch.no_grad():
        summary["per_step"] = per_step_scores(model, task, splits.evals, cfg.batch_size, info)
    scores = " / ".join(f"{k} {final[k]:.4f}" for k in headline)
    base = summary.get("majority_baseline", {})
    if info.is_main:
        print(f"{task.name} {scores} on {val_name}"
              + ("; majority class: " + " / ".join(f"{base[k]:.4f}" for k in headline) if base else ""))
        for k, values in summary["per_step"].items():
            print(f"{k} after each time step: " + ", ".join(f"{t} {v:.4f}" for t, v in enumerate(values, 1)))
    return finish(cfg, info, summary, json_path)
