"""Renaming an official state_dict's keys by rules: the one helper every official layout's mapping uses."""
from __future__ import annotations

import re
from typing import Callable, Union

__all__ = ["Rule", "rename"]

# (pattern matching a whole official key, our key: a template of the match's groups, or a function of the match)
Rule = tuple[str, Union[str, Callable[[re.Match], str]]]


def rename(key: str, rules: list[Rule]) -> str | None:
    """Our name for the official ``key``: the first rule whose pattern matches the whole key, applied; None when
    none does (the callers name every such key in their error)."""
    for pattern, repl in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None
