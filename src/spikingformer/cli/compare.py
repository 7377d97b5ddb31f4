"""``spikingformer compare``: the papers' comparison tables rebuilt, one row per reported result
(``analysis.compare``), as Markdown, JSON and CSV."""
from __future__ import annotations

import argparse
import itertools
import sys

from ..analysis.compare import ComparisonRow, compare, table_models
from ..utils.errors import InputError
from ..utils.outputs import atomic_write, check_output, write_csv, write_json

COLUMNS = ("model", "data", "T", "params M (ours / paper)", "spike-driven (proof)",
           "energy mJ (paper / ours)", "top-1 % (paper)")
INTRO = ("Every model row of the comparison tables, rebuilt by `spikingformer compare`: our parameter count beside "
         "the paper's, the spike-driven verdict of the provenance proof (the first layer that breaks it and the op "
         "that made its input), the energy per image the paper gives beside ours where the firing rates are known "
         "(published by an official repository, or an ANN's, which need none), and the paper's top-1.")


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[ComparisonRow]) -> str:
    """One Markdown table per paper table, rows as ``compare`` sorts them; the energy basis as footnotes."""
    out, notes = [], {}
    for table, group in itertools.groupby(rows, key=lambda r: r.table):
        out += [f"### {table}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in group:
            energy = f"{_num(r.paper_energy_mJ)} / {_num(r.energy_mJ)}"
            if r.energy_mJ is not None:
                mark = notes.setdefault(r.energy_basis, len(notes) + 1)
                energy += f" [{mark}]"
            cells = (f"`{r.model}`", r.dataset, str(r.T), f"{r.params_M:.2f} / {_num(r.paper_params_M)}",
                     r.verdict, energy, "-" if r.paper_top1 is None else f"{r.paper_top1:g}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += [f"[{n}] ours: {basis}." for basis, n in notes.items()]
    return "\n".join(out) + "\n"


def _cmd_compare(args: argparse.Namespace) -> int:
    for option, path in (("--json", args.json), ("--csv", args.csv), ("--markdown", args.markdown)):
        check_output(option, path)
    rows = compare(args.pattern, progress=True)
    for name in sorted(set(table_models(args.pattern)) - {r.model for r in rows}):  # compare left it out
        print(f"note: {name} left out: its optional package is not installed (`spikingformer models` says which)",
              file=sys.stderr)
    if not rows:
        raise InputError(f"no model of a paper's table matches {args.pattern!r} (`spikingformer models` lists them)")
    text = markdown(rows)
    sys.stdout.write(text)
    if args.json:
        write_json(args.json, [r.to_dict() for r in rows])
    if args.csv:
        fields = list(rows[0].to_dict())
        write_csv(args.csv, fields, [[r.to_dict()[f] for f in fields] for r in rows])
    if args.markdown:
        atomic_write(args.markdown, lambda f: f.write(text.encode()))
    return 0


def register(sub) -> None:
    p = sub.add_parser("compare", help="rebuild the papers' comparison tables: parameters, proof, energy, accuracy",
                       description=INTRO + " The verdict is proven on a small forward of each model (train-mode "
                                   "BatchNorm, random weights and input); the full-size model has the same layers.")
    p.add_argument("pattern", nargs="?", default=None, help="shell glob over model names, e.g. 'sd_transformer_*'")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the rows as CSV")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown tables to FILE")
    p.set_defaults(func=_cmd_compare)
