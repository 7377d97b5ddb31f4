"""The one route from a checkpoint to a model: ``read_weights`` reads the file and names its model (the file, the
caller, a recipe or the official run's args); ``Weights.build`` builds it with the options the file records (and
those asked for anew), loads the weights and says plainly when they do not fit.

``load_model(path)`` is the public face; every command (eval, predict, export, energy, verify, glue's eval) takes
the same two steps, reading the run's record (config, classes, task) off the ``Weights`` in between.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from torch import nn

from ..deploy.fold import fold_bn
from ..models import create_model
from ..utils.errors import InputError
from .checkpoint import load_weights, state_mismatch
from .official import check_family, check_recorded, recorded_model
from .user_model import build_user_model, is_spec

__all__ = ["Weights", "read_weights", "load_model", "load_weights_into", "create"]


def _load(model: nn.Module, path: str, state: dict, name: str, build: dict) -> nn.Module:
    """Load ``state``, read from ``path``, into ``model`` (folded first when the file holds the deployed form;
    ``name``: how errors call the model).  ``build``: what the file says of its model (``load_weights``); if they
    do not fit, the options it records that ``model`` has otherwise are named as the cause."""
    if build.get("folded"):
        model = fold_bn(model)
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


@dataclass
class Weights:
    """A weights file read back (``read_weights``): its tensors, the registry name (or import spec) of its model,
    and ``info``, what the file records of the model and of the run that made it (``checkpoint.load_weights``:
    ``model_args``, ``config``, ``data``, ``task``, ``notes``, ``folded``, a run's ``epoch`` and ``step``)."""
    path: str | None
    name: str
    tensors: dict | None
    info: dict

    @property
    def model_args(self) -> dict:
        return self.info.get("model_args", {})

    @property
    def config(self) -> dict:
        return self.info.get("config") or {}

    @property
    def notes(self) -> list[str]:
        return list(self.info.get("notes", []))

    def build(self, options: dict | None = None, asked: dict | None = None, asked_as: str = "--set") -> nn.Module:
        """The model, built with the options the file records updated by ``options``, holding these weights, in
        eval mode.  ``asked``: the options a command line set anew (as ``asked_as``), named as a possible cause
        when the model cannot take them or the weights do not fit it."""
        margs = {**self.model_args, **(options or {})}
        said = f" ({asked_as} {asked})" if asked else ""
        try:
            model = create(self.name, **margs)
        except (TypeError, ValueError) as e:  # an option that does not exist, or a value it cannot take
            raise InputError(f"{self.name}: {e}{said}") from None
        try:
            return _load(model, self.path, self.tensors, self.name, self.info).eval()
        except InputError as e:
            if not asked:
                raise
            raise InputError(f"{e}; {asked_as} {asked} may change the weights' shapes (T does not)") from None


def read_weights(checkpoint: str | None, model: str | None = None, recipe=None,
                 unnamed: str = "give --model, or a --checkpoint written by a training run or `spikingformer export` "
                                "(which names its model)", named_by: str = "a") -> "Weights":
    """The weights of ``checkpoint`` (none without one), what the file says of its model and run
    (``checkpoint.load_weights``; for a bare state_dict the classifier size read from its head) and the model
    name, from ``model`` or the file; a contradiction between them is an error, and so is no name at all
    (``unnamed`` says what to do; ``named_by``: who else named the model, "a" or "the recipe's").  A ``recipe`` (a
    loaded ``TrainConfig``) stands in for a run's config: model name and options, data reading."""
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
        named_by = "the recipe's" if cfg and name == cfg.model else named_by
        raise InputError(f"{checkpoint} holds a {build['model']}, not {named_by} {name}")
    check_family(name, build.get("official"), checkpoint)
    return Weights(checkpoint, name, state, build)


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


def create(name: str, **kw) -> nn.Module:
    """A registered model (vision or text) by name, or a user's model by its import spec ``FILE.py:FACTORY`` /
    ``MODULE:CALLABLE`` (``user_model``), with random weights."""
    return build_user_model(name, **kw) if is_spec(name) else create_model(name, **kw)


def load_weights_into(model: nn.Module, path: str) -> nn.Module:
    """Load the weights of ``path`` (any format ``checkpoint.load_weights`` reads) into a model built by the
    caller; when they do not fit, the options the file records that ``model`` has otherwise are named."""
    state, build = load_weights(path)
    return _load(model, path, state, type(model).__name__, build)


def load_model(checkpoint: str, model: str | None = None, **overrides) -> nn.Module:
    """The model of ``checkpoint``, weights loaded, in eval mode: a ``train``, ``mlm`` or ``glue`` run's
    ``best.pt``/``last.pt`` or a ``.safetensors`` from ``spikingformer export`` rebuild the model they
    record; a bare state_dict or official weights need its registry name ``model`` (and the options it
    was built with), or a user's model its import spec ``FILE.py:FACTORY`` (``user_model``).
    ``overrides``: model options, e.g. ``T=8``."""
    unnamed = f"{checkpoint} does not name its model: pass load_model(path, model='spikingformer_...', **options)"
    return read_weights(checkpoint, model, unnamed=unnamed).build(overrides)


# ---------------------------------------------------------------- vision


# ---------------------------------------------------------------- text
