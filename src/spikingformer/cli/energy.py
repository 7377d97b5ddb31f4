"""``spikingformer energy``: the theoretical energy of a model (Eq. 19-20), printed, and as JSON, CSV and a figure."""
from __future__ import annotations

import argparse

from torch import Tensor

from ..analysis.energy import E_AC_PJ, E_MAC_PJ, INTEGER_INPUTS, estimate_energy
from ..utils.errors import InputError
from ..utils.outputs import FIGURE_SUFFIXES, check_output
from .args import add_input_args, add_readout_arg
from .inputs import Prepared, prepare


def _check_steps_known(prep: Prepared) -> None:
    """A user's model (``--model FILE.py:FACTORY``) fed static images must say how many steps it runs them."""
    x = prep.batches[0]
    if getattr(prep.model, "T", None) is None and isinstance(x, Tensor) and x.dim() == 4:
        raise InputError(f"{prep.name} has no T attribute: energy prices the steps a static image runs, so set "
                         f"self.T in the model (self.T = 1 for a single-step model)")


def _cmd_energy(args: argparse.Namespace) -> int:
    check_output("--json", args.json)
    check_output("--csv", args.csv)
    check_output("--plot", args.plot, suffixes=FIGURE_SUFFIXES)
    prep = prepare(args)
    _check_steps_known(prep)
    report = estimate_energy(prep.model, prep.batches, e_mac=args.e_mac, e_ac=args.e_ac, model_name=prep.name,
                             unit=prep.unit, integer_inputs=args.integer_inputs, progress=True, readout=args.readout)
    report.notes += prep.notes
    report.sample = prep.sample
    print(f"{prep.name}: {prep.input}, T={report.T}, {report.images} {prep.unit}(s)")
    print(report.table())
    for path, write in ((args.json, report.write_json), (args.csv, report.write_csv), (args.plot, report.write_plot)):
        if path:
            write(path)
            print(f"wrote {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "energy", help="theoretical energy per image or sequence (Eq. 19-20) from real forward passes",
        description="Run a model, record every synaptic operation (conv, linear, the two products of "
                    "Q K^T V in the order computed, attention written as bare matmul/einsum/Hadamard/sum ops) "
                    "and classify each one's input as binary spikes "
                    "(fr * T * FLOPs accumulates, E_AC) or not (T * FLOPs multiply-accumulates, E_MAC). "
                    "Prints a per-layer table and the total in mJ per image (per sequence for a text model); "
                    "the read-out head is included in the total and also shown apart (Eq. 20 leaves it out).",
        epilog="examples: spikingformer energy --model spikingformer_8_512 --json e.json;  "
               "spikingformer energy --checkpoint runs/glue/last.pt --data ~/.cache/spikingformer/glue;  "
               "spikingformer energy --model examples/sj_spikformer.py:build --model-kwargs dim=64  "
               "(your own model: imports and runs that file)")
    add_input_args(p)
    p.add_argument("--e-mac", type=float, default=E_MAC_PJ, help=f"pJ per MAC (default {E_MAC_PJ}, 45 nm)")
    p.add_argument("--e-ac", type=float, default=E_AC_PJ, help=f"pJ per AC (default {E_AC_PJ}, 45 nm)")
    p.add_argument("--integer-inputs", choices=INTEGER_INPUTS, default="mac",
                   help="how a layer fed integers (Spikformer's SEW residual sums) counts: mac (default, SPEC §7): "
                        "T * FLOPs MACs; ac: a value k is k spikes, mean(input) * T * FLOPs ACs (the two "
                        "calculations of the official energy script)")
    add_readout_arg(p)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the per-layer table as CSV")
    p.add_argument("--plot", metavar="FILE", help="also draw each layer's input firing rate and energy (.png, .pdf or .svg)")
    p.set_defaults(func=_cmd_energy)
