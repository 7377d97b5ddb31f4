"""The step-based training engine shared by ``spikingformer mlm`` and ``spikingformer glue``.

The paper (section "Natural Language Understanding", Table 4) pre-trains Spikingformer by
masked language modelling (Devlin et al. 2019) and fine-tunes it on GLUE at ``T = 4``.  Both
commands train a ``models.text`` model for a fixed number of optimizer steps with AdamW and a
linear warm-up followed by a linear or cosine decay to zero, evaluate every ``eval_every``
steps, and write ``last.pt`` (atomic, resumable with ``--resume``), ``metrics.jsonl`` /
``metrics.png`` and ``summary.json`` to ``output``.  The batch of step ``s`` and its masks
depend only on ``(seed, s)``, so a resumed run reproduces the uninterrupted one exactly.

Devices and processes, as the vision engine (``train.classify``): ``device`` (``auto``: CUDA when
available, ``cuda:LOCAL_RANK`` under ``torchrun``), ``amp`` (bf16 autocast on CUDA by default,
fp16 before Ampere; fp16 with a ``GradScaler``) and ``fast`` (``spikingformer.nn.fast``: ``torch.compile`` and the
fused AdamW, on by default on CUDA only).  Under ``torchrun`` every process builds the step's
whole batch (``batch_size`` is the global batch) and trains on its contiguous share; DDP
averages the gradients, and each loss is a sum scaled by ``world / (terms in the global
batch)``, so the update is that of one process with the whole batch.  BatchNorm keeps
per-process statistics unless ``sync_bn`` (``distributed.convert_sync_batchnorm``), which
normalizes over the global batch: only then do N processes compute what one does.  With
``accum_steps`` each process runs its share in that many parts, adding up their gradients (DDP
all-reduces after the last): the same update in less memory, BatchNorm normalising over each part.
Evaluation is sharded over the processes and its sums all-reduced; only rank 0 writes files.  The run's
plumbing (open or resume, restore, DDP, save) is ``train.run.Trainer`` and the optimizer step ``train.step``,
as for the image commands.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..models import create_model, list_models
from ..models.text import SpikingformerText
from ..nn.fast import FastPath
from ..utils.errors import ConfigError
from ..utils.outputs import write_json
from ..utils.progress import progress_bar
from ..weights import checkpoint as ckpt
from .config import RunConfig, validate_device
from .distributed import DistInfo, all_reduce_sum
from .records import MetricsLog
from .run import Trainer
from .step import micro_step, optimizer_step

__all__ = ["TextTrainConfig", "TextTask", "fit", "finish", "epoch_order", "eval_shard", "stack", "to_device",
           "expand", "add_command", "SCHEDS"]

SCHEDS = ("linear", "cosine")


@dataclass
class TextTrainConfig(RunConfig):
    """Keys every text command shares: ``RunConfig``'s, with the text defaults, and the vocabulary, the global
    batch and the step-based schedule and evaluation."""

    model: str = "spikingformer_text_2_128"   # a name of list_models(modality="text")
    vocab: str = "~/.cache/spikingformer/text/bert-base-uncased-vocab.txt"
    batch_size: int = 32              # the global batch: split over the processes under torchrun
    accum_steps: int = 1              # parts each process's share runs in, their gradients added (less memory)
    weight_decay: float = 0.01        # on matrices and embeddings only (nanoGPT's rule)
    warmup_steps: int = 100
    steps: int = 1000                 # optimizer steps in the whole run
    sched: str = "linear"             # linear | cosine decay to 0 after the warm-up
    clip_grad: float = 1.0            # >0: clip the global gradient norm
    eval_every: int = 200             # evaluate and checkpoint every this many steps (and at the end)
    output: str = "runs/text"

    def __post_init__(self):
        checks = [
            (self.model in list_models(modality="text"),
             f"model must be one of {', '.join(list_models(modality='text'))}, got {self.model!r}"),
            (self.sched in SCHEDS, f"sched must be one of {', '.join(SCHEDS)}, got {self.sched!r}"),
            (min(self.steps, self.eval_every, self.batch_size, self.accum_steps) >= 1,
             "steps, eval_every, batch_size and accum_steps must be >= 1"),
            (min(self.warmup_steps, self.limit_val) >= 0, "warmup_steps and limit_val must be >= 0"),
        ] + self.shared_checks()
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        validate_device(self.device)
        try:  # model options fail here, before the vocabulary or any data loads
            with torch.device("meta"):
                create_model(self.model, **self.model_args)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None


@dataclass
class TextTask:
    """What one command trains.  ``loss`` returns the *sum* of its terms over a batch and ``units`` how many
    terms the global batch has (masked tokens, examples): the engine divides, so that every process's share
    weighs what it weighs in the whole batch."""

    model: SpikingformerText
    meta: dict                                        # stored in the checkpoint beside the weights
    batch_at: Callable[[int], dict]                   # the global batch of a step (CPU tensors)
    loss: Callable[[nn.Module, dict], Tensor]         # (model, batch on the device) -> summed loss
    units: Callable[[dict], int]                      # global batch -> number of loss terms
    evaluate: Callable[[nn.Module], dict]             # eval-mode model -> metrics (sharded, all-reduced)
    per_epoch: int                                    # steps per pass over the training data


class _Objective(nn.Module):
    """Model and loss as one module: DDP and ``torch.compile`` then see the whole training forward
    (the masked-LM loss reads the features of the masked tokens only, not ``model(x)``)."""

    def __init__(self, model: SpikingformerText, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: dict) -> Tensor:
        return self.loss(self.model, batch)


def expand(p: str) -> Path:
    return Path(p).expanduser()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def stack(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def eval_shard(n: int, info: DistInfo) -> range:
    """This process's contiguous share of ``n`` evaluation items (all of them in a single process)."""
    return range(n * info.rank // info.world, n * (info.rank + 1) // info.world)


def epoch_order(n: int, batch_size: int, seed: int, step: int) -> tuple[int, torch.Tensor]:
    """``(epoch, indices)`` of the batch of global ``step``: a seeded permutation per epoch, the last
    partial batch dropped.  A function of ``step`` alone, so a resumed run draws the same batches."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    return epoch, _permutation(n, seed, epoch)[k * batch_size:(k + 1) * batch_size]


@functools.lru_cache(maxsize=2)  # drawn once per epoch, not once per step
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _optimizer(model: nn.Module, cfg: TextTrainConfig, path: FastPath):
    params = list(dict(model.named_parameters()).values())  # tied weights once
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    opt = path.adamw(groups, lr=cfg.lr, betas=(0.9, 0.999))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return max(0.0, 1 - frac) if cfg.sched == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(cfg: TextTrainConfig, info: DistInfo, task: TextTask, resume: bool) -> list[dict]:
    """Train ``cfg.steps`` steps on ``info.device``; evaluate + checkpoint every ``eval_every``; return the history."""
    world = info.world
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ConfigError(f"batch_size {cfg.batch_size} (the global batch) does not divide into {world} process(es) "
                          f"x accum_steps {cfg.accum_steps} parts")
    run = Trainer(cfg, info, resume)
    log = MetricsLog(run.out, enabled=info.is_main, title=f"{type(cfg).__name__[:-6]} {cfg.model}")
    run.prepare(task.model, lambda model: _Objective(model, task.loss))  # sync_bn: task.model's modules replaced
    run.meta = task.meta
    state = run.start(*_optimizer(run.model, cfg, run.path))
    step, history = (state["step"], state["history"]) if state is not None else (0, [])
    log.restore(history)
    params = list(run.model.parameters())
    sums = torch.zeros(2, dtype=torch.float64, device=info.device)  # since the last evaluation: loss, steps
    bar = progress_bar(range(step, cfg.steps), run.out.name, initial=step, total=cfg.steps,
                       enabled=cfg.progress and info.is_main)
    for step in bar:
        loss = _train_step(run, task, step, params)
        sums += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=info.device)])
        done = step + 1
        if done % 10 == 0:  # reading the loss waits for the GPU: now and then only
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.sched.get_last_lr()[0]:.1e}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            record = _evaluate(run, task, done, sums)
            history.append(record)
            sums.zero_()
            run.save(rng=ckpt.rng_state(), step=done, history=history)
            log.write(history)
            if info.is_main:
                bar.write("step {step}: ".format(**record) + ", ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "step")))
    return history


def _train_step(run: Trainer, task: TextTask, step: int, params: list) -> Tensor:
    """The optimizer step of global ``step``: this process's contiguous share of the step's batch, in
    ``accum_steps`` parts; each loss a sum scaled by ``world / units``, so that DDP's mean over the processes
    is the global batch's mean.  Returns this process's loss."""
    cfg, info = run.cfg, run.info
    run.model.train()
    batch = task.batch_at(step)
    scale = info.world / max(1, task.units(batch))  # DDP averages over processes: their sum / units
    share = cfg.batch_size // info.world
    part = share // cfg.accum_steps
    loss = torch.zeros((), device=info.device)
    for i in range(cfg.accum_steps):
        lo = info.rank * share + i * part
        mine = to_device({k: v[lo:lo + part] for k, v in batch.items()}, info.device)
        part_loss, = micro_step(run.train_model, run.scaler, run.path, info.device, i == cfg.accum_steps - 1,
                                lambda: (run.train_model(mine) * scale,))  # noqa: B023 (called at once)
        loss = loss + part_loss.detach()
    optimizer_step(run.opt, run.scaler, params, cfg.clip_grad)
    run.sched.step()
    return loss


def _evaluate(run: Trainer, task: TextTask, done: int, sums: Tensor) -> dict:
    """The record of an evaluation after ``done`` steps: the global mean training loss since the last one
    (``sums``: loss, steps), and ``task.evaluate``'s metrics of the eval-mode model."""
    total, n = all_reduce_sum(sums).tolist()  # n = steps x processes: the global mean loss
    if not math.isfinite(total):
        raise FloatingPointError(f"the training loss became {total} by step {done}: lower lr, or amp=bf16")
    run.model.eval()
    with torch.no_grad(), run.path.autocast(run.info.device):
        return dict(epoch=round(done / task.per_epoch, 4), step=done, train_loss=total / n,
                    **task.evaluate(run.model))


def finish(cfg: TextTrainConfig, info: DistInfo, summary: dict, json_path: str | None) -> dict:
    """Write ``summary.json`` (and ``json_path``) from the main process; return the summary everywhere."""
    summary = dict(summary, world_size=info.world, device=str(info.device))
    MetricsLog(expand(cfg.output), enabled=info.is_main).summary(summary)
    if json_path and info.is_main:
        write_json(Path(json_path), summary)
    return summary


# ---------------------------------------------------------------- command line
