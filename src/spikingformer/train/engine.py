"""What the image engines share (``train``, ``pretrain``): timm's optimizer and schedule, the seeded,
sharded loaders, the epoch loop with gradient accumulation (``train_one_epoch``) and the loop over epochs
(``train_epochs``).  The run's plumbing (open or resume, restore, DDP, save) is ``train.run.Trainer``, and the
optimizer step ``train.step``, both shared with the text engine.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import EpochSampler, GuardedLoader, SampleFailure, ShardSampler, build_data
from ..models import create_model
from ..nn.fast import FastPath
from ..utils.progress import progress_bar
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier
from .run import Trainer, load_states
from .safe_stop import (
    RunInterrupted,
    StopSignals,
    UpdateMark,
    ignore_interrupts,
    stop_mid_epoch,
    validating,
)
from .step import micro_step, optimizer_step

__all__ = ["Progress", "resolve_img_size", "build_training", "seed_all", "train_one_epoch", "train_epochs",
           "checkpointer", "begin_epoch", "load_data", "make_loaders", "restore"]


@dataclasses.dataclass
class Progress:
    """Where a run stands; stored in every checkpoint."""
    epoch: int = 0           # the epoch in progress (or next to start)
    step: int = 0            # batches already done in that epoch (an update every accum_steps of them)
    global_step: int = 0     # batches done in the whole run (pretrain: seeds each batch's masks)
    history: list = dataclasses.field(default_factory=list)  # one metrics dict per finished epoch
    # this epoch so far: loss * n, correct (0 where nothing is counted), n
    epoch_sums: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])

    def next_epoch(self) -> None:
        """Close the epoch (trained and validated): the next one starts at its first step."""
        self.epoch, self.step, self.epoch_sums = self.epoch + 1, 0, [0.0, 0.0, 0.0]


def resolve_img_size(cfg: TrainConfig) -> int:
    """The input size a run trains at: ``img_size`` if set, else the named model's default.  The model is
    built either way (on the meta device: nothing allocated), so an unknown name or model option fails
    here, before any data loads."""

    with torch.device("meta"):
        default = create_model(cfg.model, **cfg.model_args).cfg.img_size
    return cfg.img_size or default


def updates_per_epoch(steps_per_epoch: int, accum_steps: int) -> int:
    """Optimizer updates in an epoch of ``steps_per_epoch`` batches: one per ``accum_steps`` of them, the
    last group of an epoch possibly shorter (as timm's ``--grad-accum-steps``)."""
    return -(-steps_per_epoch // accum_steps)


def updates_done(state, steps_per_epoch: int, accum_steps: int) -> int:
    """Optimizer updates before ``state`` (whose ``step`` is at an update boundary): what the schedule counts."""
    return state.epoch * updates_per_epoch(steps_per_epoch, accum_steps) + -(-state.step // accum_steps)


def base_lr(opt: torch.optim.Optimizer) -> float:
    """The schedule's lr: that of the top layer's groups when ``layer_decay`` scales the others down."""
    return max(group["lr"] for group in opt.param_groups)


def build_training(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, fused: bool = False):
    """timm's AdamW (no decay on norms/biases; with ``layer_decay`` one lr scale per layer, from the
    model's ``group_matcher``), cosine schedule with warm-up and cool-down, Mixup, loss."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    extra = {"fused": True} if fused and cfg.opt in ("adamw", "adam") else {}
    opt = create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                              layer_decay=cfg.layer_decay or None, **extra)
    sched, _ = create_scheduler_v2(opt, cfg.sched, num_epochs=cfg.epochs, cooldown_epochs=cfg.cooldown_epochs,
                                   warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                                   step_on_epochs=not cfg.sched_on_updates,
                                   updates_per_epoch=updates_per_epoch(steps_per_epoch, cfg.accum_steps))
    mixup = None
    if cfg.mixup_active:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=model.num_classes)
        criterion = SoftTargetCrossEntropy()  # mixup already smoothed the targets
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    return opt, sched, mixup, criterion


def seed_all(seed: int, rank: int) -> None:
    """Weights start identical on every process; Python/NumPy streams (Mixup) differ per process, as in timm."""
    torch.manual_seed(seed)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


def train_one_epoch(cfg, state, model, loader, opt, sched, scaler, info: DistInfo, path: FastPath,
                    save_mid_epoch, step_loss, stop: StopSignals | None = None) -> tuple[float, float]:
    """One pass over ``loader`` from ``state.step``, for every image engine (train, pretrain).

    ``step_loss(model, x, y) -> (loss, correct)`` runs the forward under autocast; ``correct`` is
    the batch's count of right top-1 predictions, or None when there is none to count.  Returns the
    epoch's mean loss and accuracy over every process; ``state.epoch_sums`` then holds the epoch's
    totals (and carries a resumed epoch's), until ``state.next_epoch()``.

    With ``accum_steps > 1`` the gradients of that many batches add up (each loss divided by the
    group's size, so the update follows the mean loss) before one optimizer update; DDP
    all-reduces only on the group's last batch (``step.micro_step``).

    A batch that fails to load (``data.SampleFailure``) or a signal caught by ``stop`` ends the
    epoch early: ``safe_stop.stop_mid_epoch`` checkpoints the last update and raises.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Resumed mid-epoch: the main process carries the totals of the steps already done (all processes').
    sums = torch.tensor(state.epoch_sums if info.is_main else [0.0] * 3, dtype=torch.float64, device=info.device)
    bar = progress_bar(loader, f"epoch {state.epoch + 1}/{cfg.total_epochs}", total=len(loader),
                       enabled=info.is_main and cfg.progress)
    steps, accum = loader.sampler.steps_per_epoch, cfg.accum_steps
    # where the last optimizer update left the run (None: after every batch, with one batch per update)
    mark = UpdateMark.now(state, sums, model) if accum > 1 else None
    try:
        for x, y in bar:
            loss, closes = _batch(cfg, state, model, x, y, scaler, info, path, step_loss, steps, sums)
            if state.step % 10 == 0:  # look at the loss only now and then: reading it waits for the GPU
                _check_loss(sums, state)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{base_lr(opt):.2e}", refresh=False)
            if closes:
                optimizer_step(opt, scaler, params, cfg.clip_grad)
                if cfg.sched_on_updates:
                    sched.step_update(updates_done(state, steps, accum))
                mark = UpdateMark.now(state, sums, model) if accum > 1 else None
                if cfg.ckpt_every and state.step % cfg.ckpt_every == 0 and state.step < steps:
                    state.epoch_sums = all_reduce_sum(sums.clone()).tolist()
                    save_mid_epoch()  # the epoch's end writes its own checkpoint
            if stop is not None and (signum := stop.pending(info, state.step)):
                raise RunInterrupted("", signum)
    except (SampleFailure, RunInterrupted) as e:
        stopped = e.with_traceback(None)  # its frames would hold the loaders' workers until garbage collection
    else:
        state.epoch_sums = all_reduce_sum(sums).tolist()
        loss_sum, correct, n = state.epoch_sums
        return loss_sum / n, correct / n
    stop_mid_epoch(stopped, mark or UpdateMark.now(state, sums, model), model, cfg, state, info, save_mid_epoch,
                   steps)


def _batch(cfg, state, model, x, y, scaler, info: DistInfo, path: FastPath, step_loss, steps: int,
           sums: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """One batch's forward and backward, its gradients added to those of its group of ``accum_steps``, and its
    loss, hits and size to ``sums``; returns its loss and whether it closes its group (an update is due)."""
    x, y = path.to_input(x.to(info.device, non_blocking=True)), y.to(info.device, non_blocking=True)
    first = state.step // cfg.accum_steps * cfg.accum_steps   # this batch's group of accum_steps: [first, last]
    last = min(first + cfg.accum_steps, steps) - 1

    def forward():  # the loss / 1 without accumulation: exact
        loss, correct = step_loss(model, x, y)
        return loss / (last - first + 1), loss, correct

    _, loss, correct = micro_step(model, scaler, path, info.device, state.step == last, forward)
    state.step += 1
    state.global_step += 1
    n = torch.tensor(float(len(y)), dtype=torch.float64, device=info.device)  # labels: one per sample
    sums += torch.stack([loss.detach().double() * n, torch.zeros_like(n) if correct is None else
                         correct.double(), n])
    return loss, state.step == last + 1


def _check_loss(sums: torch.Tensor, state) -> None:
    if not math.isfinite(float(sums[0])):
        raise FloatingPointError(f"the training loss became {float(sums[0])} by epoch {state.epoch + 1} "
                                 f"step {state.step}: lower lr or set clip_grad")


def begin_epoch(cfg, state, sampler, sched, opt) -> float:
    """Put the sampler and the schedule where ``state`` stands (mid-epoch after a resume); the lr the
    epoch started with (what its metrics report, resumed or not)."""
    sampler.set_epoch(state.epoch, state.step)
    sched.step(state.epoch)
    if not cfg.sched_on_updates:
        return base_lr(opt)
    steps = sampler.steps_per_epoch
    sched.step_update(state.epoch * updates_per_epoch(steps, cfg.accum_steps))
    lr = base_lr(opt)
    sched.step_update(updates_done(state, steps, cfg.accum_steps))
    return lr


def load_data(cfg: TrainConfig, info: DistInfo):
    """``build_data`` at the model's size; with ``download`` the main process fetches alone, then the rest read."""
    if cfg.download and not info.is_main:
        barrier()
    data = build_data(cfg, resolve_img_size(cfg))
    if cfg.download and info.is_main:
        barrier()
    return data


def make_loaders(cfg: TrainConfig, data, info: DistInfo):
    """The seeded, sharded train loader (its sampler resumes mid-epoch) and the sharded validation loader;
    a sample that fails to load stops either with a ``SampleFailure`` naming it (``data.GuardedLoader``)."""
    sampler = EpochSampler(len(data.train), cfg.batch_size, cfg.seed, info.rank, info.world)
    common = dict(num_workers=cfg.workers, pin_memory=info.device.type == "cuda", collate_fn=data.collate,
                  worker_init_fn=ignore_interrupts)
    train_loader = DataLoader(data.train, cfg.batch_size, sampler=sampler, drop_last=True,
                              persistent_workers=cfg.workers > 0, **common)
    val_loader = DataLoader(data.val, cfg.val_batch_size, sampler=ShardSampler(len(data.val), info.rank, info.world),
                            **common)
    return sampler, GuardedLoader(train_loader), GuardedLoader(val_loader)


def restore(state: dict, info: DistInfo, model: nn.Module, opt, sched, scaler) -> dict:
    """Load a checkpoint's model, optimizer, scheduler and scaler (``run.load_states``); return its progress."""
    load_states(state, info, model, opt, sched, scaler)
    return state["progress"]


def checkpointer(run: Trainer, state) -> Callable:
    """``save(path=None)``: ``run``'s checkpoint (``last.pt`` by default) with ``state``, the run's progress,
    and every process's RNG streams (a collective: every process calls it)."""
    def save(path=None) -> None:
        run.save(path, progress=vars(state).copy(), rng=run.rng_states())
    return save


def train_epochs(run: Trainer, state, sampler, loader, save: Callable, epoch_loss: Callable, train_metrics: Callable,
                 validate: Callable, end_epoch: Callable, val_split: str, t_start: float) -> None:
    """The epochs of ``train`` and ``pretrain`` from where ``state`` stands.  Each: the schedule and sampler
    placed (``begin_epoch``), one pass (``train_one_epoch`` with ``epoch_loss()``'s ``step_loss``), then
    ``validate()`` (a signal meanwhile checkpoints the trained epoch, ``safe_stop.validating``); the epoch's
    record ``{epoch, lr, **train_metrics(loss, acc), **validate(), val_split, epoch_seconds, elapsed_seconds}``
    joins ``state.history``, the next epoch is due, and ``end_epoch(record)`` saves, logs and reports."""
    cfg, info = run.cfg, run.info
    with StopSignals() as stop:
        while state.epoch < cfg.total_epochs:
            epoch_start = time.time()
            lr = begin_epoch(cfg, state, sampler, run.sched, run.opt)
            loss, acc = train_one_epoch(cfg, state, run.train_model, loader, run.opt, run.sched, run.scaler, info,
                                        run.path, save, epoch_loss(), stop)
            metrics = {"epoch": state.epoch + 1, "lr": lr, **train_metrics(loss, acc)}
            with validating(cfg, state, info, save):
                metrics.update(validate())
            metrics.update(val_split=val_split, epoch_seconds=time.time() - epoch_start,
                           elapsed_seconds=time.time() - t_start)
            state.history.append(metrics)
            state.next_epoch()
            end_epoch(metrics)
