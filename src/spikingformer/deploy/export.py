"""``spikingformer export``: any checkpoint to one portable ``.safetensors`` file, optionally deployed.

The file holds the weights (no pickle at all) and, as safetensors metadata, the model's registry
name and options, so ``energy``, ``verify`` and ``eval --config`` rebuild it without ``--model``; a
run's file also carries its config and class names, so ``predict`` needs nothing else.
With ``--fold-bn`` the weights are the deployed form of ``deploy.fold_bn`` (every BatchNorm folded
into its conv/linear): what a neuromorphic back end runs, and what Eq. 19-20 count.  Inputs are
whatever ``checkpoint.load_weights`` reads: a run's checkpoint, a state_dict, or official weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..utils.errors import InputError
from ..utils.outputs import atomic_write, check_output
from ..weights.checkpoint import METADATA_FORMAT, is_run_checkpoint
from ..weights.loading import read_weights
from .fold import fold_bn

__all__ = ["export", "check_target"]



def check_target(out: str, force: bool = False, option: str = "out") -> None:
    """Refuse (``ValueError`` naming ``option``) an ``out`` that is not a writable ``.safetensors`` path, that
    exists (unless ``force``), or that is a training run's checkpoint: replacing that with weights alone would
    leave the run nothing to resume from, so ``force`` does not either."""
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

    check_target(out, force)
    weights = read_weights(checkpoint, model)
    net, name, build = weights.build(overrides), weights.name, weights.info
    margs = {**weights.model_args, **(overrides or {})}
    if fold:
        net = fold_bn(net)
    meta = {"format": METADATA_FORMAT, "model": name, "model_args": json.dumps(margs, sort_keys=True),
            "bn_folded": "true" if fold or _is_folded(net) else "false", "source": str(checkpoint),
            # a run's config and inputs (class names, normalisation) travel along: `predict` needs them
            **{k: json.dumps(build[k], sort_keys=True) for k in ("config", "data") if build.get(k)}}
    # clone: tied weights (the text model's MLM decoder) share storage, which safetensors refuses
    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    atomic_write(out, lambda f: f.write(save(tensors, meta)))
    return {**meta, "tensors": len(tensors), "notes": weights.notes}


def _is_folded(net: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
