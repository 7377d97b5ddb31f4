"""One coercion of a value to a config field's type, for the configs of every layer: the training configs read
from YAML and ``--set`` (``train.config``) and the model configs of ``create_model(**options)`` (``models._base``).
"""
from __future__ import annotations

import numbers
import types
import typing

import numpy as np

__all__ = ["CoercionError", "coerce"]


class CoercionError(ValueError):
    """``value`` is not of the type a field expects; ``expected`` says what was (``int``, ``a list``, ...)."""

    def __init__(self, expected: str, value):
        super().__init__(f"expects {expected}, got {value!r}")
        self.expected, self.value = expected, value


def coerce(typ, value, text: bool = False):
    """``value`` as the annotation ``typ``: converted where that is unambiguous, else ``CoercionError``.

    Accepted: any integer for ``int`` (NumPy's too), any real for ``float``, ``bool`` (or, unless ``text``, an
    integer 0/1) for ``bool``, a list or tuple for a tuple (YAML has no tuples: of the right length, or any
    length for ``tuple[X, ...]``), ``None`` for an ``Optional``, a mapping for ``dict``, instances for the rest.
    ``text``: the value was read from YAML or ``--set``, whose YAML 1.1 reading is undone: ``"1e-3"`` (no dot,
    a string) is a float, ``on``/``off`` (booleans) a string, a number a string, ``3.0`` an integer."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(inner, value, text)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CoercionError("a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, text) for v in value)
        if len(value) != len(args):
            raise CoercionError(f"{len(args)} values", value)
        return tuple(coerce(a, v, text) for a, v in zip(args, value))
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise CoercionError("a mapping", value)
        return dict(value)
    converted = _scalar(typ, value, text) if typ in (bool, int, float, str) else None
    if converted is not None:
        return converted
    if typ not in (bool, int, float, str) and isinstance(value, origin or typ):
        return value
    raise CoercionError(getattr(typ, "__name__", typ), value)


def _scalar(typ, value, text: bool):
    """``value`` as ``bool``, ``int``, ``float`` or ``str`` (``coerce``'s rules), or None."""
    is_bool = isinstance(value, (bool, np.bool_))
    if typ is bool:
        if is_bool or (not text and isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
    elif typ is int:
        if isinstance(value, numbers.Integral) and not is_bool:
            return int(value)
        if text and isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, numbers.Real) and not is_bool:
            return float(value)
        if text and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return None
    elif isinstance(value, str):
        return value
    elif text and isinstance(value, bool):  # YAML 1.1 reads on/off (and yes/no) as booleans
        return "on" if value else "off"
    elif text and isinstance(value, (int, float)):
        return str(value)
    return None
