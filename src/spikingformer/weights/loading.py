"""The route from a checkpoint to a model: read the weights, name the model (the file, the caller or the
official run's args), build it with the options the file records, load, and say plainly when they do not fit.

``load_model(path)`` is the public face; ``resolve`` / ``build_model`` / ``load_into`` are its steps, which the
commands share.
"""
from __future__ import annotations

import json

from torch import nn

from ..deploy.fold import fold_bn
from ..models import create_model
from ..models.text import create_text_model, list_text_models
from ..utils.errors import InputError
from .checkpoint import load_weights, state_mismatch
from .official import check_family, check_recorded, recorded_model
from .user_model import build_user_model, is_spec

__all__ = ["resolve", "build_model", "load_model", "create_any", "load_into", "load_checkpoint"]


def load_checkpoint(model: nn.Module, path: str, state: dict | None = None, name: str | None = None,
                    build: dict | None = None) -> nn.Module:
    """Load the weights of ``path`` (any format ``checkpoint.load_weights`` reads, or ``state``
    already read from it) into ``model`` (``name``: how errors call the model).  ``build``: what the
    file says of its model (``load_weights``); if they do not fit, the options it records that ``model``
    has otherwise are named as the cause."""
    if state is None:
        state, build = load_weights(path)
    build = build or {}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        other = _other_options(model, {**build.get("model_args", {}), **build.get("recorded", {})})
        cause = (f"the file records a {build.get('model') or 'model'} with {other}" if other
                 else "wrong model, or other model options (its size: depth, dim, num_heads? classes, T? "
                      "every command sets them with --model-kwargs depth=... dim=...)")
        raise InputError(f"checkpoint {path} does not fit {name or type(model).__name__}: {cause}; "
                         f"{state_mismatch(model.state_dict(), state) or e}") from e
    check_recorded(model, path, build.get("recorded", {}), name)
    return model


def _other_options(model: nn.Module, options: dict) -> str:
    """The ``options`` (a file's record of its model's) that ``model``'s config holds otherwise, as
    "dim=32 (this model: 256)"."""
    cfg = getattr(model, "cfg", None)

    def plain(v):  # a config's tuples are lists in a file's JSON
        return json.loads(json.dumps(v, default=str))
    return ", ".join(f"{k}={v!r} (this model: {getattr(cfg, k)!r})" for k, v in sorted(options.items())
                     if hasattr(cfg, k) and plain(getattr(cfg, k)) != plain(v))


def resolve(checkpoint: str | None, model: str | None, recipe=None,
            unnamed: str = "give --model, or a --checkpoint written by a training run or `spikingformer export` "
                           "(which names its model)") -> tuple[dict | None, dict, str]:
    """``(state, build, name)``: the weights of ``checkpoint`` (None without one), what the file says of
    its model (``checkpoint.load_weights``; for a bare state_dict the classifier size read from its head)
    and the model name, from ``model`` or the file; a contradiction between them is an error, and so is
    no name at all (``unnamed`` says what to do).  A ``recipe`` (a loaded ``TrainConfig``) stands in for a
    run's config: model name and options, data reading."""
    cfg = recipe  # as in `eval --config`: the recipe decides how --data is read
    # the name asked for tells apart the official layouts whose tensor names are the same
    own = is_spec(model)  # a user's model: its keys are its own, whatever they look like
    state, build = load_weights(checkpoint, model or (cfg and cfg.model), official=not own) if checkpoint \
        else (None, {})
    if state is not None and "head.fc.weight" in state and "model_args" not in build and not own:
        # a bare state_dict says its classifier size; --num-classes still wins
        build = {**build, "model_args": {"num_classes": state["head.fc.weight"].shape[0]}}
    if cfg:
        margs = {**cfg.model_args, **({"img_size": cfg.img_size} if cfg.img_size else {}),
                 **build.get("model_args", {})}
        build = {**build, "config": cfg.to_dict(), "model_args": margs}
        model = model or cfg.model
    name = model or build.get("model")
    if not name and build.get("official"):  # no name asked for: the official run's training args may give one
        name, build = _recorded_model(build, checkpoint)
    if not name:
        raise InputError(unnamed)
    if build.get("model") not in (None, name):  # the command line may not silently rebuild another model
        raise InputError(f"{checkpoint} holds a {build['model']}, not a {name}")
    check_family(name, build.get("official"), checkpoint)
    return state, build, name


def _recorded_model(build: dict, source) -> tuple[str | None, dict]:
    """The named model, and its options, that official weights' training args record (``official.recorded_model``)."""
    try:
        found = recorded_model(build["official"], build.get("recorded", {}))
    except ValueError as e:
        raise InputError(f"{source}: {e}") from None
    if found is None:
        return None, build
    name, options = found
    notes = [*build.get("notes", []), f"model {name} {options}, as the checkpoint's training args record it"]
    return name, {**build, "notes": notes, "model_args": {**options, **build.get("model_args", {})}}


def create_any(name: str, **kw) -> nn.Module:
    """A vision model (``create_model``) or a text model (``models.text``) by registry name, or a user's
    model by its import spec ``FILE.py:FACTORY`` / ``MODULE:CALLABLE`` (``user_model``)."""
    if is_spec(name):
        return build_user_model(name, **kw)
    return create_text_model(name, **kw) if name in list_text_models() else create_model(name, **kw)


def load_into(model: nn.Module, path: str, state: dict, build: dict, name: str | None = None) -> nn.Module:
    """Load ``state`` into ``model`` (folded first when the file holds the deployed form); returns the
    model that holds the weights."""
    if build.get("folded"):
        model = fold_bn(model)
    return load_checkpoint(model, path, state, name, build)


def build_model(checkpoint: str, model: str | None = None, overrides: dict | None = None, **resolve_kw):
    """``(model, name, model_args, notes, build)`` with the weights of ``checkpoint`` loaded, in eval mode
    (``build``: what the file says of the model; ``resolve``)."""
    state, build, name = resolve(checkpoint, model, **resolve_kw)
    margs = {**build.get("model_args", {}), **(overrides or {})}
    net = load_into(create_any(name, **margs), checkpoint, state, build, name).eval()
    return net, name, margs, list(build.get("notes", [])), build


def load_model(checkpoint: str, model: str | None = None, **overrides) -> nn.Module:
    """The model of ``checkpoint``, weights loaded, in eval mode: a ``train``, ``mlm`` or ``glue`` run's
    ``best.pt``/``last.pt`` or a ``.safetensors`` from ``spikingformer export`` rebuild the model they
    record; a bare state_dict or official weights need its registry name ``model`` (and the options it
    was built with), or a user's model its import spec ``FILE.py:FACTORY`` (``user_model``).
    ``overrides``: model options, e.g. ``T=8``."""
    unnamed = f"{checkpoint} does not name its model: pass load_model(path, model='spikingformer_...', **options)"
    return build_model(checkpoint, model, overrides, unnamed=unnamed)[0]


# ---------------------------------------------------------------- vision


# ---------------------------------------------------------------- text
