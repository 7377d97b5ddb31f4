"""The skeleton of a training run, for every training command (``train``, ``pretrain``, ``mlm``, ``glue``).

After torchtitan's short ``train.py`` over a few components: a command builds its own data, model, loss,
optimizer and evaluation, and hands the rest to ``Trainer``, which

* opens the run (``open_run``: a fresh folder, or ``--resume`` with the run's own config, the keys of
  ``RESUME_MUTABLE`` aside) and merges the ``--set`` options the run recorded (``resume_config``);
* prepares the model (SyncBatchNorm, device, gradient checkpointing, the fast path of ``spikingformer.nn.fast``);
* adds the loss scaler to the command's optimizer and schedule, restores model, optimizer, schedule,
  scaler and RNG streams from the resumed checkpoint, and wraps the model in DDP under ``torchrun``;
* saves atomically (``checkpoint.save_checkpoint``) from the main process, every process's RNG state included.

The optimizer step itself (micro-batches, autocast, loss scaling, clipping) is ``spikingformer.train.step``.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..utils.errors import InputError
from ..utils.outputs import check_output
from ..weights import checkpoint as ckpt
from .config import apply_overrides, from_dict
from .distributed import DistInfo, convert_sync_batchnorm, gather_objects

__all__ = ["RESUME_MUTABLE", "Trainer", "resume_config", "open_run", "open_output", "load_states", "load_scaler",
           "restore_rng", "wrap_ddp"]

# Keys that may change between a run and its resumption without changing the result (those a config has).
RESUME_MUTABLE = {"progress", "workers", "ckpt_every", "device", "val_batch_size", "output", "init_from",
                  "grad_checkpointing"}


def _mutable(cfg, mutable) -> list[str]:
    """The keys of ``mutable`` that ``cfg`` has: what an error message lists."""
    return sorted(k for k in mutable if k in cfg.to_dict())


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
                         f"{_mutable(cfg, mutable)} may change, and the run's own --set options need not be repeated")
    merged = {**{k: own[k] if k in keep else v for k, v in asked.items()},
              **{k: v for k, v in own.items() if k in keep and k not in asked}}
    mappings = [k for k, v in cfg.to_dict().items() if isinstance(v, dict)]
    return from_dict(type(cfg), _unflat(merged, mappings), f"{last}'s config")


def open_run(cfg, resume: bool, mutable=RESUME_MUTABLE) -> dict | None:
    """The checkpoint ``--resume`` continues from (None: a fresh run), for every command's config.
    An existing run is never overwritten, and a run resumes only with the config it was started
    with (the keys in ``mutable`` aside)."""
    out = Path(cfg.output).expanduser()
    last = out / "last.pt"
    check_output("output", out, folder=True)  # before the data loads: writing would fail only after it
    if resume and last.exists():
        state = ckpt.load_checkpoint(last)
        diff = _config_diff(_with_new_defaults(state["config"], cfg), cfg.to_dict(), mutable)
        if diff:
            raise InputError(f"--resume: the config differs from the checkpoint's in {diff}; resume with the "
                             f"original config (only {_mutable(cfg, mutable)} may change)")
        return state
    if last.exists():
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it, "
                              "or choose another output")
    return None


def open_output(out: Path, cfg, resuming: bool, state) -> str:
    """Create the run folder, drop half-written checkpoints of a killed run, record the config; return
    where the run starts, for its first log line (main process only)."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt.remove_partial_writes(out)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    where = f"resuming at epoch {state.epoch + 1} step {state.step}" if resuming else "starting"
    return where + (", blocks recomputed in the backward pass (grad_checkpointing)" if cfg.grad_checkpointing else "")


def load_scaler(scaler: torch.amp.GradScaler, saved: dict, report: bool = True) -> None:
    """Resume the loss scaler.  ``amp: auto`` is bf16 on some GPUs and fp16 on others, so a run
    saved without loss scaling (an empty state) may resume with it: the scale then starts afresh."""
    if saved or not scaler.is_enabled():
        scaler.load_state_dict(saved)
    elif report:
        print("note: the checkpoint was trained without fp16 loss scaling (bf16 or fp32); this run "
              "uses fp16, so the loss scale starts afresh", file=sys.stderr)


