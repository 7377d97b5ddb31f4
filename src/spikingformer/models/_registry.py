"""Model registry: ``create_model(name, **overrides)`` / ``list_models()``, mirrored into timm."""
from __future__ import annotations

import fnmatch
import importlib.util
import sys
from typing import Callable

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    if fn.__name__ in _MODELS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Names of every registered model, sorted; ``pattern`` is a shell glob (``"spikingformer_*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create_model(name: str, **overrides):
    """Build the named model; ``overrides`` replace fields of its config (``num_classes=100``, ``T=2``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[name](**overrides)


def register_with_timm() -> bool:
    """Register every model with timm (if importable) so ``timm.create_model(name)`` works."""
    if importlib.util.find_spec("timm") is None:
        return False
    from timm.models import register_model as timm_register, is_model

    module = sys.modules[__name__]
    for name, fn in _MODELS.items():
        if is_model(name):
            continue

        def entry(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                  _fn=fn, **kwargs):
            if pretrained:
                raise ValueError("spikingformer ships no pretrained weights; load a checkpoint instead")
            return _fn(**kwargs)

        entry.__name__ = name
        entry.__qualname__ = name
        entry.__module__ = __name__
        setattr(module, name, entry)
        timm_register(entry)
    return True
