"""Model registry: ``create_model(name, **overrides)`` / ``list_models()``, mirrored into timm.

Every named model, vision and text, is registered here once, with its modality: ``"vision"`` models take
images ``[B, C, H, W]`` or event frames ``[T, B, C, H, W]``, ``"text"`` models token ids ``[B, N]``.
``model_modality(name)`` is the one way the rest of the package tells them apart."""
from __future__ import annotations

import fnmatch
import importlib.util
import sys
from typing import Callable

from ..utils.errors import InputError

MODALITIES = ("vision", "text")

_MODELS: dict[str, Callable] = {}
_MODALITY: dict[str, str] = {}


def register_model(fn: Callable | None = None, *, modality: str = "vision"):
    """Register ``fn`` under its name: ``@register_model`` for a vision model, ``@register_model(modality="text")``
    for a text one."""
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if fn is None:
        return lambda f: register_model(f, modality=modality)
    if fn.__name__ in _MODELS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    _MODALITY[fn.__name__] = modality
    return fn


def list_models(pattern: str | None = None, modality: str | None = None) -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell glob (``"spikingformer_*"``), ``modality``
    keeps only ``"vision"`` or ``"text"`` models."""
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
    return [n for n in sorted(_MODELS) if (pattern is None or fnmatch.fnmatch(n, pattern))
            and modality in (None, _MODALITY[n])]


def model_modality(name: str) -> str | None:
    """``"vision"`` or ``"text"`` for a registered model, ``None`` for any other name."""
    return _MODALITY.get(name)


def create_model(name: str, **overrides):
    """Build the named model; ``overrides`` replace fields of its config (``num_classes=100``, ``T=2``)."""
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[name](**overrides)


def register_with_timm() -> bool:
    """Register every vision model with timm (if importable) so ``timm.create_model(name)`` works.

    Text models stay out: timm's tools take every model they list for an image model (``resolve_data_config``
    reads an image input size, ``timm.create_model(name, in_chans=, img_size=)``, its train and validate
    scripts feed images), and a text model takes token ids."""
    if importlib.util.find_spec("timm") is None:
        return False
    from timm.models import is_model
    from timm.models import register_model as timm_register

    module = sys.modules[__name__]
    for name in list_models(modality="vision"):
        if is_model(name):
            continue

        def entry(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                  _fn=_MODELS[name], **kwargs):
            if pretrained:
                raise InputError("spikingformer ships no pretrained weights; load a checkpoint instead")
            return _fn(**kwargs)

        entry.__name__ = name
        entry.__qualname__ = name
        entry.__module__ = __name__
        setattr(module, name, entry)
        timm_register(entry)
    return True
