"""Weights trained with the official Spike-driven Transformer V1 code, renamed for ``models.sd_transformer``.

The official model (``SpikeDrivenTransformer``, timm name ``sdt``) names its tensors ``patch_embed.proj_conv``,
``patch_embed.proj_conv1..3``, ``patch_embed.rpe_conv``, ``block.i.attn.q_conv`` / ``q_bn`` (and k, v, proj),
``block.i.mlp.fc1_conv`` / ``fc1_bn`` (and fc2), ``head``; each ``_bn`` is a BatchNorm2d, each ``_conv`` a
Conv2d with 4-D weights (1x1 in the blocks).  Its neurons carry no tensors (SpikingJelly LIF nodes); the
parametric ones of ``--spike-mode plif`` would (``*_lif.w``): no rule maps them, as our neurons have a fixed tau.

Telling it from the other official layouts (``official.py``): those names are, tensor for tensor and shape for
shape, the names of Spikformer V1's ImageNet model and of the older "lifconvbn" Spikingformer (same tokenizer
widths, same ``q_conv`` / ``fc1_conv`` / ``head``).  What only SD-Transformer has is
``block.i.attn.talking_heads.weight``, a ``Conv1d(heads, heads, 1)`` that ``MS_SSA_Conv`` builds and never calls,
so every state_dict the official code saves holds one per block.  ``is_layout`` keys on it; a state_dict with
those tensors removed cannot be told from the other two by its tensors, and is not claimed here.  The
``talking_heads`` weights are dropped (our SDSA does not build the unused layer), with a note.
"""
from __future__ import annotations

import re

from torch import Tensor

from ..utils.errors import OfficialWeightsError
from .renames import rename

__all__ = ["FAMILY", "SOURCE", "is_layout", "convert"]

FAMILY = "sd_transformer_"
SOURCE = ("BICLab/Spike-Driven-Transformer model/spikeformer.py (SpikeDrivenTransformer), module/sps.py, "
          "module/ms_conv.py")

_TALKING_HEADS = re.compile(r"block\.\d+\.attn\.talking_heads\.weight$")
_RULES = [
    (r"patch_embed\.proj_(conv|bn)\.(\w+)$", lambda m: f"tokenizer.encode.{m[1]}.{m[2]}"),
    (r"patch_embed\.proj_(conv|bn)([1-3])\.(\w+)$", lambda m: f"tokenizer.convs.{int(m[2]) - 1}.{m[1]}.{m[3]}"),
    (r"patch_embed\.rpe_(conv|bn)\.(\w+)$", lambda m: f"tokenizer.rpe.{m[1]}.{m[2]}"),
    (r"block\.(\d+)\.attn\.(q|k|v|proj)_(conv|bn)\.(\w+)$", lambda m: f"blocks.{m[1]}.attn.{m[2]}.{m[3]}.{m[4]}"),
    (r"block\.(\d+)\.mlp\.fc([12])_(conv|bn)\.(\w+)$", lambda m: f"blocks.{m[1]}.mlp.fc{m[2]}.{m[3]}.{m[4]}"),
    (r"head\.(weight|bias)$", lambda m: f"head.fc.{m[1]}"),
]


def is_layout(state: dict) -> bool:
    """True for a state_dict in the official SD-Transformer V1 names: ``patch_embed.`` and ``block.`` tensors and
    the ``talking_heads`` weight of every block (module docstring)."""
    keys = [k for k in state if isinstance(k, str)]
    blocks = {k.split(".")[1] for k in keys if re.match(r"block\.\d+\.", k)}
    heads = {k.split(".")[1] for k in keys if _TALKING_HEADS.match(k)}
    return any(k.startswith("patch_embed.") for k in keys) and bool(blocks) and heads == blocks


def convert(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """``(our_state, notes)`` for an official SD-Transformer ``state``; raises ``OfficialWeightsError`` naming
    every key no rule maps."""
    out, dropped, unknown = {}, [], []
    for key, value in state.items():
        if _TALKING_HEADS.match(key):
            dropped.append(key)
            continue
        new = rename(key, _RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise OfficialWeightsError(f"official SD-Transformer state_dict with {len(unknown)} key(s) no rule maps: "
                                   f"{unknown}")
    notes = [f"dropped {len(dropped)} talking_heads weights (block.*.attn.talking_heads), a Conv1d the official "
             f"MS_SSA_Conv builds and never calls"] if dropped else []
    return out, notes
