"""``spikingformer verify``: the spike-driven certificate of a model, its exit status, and Fig. 3."""
from __future__ import annotations

import argparse
import os

from ..analysis.verify import Certificate, block_prefix, counterpart, plot_fig3, verify_model
from ..utils.errors import InputError
from ..utils.outputs import check_output, write_json
from .args import add_input_args, add_readout_arg
from .inputs import prepare


def _compared(args: argparse.Namespace, name: str) -> str | None:
    """The model ``--plot`` draws beside ``name``: ``--compare``, else its counterpart, if any.  The options
    that only shape that figure are errors without it, not silently ignored."""
    if (args.compare or args.compare_checkpoint) and not args.plot:
        raise InputError("--compare and --compare-checkpoint choose the model --plot draws beside this one: "
                         "add --plot DIR")
    other = args.compare or counterpart(name)
    if args.compare_checkpoint and not other:
        raise InputError(f"--compare-checkpoint {args.compare_checkpoint}: {name} has no Spikformer/Spikingformer "
                         f"counterpart to load it into; name its model with --compare")
    return other


def _plot(args: argparse.Namespace, cert: Certificate, other: str | None) -> str:
    """Fig. 3 for ``cert`` beside ``other`` (``_compared``), run on the same kind of input."""
    certs = [cert]
    if other:
        prep = prepare(argparse.Namespace(**{**vars(args), "model": other, "checkpoint": args.compare_checkpoint}))
        certs.append(verify_model(prep.model, prep.batches, other))
        certs[-1].notes += prep.notes
    os.makedirs(args.plot, exist_ok=True)
    return plot_fig3(certs, block_prefix(cert, args.block), os.path.join(args.plot, "fig3.png"))


def _cmd_verify(args: argparse.Namespace) -> int:
    # a bad --data is a usage error (2, from the command line's one handler), never a failed certificate (1)
    check_output("--json", args.json)
    check_output("--plot", args.plot, folder=True)
    prep = prepare(args)
    other = _compared(args, prep.name)  # before the passes: a usage error costs no work
    cert = verify_model(prep.model, prep.batches, prep.name, progress=True, readout=args.readout)
    cert.notes += prep.notes
    cert.sample = prep.sample
    print(cert.table())
    if args.json:
        write_json(args.json, cert.to_dict())
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {_plot(args, cert, other)}")
    return cert.exit_code


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="certify that a model is spike-driven (exit 0) or not (exit 1)",
        description="Run a model and list, for every synaptic layer (conv, linear, Q K^T V), the distinct "
                    "input values it received, whether they are all 0/1, and how its input was built: 0/1 by "
                    "construction (spikes moved only by ops that keep 0/1, whatever the input and weights), or "
                    "the op that made it otherwise (e.g. 'integer (add)': the SEW residual). Exit status 0 when "
                    "every layer after the encoding layer (read-out head exempt; a text model's encoding is its "
                    "embedding, so there every linear layer counts) received only spikes and is built to, 1 "
                    "when one received something else, 3 when none did on this input but some are not built to "
                    "(another input may break the rule), 2 on a usage error, so it can gate CI. Takes vision, "
                    "event-data and text (mlm/glue) checkpoints.",
        epilog="examples: spikingformer verify --model spikingformer_8_512 --plot figs/  "
               "(Fig. 3 against spikformer_8_512, block 7);  spikingformer verify --model "
               "examples/sj_spikformer.py:build --model-kwargs dim=64  (your own model: imports and runs that file)")
    add_input_args(p)
    p.add_argument("--json", metavar="FILE", help="also write the certificate as JSON")
    add_readout_arg(p)
    p.add_argument("--plot", metavar="DIR", help="write Fig. 3 as DIR/fig3.png: input-value histogram of one "
                   "block and per-layer firing rates, beside the counterpart model")
    p.add_argument("--block", metavar="N|PREFIX", help="block whose conv/linear inputs --plot histograms: N for "
                   "blocks.N., or a layer-name prefix such as stages.2. (default: the last block)")
    p.add_argument("--compare", metavar="NAME", help="model to plot beside --model (default: its Spikformer / "
                   "Spikingformer counterpart of the same size, if there is one)")
    p.add_argument("--compare-checkpoint", metavar="FILE", help="weights of the model --plot draws beside "
                   "(--compare or the counterpart; default: random)")
    p.set_defaults(func=_cmd_verify)