def load_states(state: dict, info: DistInfo, model: nn.Module, opt, sched, scaler) -> None:
    """Load a checkpoint's model, optimizer, scheduler and scaler.  A checkpoint written mid-epoch (its
    ``progress`` at a step) resumes only with as many processes: the data order is sharded by process."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if "scaler" in state:
        load_scaler(scaler, state["scaler"], info.is_main)
    if (state.get("progress") or {}).get("step") and state["world_size"] != info.world:
        raise InputError(f"the checkpoint was written mid-epoch by {state['world_size']} process(es); resume it "
                         f"with as many (the data order is sharded by process), not {info.world}")


def restore_rng(saved, info: DistInfo) -> None:
    """Continue the RNG streams a checkpoint saved: one per process (a list, ``Trainer.rng_states``), or the
    main process's (the text commands' checkpoints).  None (a pre-training checkpoint from before they were
    saved): the streams stay as seeded."""
    if saved is None:
        return
    if isinstance(saved, dict):
        ckpt.set_rng_state(saved)
    elif len(saved) == info.world:
        ckpt.set_rng_state(saved[info.rank])
    elif info.is_main:
        print(f"note: checkpoint has RNG states of {len(saved)} processes, this run has {info.world}; "
              "continuing with fresh RNG streams", file=sys.stderr)


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    if info.world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[info.device.index] if info.device.type == "cuda" else None)


class Trainer:
    """One run's plumbing, in the order a command calls it: ``Trainer(cfg, info, resume)`` opens the run,
    ``prepare(model)`` puts the model on its device and path, ``start(opt, sched)`` restores a resumed run
    and wraps DDP, ``save(path, **fields)`` checkpoints.  ``overrides``: the ``--set`` options of a command
    whose checkpoints record them (train, pretrain), merged with those the run recorded; None: not recorded.

    Attributes once set: ``model`` (the module whose state is saved), ``fast`` (its fast-path form, or the
    objective's), ``train_model`` (``fast`` under DDP), ``path``, ``opt``, ``sched``, ``scaler``, ``meta``
    (stored in every checkpoint), ``resumed`` (the checkpoint resumed from, or None)."""

    def __init__(self, cfg, info: DistInfo, resume: bool, overrides: dict | None = None):
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.output).expanduser()
        self.last = self.out / "last.pt"
        self.resumed = open_run(cfg, resume)
        recorded = (self.resumed or {}).get("overrides") or {}
        self.overrides = None if overrides is None else apply_overrides(recorded, overrides)
        self.model = self.fast = self.train_model = self.path = None
        self.opt = self.sched = self.scaler = None
        self.meta: dict = {}

    def prepare(self, model: nn.Module, objective=None) -> nn.Module:
        """SyncBatchNorm (``sync_bn`` under torchrun), the device, gradient checkpointing and the fast path
        (before the optimizer: channels-last re-lays the parameters out in place).  ``objective(model)``: the
        module that trains instead of ``model`` (model and loss as one).  Returns the prepared module."""
        cfg, info = self.cfg, self.info
        if cfg.sync_bn and info.world > 1:
            model = convert_sync_batchnorm(model, info.device)
        model.to(info.device)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.model, self.path = model, cfg.fast_path(info.device)
        self.fast = self.path.prepare(model if objective is None else objective(model))
        return self.fast

    def start(self, opt, sched) -> dict | None:
        """The loss scaler (fp16 only), the resumed run's model, optimizer, schedule, scaler and RNG streams,
        and DDP; returns the checkpoint resumed from (None: a fresh run)."""
        self.opt, self.sched, info = opt, sched, self.info
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=self.path.amp_dtype == torch.float16)
        if self.resumed is not None:
            load_states(self.resumed, info, self.model, opt, sched, self.scaler)
            restore_rng(self.resumed.get("rng"), info)
        self.train_model = wrap_ddp(self.fast, info)
        return self.resumed

    def rng_states(self) -> list[dict]:
        """Every process's RNG streams, so that each resumes its own (a collective: every process calls it)."""
        return gather_objects(ckpt.rng_state())

    def save(self, path: Path | None = None, **fields) -> None:
        """Write ``path`` (default ``last.pt``) atomically from the main process: model, optimizer, schedule,
        scaler, then ``fields`` (progress, RNG states, history, ...), the config, the recorded ``--set``
        options, ``meta`` and the number of processes."""
        if not self.info.is_main:
            return
        ckpt.save_checkpoint({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), **fields, "config": self.cfg.to_dict(),
            **({} if self.overrides is None else {"overrides": self.overrides}), "meta": self.meta,
            "world_size": self.info.world}, path or self.last)
