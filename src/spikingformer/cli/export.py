"""``spikingformer export``: a checkpoint's model as a self-describing ``.safetensors`` file."""
from __future__ import annotations

import argparse

from ..deploy.export import check_target, export
from .args import add_model_kwargs_arg, add_time_steps_arg, model_overrides


def _cmd_export(args: argparse.Namespace) -> int:
    check_target(args.out, args.force, "--out")  # before the work: a bad --out must not waste it
    r = export(args.checkpoint, args.out, args.model, model_overrides(args), args.fold_bn, args.force)
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out}: {r['model']} {r['model_args']}, {r['tensors']} tensors, "
          f"BatchNorm {'folded' if r['bn_folded'] == 'true' else 'kept'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint's model as one .safetensors file (optionally with BN folded)",
        description="Convert a run's checkpoint, a state_dict or official weights into a .safetensors file that "
                    "names its model in its metadata (energy/verify then need no --model). --fold-bn writes the "
                    "deployed form: every BatchNorm folded into the conv/linear before it.")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="weights to export (any format eval reads)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="where to write: a new .safetensors file (never a run's checkpoint)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (a run's checkpoint: never)")
    p.add_argument("--model", help="model name, for weights that do not name it (state_dicts, official weights)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: read from the weights)")
    add_time_steps_arg(p, "time steps T stored with the model (default: the checkpoint's)")
    add_model_kwargs_arg(p)
    p.add_argument("--fold-bn", action="store_true", help="fold every BatchNorm into its conv/linear (deployed form)")
    p.set_defaults(func=_cmd_export)
