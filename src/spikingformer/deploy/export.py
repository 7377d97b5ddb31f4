"""``spikingformer export``: any checkpoint to one portable ``.safetensors`` file, optionally deployed.

The file holds the weights (no pickle at all) and, as safetensors metadata, the model's registry
name and options, so ``energy``, ``verify`` and ``eval --config`` rebuild it without ``--model``; a
run's file also carries its config and class names, so ``predict`` needs nothing else.
With ``--fold-bn`` the weights are the deployed form of ``deploy.fold_bn`` (every BatchNorm folded
into its conv/linear): what a neuromorphic back end runs, and what Eq. 19-20 count.  Inputs are
whatever ``checkpoint.load_weights`` reads: a run's checkpoint, a state_dict, or official weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch import nn

from ..utils.errors import InputError

__all__ = ["export", "check_target", "METADATA_FORMAT"]

METADATA_FORMAT = "spikingformer.weights"


def check_target(out: str, force: bool = False, option: str = "out") -> None:
    """Refuse (``ValueError`` naming ``option``) an ``out`` that is not a writable ``.safetensors`` path, that
    exists (unless ``force``), or that is a training run's checkpoint: replacing that with weights alone would
    leave the run nothing to resume from, so ``force`` does not either."""
    from ..utils.outputs import check_output
    from ..weights.checkpoint import is_run_checkpoint

    if is_run_checkpoint(out):
        raise InputError(f"{option} {out} is a training run's checkpoint (its run resumes from it); export never "
                         f"replaces one, even with --force: write the .safetensors beside it")
    if Path(out).is_file() and not force:
        raise InputError(f"{option} {out} exists; export replaces a file only when asked (--force)")
    check_output(option, out, suffixes=(".safetensors",))


def export(checkpoint: str, out: str, model: str | None = None, overrides: dict | None = None,
           fold: bool = False, force: bool = False) -> dict:
    """Write ``checkpoint``'s model to ``out`` (safetensors, atomically); return the metadata written.
    ``out`` must end in ``.safetensors`` and may name an existing file only with ``force``, never a run's
    checkpoint (``check_target``)."""
    from safetensors.torch import save

    from ..utils.outputs import atomic_write
    from ..weights.loading import build_model
    from .fold import fold_bn

    check_target(out, force)
    net, name, margs, notes, build = build_model(checkpoint, model, overrides or {})
    if fold:
        net = fold_bn(net)
    meta = {"format": METADATA_FORMAT, "model": name, "model_args": json.dumps(margs, sort_keys=True),
            "bn_folded": "true" if fold or _is_folded(net) else "false", "source": str(checkpoint),
            # a run's config and inputs (class names, normalisation) travel along: `predict` needs them
            **{k: json.dumps(build[k], sort_keys=True) for k in ("config", "data") if build.get(k)}}
    # clone: tied weights (the text model's MLM decoder) share storage, which safetensors refuses
    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    atomic_write(out, lambda f: f.write(save(tensors, meta)))
    return {**meta, "tensors": len(tensors), "notes": notes}


def _is_folded(net: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _cmd_export(args: argparse.Namespace) -> int:
    from ..weights.checkpoint import CheckpointError
    from ..weights.loading import model_overrides

    try:
        check_target(args.out, args.force, "--out")  # before the work: a bad --out must not waste it
        r = export(args.checkpoint, args.out, args.model, model_overrides(args), args.fold_bn, args.force)
    except (CheckpointError, ValueError, TypeError) as e:  # TypeError: a model option that does not exist
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out}: {r['model']} {r['model_args']}, {r['tensors']} tensors, "
          f"BatchNorm {'folded' if r['bn_folded'] == 'true' else 'kept'}")
    return 0


def register_cli(sub) -> None:
    from ..weights.loading import add_model_kwargs_arg, add_time_steps_arg

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
