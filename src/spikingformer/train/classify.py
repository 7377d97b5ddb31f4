"""Training engine: ``spikingformer train`` / ``spikingformer eval`` (timm's recipe pieces, nanoGPT's loop).

``run(cfg)`` trains one model end to end: data (``spikingformer.data``), timm's optimizer,
scheduler, Mixup/CutMix and losses, bf16 autocast and the fast path (``spikingformer.nn.fast``)
on CUDA, SyncBatchNorm, DDP under ``torchrun``, gradient accumulation (``accum_steps``).  The
epoch loop and the run plumbing it shares with ``pretrain`` live in ``spikingformer.train.engine``.  Each epoch appends to ``metrics.jsonl`` and redraws
``metrics.png``; ``summary.json`` closes the run.  ``last.pt`` (every epoch, and every
``ckpt_every`` steps) and ``best.pt`` hold everything a resume needs, so a run killed at any
point and restarted with ``--resume`` ends with the same weights as one never interrupted.  Ctrl-C
(SIGINT), SIGTERM, or a sample that fails to load or transform, checkpoint the run before it stops
(``spikingformer.train.safe_stop``), and ``--resume`` continues with the run's own config.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch

from ..models import create_model
from ..utils.errors import InputError
from ..weights import checkpoint as ckpt
from . import engine
from .config import TrainConfig
from .distributed import DistInfo, session
from .engine import (
    build_training,
    checkpointer,
    load_data,
    make_loaders,
    seed_all,
    train_epochs,
)
from .evaluation import evaluate, sampled_spike_stats
from .pretrain import KIND, load_pretrained_encoder
from .records import MetricsLog
from .run import Trainer, open_output

__all__ = ["Progress", "run"]

@dataclass
class Progress(engine.Progress):
    """``engine.Progress`` and the best validation accuracy so far."""
    best_acc: float = -1.0
    best_epoch: int = -1


def model_kwargs(cfg: TrainConfig, num_classes: int, in_chans: int) -> dict:
    """``cfg.model_args`` plus what the data decides; a contradiction is an error, not a silent override."""
    args = dict(cfg.model_args)
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if key in args and args[key] != value:
            raise InputError(f"model_args.{key}={args[key]} but the dataset has {key}={value}")
        args[key] = value
    if cfg.img_size:
        args["img_size"] = cfg.img_size
    return args


def init_from(model: torch.nn.Module, cfg: TrainConfig, classes: list[str] | None = None) -> str:
    """Start ``model`` from ``cfg.init_from``: the encoder of a ``spikingformer pretrain`` checkpoint (the
    head starts fresh), or every tensor of a ``spikingformer train`` checkpoint of the same model, whose
    ``T`` may differ (V2 §5.2 fine-tunes at T = 1, then at T = 2, 4 or 6); its head is kept when it was
    trained on this run's ``classes`` (the same names, in the same order).  Returns what was loaded, in words."""
    path = cfg.init_from
    state = ckpt.load_checkpoint(path)
    meta = state.get("meta") if isinstance(state.get("meta"), dict) else {}
    if meta.get("kind") == KIND:
        loaded = load_pretrained_encoder(model, path, state)
        return (f"initialised {loaded['loaded']} backbone tensors from {loaded['source']} "
                f"(pre-trained {loaded['model']}); head {loaded['head']} freshly initialised")
    weights = state.get("model")
    if not isinstance(weights, dict) or "model_args" not in meta:
        raise ckpt.CheckpointError(f"init_from={path} is neither a `spikingformer pretrain` nor a "
                                   "`spikingformer train` checkpoint")
    if meta.get("model") != cfg.model:
        raise ckpt.CheckpointError(f"init_from={path} holds a {meta.get('model')}, this run trains a {cfg.model}")
    source = f"{path} ({meta['model']} {meta['model_args']})"
    head = ckpt.load_backbone(model, weights, source)
    own = model.state_dict()
    same_classes = classes is None or meta.get("classes") in (None, list(classes))
    if same_classes and all(k in weights and weights[k].shape == own[k].shape for k in head):
        model.load_state_dict({**own, **{k: weights[k] for k in head}})
        return f"initialised every tensor from {source}"
    return f"initialised the backbone from {source}; head {head} freshly initialised (other classes)"


def classification_loss(mixup, criterion):
    """``step_loss`` of supervised training: Mixup/CutMix (when on), forward, loss, top-1 hits."""
    def step_loss(model, x, y):
        labels = y
        if mixup is not None and x.dim() == 5:  # event frames [T, B, ...]: mix samples (axis 1), never steps
            mixed, y = mixup(x.transpose(0, 1), y)
            x = mixed.transpose(0, 1)
        elif mixup is not None:
            x, y = mixup(x, y)
        logits = model(x)
        correct = (logits.argmax(1) == labels).sum() if mixup is None else None
        return criterion(logits, y), correct
    return step_loss


# ----------------------------------------------------------------------------- supervised training

