"""A run's record read back: its config with a command line's ``--set`` applied, and its model rebuilt with the
options the run recorded (and those asked for anew), on the fast path a config asks for."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..nn.fast import FastPath, resolve_lif_backend
from ..utils.errors import InputError
from ..weights import checkpoint as ckpt
from ..weights.loading import create_any, load_into
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


def rebuild(path, name: str, model_args: dict, weights: dict, build: dict, asked: dict) -> nn.Module:
    """The model ``name`` (vision or text) with ``model_args`` and the ``weights`` of ``path`` (``build``: what the
    file says of it); when they do not fit, the ``--set`` model options ``asked`` are named as a possible cause."""
    try:
        model = create_any(name, **model_args)
    except (TypeError, ValueError) as e:  # an option that does not exist, or a value it cannot take
        raise InputError(f"{name}: {e}" + (f" (--set {asked})" if asked else "")) from None
    try:
        return load_into(model, path, weights, build, f"{name} with {model_args}")
    except ValueError as e:
        if not asked:
            raise
        raise InputError(f"{e}; --set {asked} may change the weights' shapes (T does not)") from None


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
