"""The reference pages generated from the code itself: ``python docs/generate.py`` writes them into ``docs/``,
``python docs/generate.py --check`` says which are stale (the test suite runs it, so a page cannot drift from the
code), ``python docs/generate.py cli|configs|comparison`` prints one.

- ``reference/cli.md``: every subcommand's ``--help``, from ``spikingformer.cli.build_parser()``;
- ``reference/configs.md``: every key of the training configs (``TrainConfig``, ``PretrainConfig``, ``MLMConfig``,
  ``GlueConfig``): its type and default from the dataclass, its note from the comment beside it in the source;
- ``reference/comparison.md``: the papers' comparison tables, rebuilt by ``spikingformer compare``.

They are committed, not made at build time, so that they read on GitHub too.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import os
import sys
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

CONFIGS = [  # (import path, command it configures)
    ("spikingformer.train.config:TrainConfig", "spikingformer train"),
    ("spikingformer.train.pretrain:PretrainConfig", "spikingformer pretrain"),
    ("spikingformer.train.mlm:MLMConfig", "spikingformer mlm"),
    ("spikingformer.train.glue:GlueConfig", "spikingformer glue"),
]


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"
    try:
        return parser.format_help()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def cli_page() -> str:
    from spikingformer import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["# CLI reference", "",
           "Generated from `spikingformer.cli.build_parser()` by `python docs/generate.py`: every subcommand's "
           "`--help`, as the installed command prints it. The conventions shared by all commands are in "
           "[Getting started](../getting-started.md#the-commands).", "",
           "## spikingformer", "", "```text", _help(parser).rstrip(), "```", ""]
    for name, p in sub.choices.items():
        out += [f"## spikingformer {name}", "", "```text", _help(p).rstrip(), "```", ""]
    return "\n".join(out)


def _field_notes(cls) -> dict[str, tuple[str, str]]:
    """``{field: (annotation as written, comment)}`` of the fields ``cls`` itself declares, read from its source:
    the comment on the field's line and the comment-only lines indented beyond the class body that follow it."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    comments = {}  # line number (1-based) -> (column, text)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    body = ast.parse(src).body[0].body
    notes = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            indent = node.col_offset
            text = [comments[node.end_lineno][1]] if node.end_lineno in comments else []
            n = node.end_lineno + 1
            while n in comments and comments[n][0] > indent and not lines[n - 1][:comments[n][0]].strip():
                text.append(comments[n][1])
                n += 1
            notes[node.target.id] = (ast.get_source_segment(src, node.annotation), " ".join(text))
    return notes


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def configs_page() -> str:
    import importlib

    out = ["# Config reference", "",
           "Generated from the config dataclasses by `python docs/generate.py`: every key a recipe or "
           "`--set KEY=VALUE` may give, its type and default, and the note beside it in the source. "
           "How recipes are read and overridden is in [Train on images](../guides/images.md#recipes); "
           "`spikingformer recipes` lists the shipped ones.", ""]
    for path, command in CONFIGS:
        module, _, name = path.partition(":")
        cls = getattr(importlib.import_module(module), name)
        notes = {}
        for base in reversed(cls.__mro__):
            if dataclasses.is_dataclass(base) and base is not object:
                for key, (ann, note) in _field_notes(base).items():
                    notes[key] = (ann, note or notes.get(key, ("", ""))[1])
        doc = inspect.getdoc(cls) or ""
        out += [f"## `{name}`: `{command}`", "", f"`{module}.{name}`" + (": " + " ".join(doc.split()) if doc else ""),
                "", "| key | type | default | note |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            ann, note = notes.get(f.name, (str(f.type), ""))
            out.append(f"| `{f.name}` | `{_cell(ann)}` | `{_cell(_default(f))}` | {_cell(note)} |")
        out.append("")
    return "\n".join(out)


def comparison_page() -> str:
    from spikingformer.analysis.compare import compare
    from spikingformer.cli.compare import INTRO, markdown

    return "\n".join(["# The comparison tables", "", INTRO, "",
                      "Generated by `spikingformer compare` (through `python docs/generate.py`); the models, their "
                      "parameter counts and the papers' numbers are in [Models](models.md), the energy method in "
                      "[Energy and the spike-driven proof](../guides/energy.md).", "", markdown(compare())])


PAGES = {"reference/cli.md": cli_page, "reference/configs.md": configs_page,
         "reference/comparison.md": comparison_page}


def stale() -> list[str]:
    """The generated pages whose committed text is not what the code generates now."""
    return [uri for uri, make in PAGES.items()
            if not (ROOT / "docs" / uri).is_file() or (ROOT / "docs" / uri).read_text() != make()]


def main(argv: list[str]) -> int:
    if argv and argv[0] != "--check":
        print(PAGES[f"reference/{argv[0]}.md"](), end="")
        return 0
    if argv:
        old = stale()
        print("\n".join(f"stale: docs/{uri} (python docs/generate.py)" for uri in old) or "up to date")
        return 1 if old else 0
    for uri, make in PAGES.items():
        (ROOT / "docs" / uri).write_text(make())
        print(f"wrote docs/{uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
