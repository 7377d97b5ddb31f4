"""What every image engine shares (``train``, ``pretrain``; ``text_engine`` uses ``open_run`` and
``wrap_ddp``): timm's optimizer and schedule, the epoch loop with gradient accumulation, and the
run plumbing that makes a killed run resume exactly (run folder, checkpoint restore, seeded loaders).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..nn.fast import FastPath
from ..utils.errors import InputError
from ..weights import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo
from .safe_stop import RunInterrupted, StopSignals, UpdateMark, ignore_interrupts, stop_mid_epoch

__all__ = ["RESUME_MUTABLE", "Progress", "resolve_img_size", "build_training", "seed_all", "train_one_epoch",
           "begin_epoch", "resume_config", "open_run", "load_data", "make_loaders", "restore", "load_scaler",
           "open_output", "wrap_ddp"]

# Keys that may change between a run and its resumption without changing the result.
RESUME_MUTABLE = {"progress", "workers", "ckpt_every", "device", "val_batch_size", "output", "init_from",
                  "grad_checkpointing"}


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
    from ..models import create_model

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
    all-reduces only on the group's last batch.

    A batch that fails to load (``data.SampleFailure``) or a signal caught by ``stop`` ends the
    epoch early: ``safe_stop.stop_mid_epoch`` checkpoints the last update and raises.
    """
    from ..data import SampleFailure
    from ..utils.progress import progress_bar
    from .distributed import all_reduce_sum

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Resumed mid-epoch: the main process carries the totals of the steps already done (all processes').
    sums = torch.tensor(state.epoch_sums if info.is_main else [0.0] * 3, dtype=torch.float64, device=info.device)
    bar = progress_bar(loader, f"epoch {state.epoch + 1}/{cfg.total_epochs}", total=len(loader),
                       enabled=info.is_main and cfg.progress)
    steps, accum = loader.sampler.steps_per_epoch, cfg.accum_steps
    no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce once per update
    # where the last optimizer update left the run (None: after every batch, with one batch per update)
    mark = UpdateMark.now(state, sums, model) if accum > 1 else None
    try:
        for x, y in bar:
            x, y = path.to_input(x.to(info.device, non_blocking=True)), y.to(info.device, non_blocking=True)
            first = state.step // accum * accum   # this batch's group of accum_steps: [first, last]
            last = min(first + accum, steps) - 1
            path.step_begin()  # CUDA graphs: the previous step's outputs may now be overwritten
            # DDP decides in the forward whether the backward all-reduces: both go inside no_sync
            with no_sync() if no_sync is not None and state.step < last else contextlib.nullcontext():
                with path.autocast(info.device):
                    loss, correct = step_loss(model, x, y)
                scaler.scale(loss / (last - first + 1)).backward()  # / 1 without accumulation: exact
            state.step += 1
            state.global_step += 1
            n = torch.tensor(float(len(y)), dtype=torch.float64, device=info.device)  # labels: one per sample
            sums += torch.stack([loss.detach().double() * n, torch.zeros_like(n) if correct is None else
                                 correct.double(), n])
            if state.step % 10 == 0:  # look at the loss only now and then: reading it waits for the GPU
                _check_loss(sums, state)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{base_lr(opt):.2e}", refresh=False)
            if state.step == last + 1:
                _update(cfg, state, opt, sched, scaler, params, steps)
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


def _update(cfg, state, opt, sched, scaler, params, steps: int) -> None:
    """The optimizer update closing a group of ``accum_steps`` batches (clipping, loss scaling, schedule)."""
    if cfg.clip_grad > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    if cfg.sched_on_updates:
        sched.step_update(updates_done(state, steps, cfg.accum_steps))


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


def _config_diff(old: dict, new: dict, mutable=RESUME_MUTABLE) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k not in mutable and old.get(k) != new.get(k))


def _with_new_defaults(saved: dict, cfg) -> dict:
    """``saved`` (a checkpoint's config) with the keys added to ``cfg``'s class since then at their
    defaults: the run ran without them, which is what their defaults do, so it may still resume."""
    missing = [f for f in dataclasses.fields(cfg) if f.name not in saved]
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default for f in missing}
    filled = dataclasses.replace(cfg, **defaults).to_dict()
    return {**{k: filled[k] for k in defaults}, **saved}


def _flat(config: dict) -> dict:
    """``{"model_args": {"T": 4}, "lr": 1}`` -> ``{"model_args.T": 4, "lr": 1}``: the keys ``--set`` names."""
    flat = {}
    for k, v in config.items():
        flat.update({f"{k}.{sub}": x for sub, x in v.items()} if isinstance(v, dict) else {k: v})
    return flat


def _unflat(flat: dict, mappings) -> dict:
    """``_flat``'s inverse, ``mappings`` naming the config's dict-valued keys."""
    config = {k: {} for k in mappings}
    for k, v in flat.items():
        head, dot, sub = k.partition(".")
        if dot and head in mappings:
            config[head][sub] = v
        else:
            config[k] = v
    return config


