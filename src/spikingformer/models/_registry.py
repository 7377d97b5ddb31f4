"""Model registry: ``create_model(name, **overrides)`` / ``list_models()``, mirrored into timm.

Every named model, vision and text, is registered here once, with its modality: ``"vision"`` models take
images ``[B, C, H, W]`` or event frames ``[T, B, C, H, W]``, ``"text"`` models token ids ``[B, N]``.
``model_modality(name)`` is the one way the rest of the package tells them apart.

A named model that is a row of a paper's table says so where it is registered: ``paper_params_M`` (the
parameter count the paper gives, which the tests pin within 0.5 %) and ``reported`` (``Reported`` rows: the
table, dataset, time steps, top-1 and energy the paper reports).  ``paper_facts(name)`` reads them back."""
from __future__ import annotations

import fnmatch
import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable

from ..utils.errors import InputError

MODALITIES = ("vision", "text")



@dataclass(frozen=True)
class Reported:
    """One result a paper reports for a named model: a cell group of one of its comparison tables."""

    table: str                      # "Spikingformer Table 2"
    dataset: str                    # "ImageNet", "CIFAR-10", "DVS128 Gesture", ...
    T: int                          # time steps of that result (1: an ANN)
    top1: float | None              # top-1 accuracy, %
    energy_mJ: float | None = None  # energy per image the paper gives, mJ
    note: str = ""                  # e.g. "test at 288x288"


@dataclass(frozen=True)
class PaperFacts:
    params_M: float | None = None
    reported: tuple[Reported, ...] = ()


_MODELS: dict[str, Callable] = {}
_MODALITY: dict[str, str] = {}
_FACTS: dict[str, PaperFacts] = {}


def register_model(fn: Callable | None = None, *, modality: str = "vision", paper_params_M: float | None = None,
                   reported: tuple[Reported, ...] = ()):
    """Register ``fn`` under its name: ``@register_model`` for a vision model, ``@register_model(modality="text")``
    for a text one; ``paper_params_M`` / ``reported``: what the papers give for it (module docstring)."""
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if fn is None:
        return lambda f: register_model(f, modality=modality, paper_params_M=paper_params_M, reported=reported)
    if fn.__name__ in _MODELS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    _MODALITY[fn.__name__] = modality
    _FACTS[fn.__name__] = PaperFacts(paper_params_M, tuple(reported))
    return fn


def paper_facts(name: str) -> PaperFacts:
    """What the papers give for the named model (empty ``PaperFacts`` for a model no table lists)."""
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _FACTS[name]


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
