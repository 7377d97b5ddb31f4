"""A run's record read back: its config with a command line's ``--set`` applied, and its model rebuilt with the
options the run recorded (and those asked for anew), on the fast path a config asks for."""
from __future__ import annotations

import dataclasses

import torch

from ..nn.fast import FastPath, resolve_lif_backend
from ..utils.errors import InputError
from .config import TrainConfig, apply_overrides, from_dict, parse_overrides


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
        raise InputError(f"--set model_args={given['model_args']!r}: model options are set one by one, "
                         "e.g. --set model_args.T=8")
    return {**given.get("model_args", {}), **({"img_size": given["img_size"]} if "img_size" in given else {})}


def run_config(path, name: str, model_args: dict, config: dict, sets: list[str] = (), source: str = "",
               extra: dict | None = None):
    """``(cfg, model_args)``: the config a checkpoint's model ``name`` was trained (or a recipe read it) with,
    and its model options, both with ``--set`` applied; ``extra``: keys the command line sets by their own
    options.  The weights fix the model: a ``--set model=`` naming another is refused."""
    given = parse_overrides(list(sets))
    if given.get("model", name) != name:
        raise InputError(f"--set model={given['model']}: {path} holds a {name}")
    margs = {**model_args, **asked_options(given)}
    # --set reaches the run's own config too (limit_val=500, model_args.T=8), and the data follows the model
    # that runs: event recordings become frames at its T (an export at another T, or --set model_args.T)
    config = apply_overrides(apply_overrides(config, given), {"model_args": margs})
    where = (source or f"{path} config") + (f" + --set {' '.join(sets)}" if sets else "")
    return from_dict(TrainConfig, dict(config, **(extra or {})), where), margs