def resume_config(cfg, overrides: dict, mutable=RESUME_MUTABLE):
    """The config ``--resume`` continues ``cfg.output``'s run with: the run's own, from its ``last.pt``.

    ``cfg`` is what the command line asks for (its ``--config`` file, or the defaults, with ``overrides``,
    the parsed ``--set`` options, applied): it names the run folder.  A key the run's first start set
    with ``--set`` (recorded in its checkpoints) keeps the run's value unless ``--set`` names it again;
    every other key of ``cfg`` must have the run's value, or be one of ``mutable``: a changed key is
    refused by name, whether ``--set`` or the config file changed it.  No ``last.pt``: ``cfg`` (a fresh
    start)."""
    from .config import from_dict

    last = Path(cfg.output).expanduser() / "last.pt"
    if not last.exists():
        return cfg
    state = ckpt.load_checkpoint(last)
    own, asked = _flat(_with_new_defaults(state["config"], cfg)), _flat(cfg.to_dict())
    given, recorded = _flat(overrides), _flat(state.get("overrides") or {})
    keep = {k for k in recorded if k not in given}  # the run's own --set values, not repeated
    changed = sorted(k for k in (set(own) | set(asked)) - keep
                     if k.partition(".")[0] not in mutable and own.get(k) != asked.get(k))
    if changed:
        why = "; ".join(f"{k} is {own.get(k)!r} in the run, {asked.get(k)!r} by "
                        f"{'--set' if k in given else 'the config'}" for k in changed)
        raise InputError(f"--resume: the config differs from the checkpoint's in {changed} ({why}); only "
                         f"{sorted(mutable)} may change, and the run's own --set options need not be repeated")
    merged = {**{k: own[k] if k in keep else v for k, v in asked.items()},
              **{k: v for k, v in own.items() if k in keep and k not in asked}}
    mappings = [k for k, v in cfg.to_dict().items() if isinstance(v, dict)]
    return from_dict(type(cfg), _unflat(merged, mappings), f"{last}'s config")


def open_run(cfg, resume: bool, mutable=RESUME_MUTABLE) -> dict | None:
    """The checkpoint ``--resume`` continues from (None: a fresh run), for every engine's config.
    An existing run is never overwritten, and a run resumes only with the config it was started
    with (the keys in ``mutable`` aside)."""
    from ..utils.outputs import check_output

    out = Path(cfg.output).expanduser()
    last = out / "last.pt"
    check_output("output", out, folder=True)  # before the data loads: writing would fail only after it
    if resume and last.exists():
        state = ckpt.load_checkpoint(last)
        diff = _config_diff(_with_new_defaults(state["config"], cfg), cfg.to_dict(), mutable)
        if diff:
            raise InputError(f"--resume: the config differs from the checkpoint's in {diff}; resume with the "
                             f"original config (only {sorted(mutable)} may change)")
        return state
    if last.exists():
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it, "
                              "or choose another output")
    return None


def load_data(cfg: TrainConfig, info: DistInfo):
    """``build_data`` at the model's size; with ``download`` the main process fetches alone, then the rest read."""
    from ..data import build_data
    from .distributed import barrier

    if cfg.download and not info.is_main:
        barrier()
    data = build_data(cfg, resolve_img_size(cfg))
    if cfg.download and info.is_main:
        barrier()
    return data


def make_loaders(cfg: TrainConfig, data, info: DistInfo):
    """The seeded, sharded train loader (its sampler resumes mid-epoch) and the sharded validation loader;
    a sample that fails to load stops either with a ``SampleFailure`` naming it (``data.GuardedLoader``)."""
    from torch.utils.data import DataLoader

    from ..data import EpochSampler, GuardedLoader, ShardSampler

    sampler = EpochSampler(len(data.train), cfg.batch_size, cfg.seed, info.rank, info.world)
    common = dict(num_workers=cfg.workers, pin_memory=info.device.type == "cuda", collate_fn=data.collate,
                  worker_init_fn=ignore_interrupts)
    train_loader = DataLoader(data.train, cfg.batch_size, sampler=sampler, drop_last=True,
                              persistent_workers=cfg.workers > 0, **common)
    val_loader = DataLoader(data.val, cfg.val_batch_size, sampler=ShardSampler(len(data.val), info.rank, info.world),
                            **common)
    return sampler, GuardedLoader(train_loader), GuardedLoader(val_loader)


def restore(state: dict, info: DistInfo, model: nn.Module, opt, sched, scaler) -> dict:
    """Load a checkpoint's model, optimizer, scheduler and scaler; return its progress."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    load_scaler(scaler, state["scaler"], info.is_main)
    if state["progress"]["step"] and state["world_size"] != info.world:
        raise InputError(f"the checkpoint was written mid-epoch by {state['world_size']} process(es); resume it "
                         f"with as many (the data order is sharded by process), not {info.world}")
    return state["progress"]


def load_scaler(scaler: torch.amp.GradScaler, saved: dict, report: bool = True) -> None:
    """Resume the loss scaler.  ``amp: auto`` is bf16 on some GPUs and fp16 on others, so a run
    saved without loss scaling (an empty state) may resume with it: the scale then starts afresh."""
    if saved or not scaler.is_enabled():
        scaler.load_state_dict(saved)
    elif report:
        print("note: the checkpoint was trained without fp16 loss scaling (bf16 or fp32); this run "
              "uses fp16, so the loss scale starts afresh", file=sys.stderr)


def open_output(out: Path, cfg, resuming: bool, state) -> str:
    """Create the run folder, drop half-written checkpoints of a killed run, record the config; return
    where the run starts, for its first log line (main process only)."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt.remove_partial_writes(out)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    where = f"resuming at epoch {state.epoch + 1} step {state.step}" if resuming else "starting"
    return where + (", blocks recomputed in the backward pass (grad_checkpointing)" if cfg.grad_checkpointing else "")


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    if info.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[info.device.index] if info.device.type == "cuda" else None)
