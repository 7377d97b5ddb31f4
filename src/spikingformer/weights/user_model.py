"""A model from a user's own code: ``--model path/to/file.py:factory`` or ``--model package.module:callable``.

``energy`` and ``verify`` build it in ``loading``, on the route a registry name takes too,
so its weights, input batches, BN calibration, verdict and energy table are made as for the library's
models.  Importing the file or module runs its code, as ``python file.py`` would: that is what is asked for.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from ..utils.errors import InputError

__all__ = ["is_spec", "import_callable", "build_user_model", "declared_input_size"]


def is_spec(model: str | None) -> bool:
    """Whether ``model`` names code to import (``FILE.py:NAME`` or ``MODULE:NAME``): no registry name has a colon."""
    return bool(model) and ":" in model


def import_callable(spec: str) -> Callable:
    """The callable ``spec`` names; every failure is a ``ValueError`` naming the spec and what went wrong."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise InputError(f"model {spec!r}: expected FILE.py:FACTORY or MODULE:CALLABLE")
    module = _import_file(spec, Path(target).expanduser()) if target.endswith(".py") or "/" in target \
        else _import_module(spec, target)
    obj = module
    for part in attr.split("."):  # ``module:Class.create`` reaches a class's factory method
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise InputError(f"model {spec}: {target} has no attribute {attr!r} (its callables: "
                             f"{', '.join(public[:12]) or 'none'})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"model {spec}: {attr} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def _import_file(spec: str, path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"model {spec}: no such file: {path}")
    name = f"_spikingformer_user_{path.stem}"
    loader = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    folder = str(path.resolve().parent)
    if folder not in sys.path:  # its sibling imports work, also those its factory makes, as under `python file.py`
        sys.path.insert(0, folder)
    try:
        loader.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # SystemExit: a script that parses sys.argv when imported
        del sys.modules[name]
        raise InputError(f"model {spec}: importing {path} raised {type(e).__name__}: {e}") from e
    return module


def _import_module(spec: str, target: str):
    try:
        return importlib.import_module(target)
    except Exception as e:  # a missing module, or one whose own code fails
        raise InputError(f"model {spec}: importing {target} raised {type(e).__name__}: {e}") from e


def build_user_model(spec: str, **kwargs) -> nn.Module:
    """``factory(**kwargs)`` of ``spec``; it must return an ``nn.Module``.  What the factory raises (a
    keyword it does not take, say) becomes a one-line ``ValueError`` naming the call and its message."""
    factory = import_callable(spec)
    call = f"{spec.rpartition(':')[2]}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise InputError(f"model {spec}: {call} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise InputError(f"model {spec}: {call} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def declared_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """``(C, H, W)`` as the model declares it: our ``default_input_size``, or timm's ``pretrained_cfg``."""
    size = getattr(model, "default_input_size", None)
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(size) if size is not None else None
