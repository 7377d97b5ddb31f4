"""MkDocs hooks (registered in mkdocs.yml ``hooks:``): the CLI and config reference pages are generated at build
time from the code itself, so they cannot drift from it.

- ``reference/cli.md``: every subcommand's ``--help``, from ``spikingformer.cli.build_parser()``;
- ``reference/configs.md``: every key of the training configs (``TrainConfig``, ``PretrainConfig``, ``MLMConfig``,
  ``GlueConfig``): its type and default from the dataclass, its note from the comment beside it in the source.

The pages are added to the build in memory (``File.generated``), never written into ``docs/``, so ``mkdocs serve``
does not rebuild in a loop.  ``python docs/hooks.py cli|configs`` prints a page.
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
           "Generated at build time from `spikingformer.cli.build_parser()` (`docs/hooks.py`): every subcommand's "
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
           "Generated at build time from the config dataclasses (`docs/hooks.py`): every key a recipe or "
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


PAGES = {"reference/cli.md": cli_page, "reference/configs.md": configs_page}


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files


if __name__ == "__main__":
    print({"cli": cli_page, "configs": configs_page}[sys.argv[1]]())