def run(cfg: TrainConfig, resume: bool = False, overrides: dict | None = None) -> dict:
    """Train ``cfg`` to the end (or continue ``cfg.output``'s run with ``resume``); return the summary.
    ``overrides``: the ``--set`` options ``cfg`` was given, which the run's checkpoints record (added to
    those of its first start), so that ``--resume`` need not repeat them (``run.resume_config``).
    SIGINT / SIGTERM, or a sample that fails to load, stop the run once it is checkpointed (``safe_stop``)."""
    with session(cfg.device) as info:
        return _run(cfg, resume, info, overrides or {})


def _run(cfg: TrainConfig, resume: bool, info: DistInfo, overrides: dict) -> dict:

    t_start = time.time()
    run = Trainer(cfg, info, resume, overrides)
    seed_all(cfg.seed, info.rank)
    data = load_data(cfg, info)
    margs = model_kwargs(cfg, len(data.classes), data.in_chans)
    model = create_model(cfg.model, **margs)
    if cfg.init_from and run.resumed is None:
        report = init_from(model, cfg, data.classes)
        if info.is_main:
            print(report, flush=True)
    fast = run.prepare(model)
    sampler, train_loader, val_loader = make_loaders(cfg, data, info)
    opt, sched, mixup, criterion = build_training(cfg, run.model, sampler.steps_per_epoch, run.path.fused_optimizer)
    resumed = run.start(opt, sched)
    state = Progress() if resumed is None else Progress(**resumed["progress"])
    log = MetricsLog(run.out, enabled=info.is_main, title=f"{cfg.model} on {cfg.dataset}: {data.val_name}")
    log.restore(state.history)
    run.meta = {"model": cfg.model, "model_args": margs, "classes": data.classes, "val_name": data.val_name,
                "mean": list(data.mean), "std": list(data.std), "img_size": data.img_size,
                "data_root": os.path.realpath(os.path.expanduser(cfg.data_dir))}
    n_params = sum(p.numel() for p in run.model.parameters())
    if info.is_main:
        where = open_output(run.out, cfg, resumed is not None, state)
        sized = f" ({', '.join(f'{k}={v}' for k, v in cfg.model_args.items())})" if cfg.model_args else ""
        print(f"{cfg.model}{sized}: {n_params / 1e6:.2f}M params, {len(data.train)} train images, "
              f"{data.val_name}; {info.world} process(es) on {info.device}, {run.path.describe()}; {where}",
              flush=True)
    save = checkpointer(run, state)
    train_epochs(run, state, sampler, train_loader, save, functools.partial(_epoch_loss, cfg, state, mixup, criterion),
                 lambda loss, acc: {"train_loss": loss, **({"train_acc": acc} if mixup is None else {})},
                 lambda: evaluate(fast, val_loader, info.device, run.path),
                 functools.partial(_end_epoch, run, state, log, save), data.val_name, t_start)
    spikes = sampled_spike_stats(run.model, data, info.device, cfg.val_batch_size, cfg.seed)
    final = state.history[-1]
    summary = {"model": cfg.model, "params": n_params, "dataset": cfg.dataset, "val_split": data.val_name,
               "final_val_acc": final["val_acc"], "final_val_acc5": final["val_acc5"],
               "final_val_loss": final["val_loss"], "best_val_acc": state.best_acc, "best_epoch": state.best_epoch,
               "epochs": cfg.total_epochs, "world_size": info.world, "device": str(info.device),
               "amp": str(run.path.amp_dtype or "fp32"), "seconds": time.time() - t_start, **spikes,
               "config": cfg.to_dict()}
    log.summary(summary)
    return summary


def _epoch_loss(cfg: TrainConfig, state: Progress, mixup, criterion):
    """The ``step_loss`` of the epoch starting at ``state``: Mixup/CutMix off from ``mixup_off_epoch`` on
    (Mixup still smooths the one-hot targets, as in timm)."""
    if mixup is not None and cfg.mixup_off_epoch and state.epoch >= cfg.mixup_off_epoch:
        mixup.mixup_enabled = False
    return classification_loss(mixup, criterion)


def _end_epoch(run: Trainer, state: Progress, log, save, metrics: dict) -> None:
    """After an epoch: the best accuracy so far, ``last.pt`` (and ``best.pt`` when it improved), the logs."""
    improved = metrics["val_acc"] > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = metrics["val_acc"], metrics["epoch"]
    save()
    if improved and run.info.is_main:
        ckpt.atomic_copy(run.last, run.out / "best.pt")
    log.write(state.history)
    if run.info.is_main:
        print(f"epoch {metrics['epoch']}/{run.cfg.total_epochs}  lr {metrics['lr']:.2e}  train_loss "
              f"{metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  val_acc "
              f"{100 * metrics['val_acc']:.2f} %  ({metrics['epoch_seconds']:.1f} s)", flush=True)


# ----------------------------------------------------------------------------- command line
