"""Model registry: ``create_model(name, **overrides)`` / ``list_models()``, mirrored into timm."""
from __future__ import annotations

import fnmatch
import importlib.util
import sys
from typing import Callable

from ..utils.errors import InputError

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
        raise InputError(f"unknown model {name!r}; available models: {', '.join(list_models())}{_text_hint(name)}")
    return _MODELS[name](**overrides)


def _text_hint(name: str) -> str:
    """The README lists the text models beside the vision ones, so their names are a natural slip here."""
    from .text import list_text_models  # imported on this error path only: the vision registry needs no text models

    if name not in list_text_models():
        return ""
    return (f" ({name!r} is a text model: spikingformer.models.text.create_text_model({name!r}) builds it, "
            f"`spikingformer mlm` and `glue` train it)")


def register_with_timm() -> bool:
    """Register every model with timm (if importable) so ``timm.create_model(name)`` works."""
    if importlib.util.find_spec("timm") is None:
        return False
    from timm.models import is_model
    from timm.models import register_model as timm_register

    module = sys.modules[__name__]
    for name, fn in _MODELS.items():
        if is_model(name):
            continue

        def entry(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                  _fn=fn, **kwargs):
            if pretrained:
                raise InputError("spikingformer ships no pretrained weights; load a checkpoint instead")
            return _fn(**kwargs)

        entry.__name__ = name
        entry.__qualname__ = name
        entry.__module__ = __name__
        setattr(module, name, entry)
        timm_register(entry)
    return True
