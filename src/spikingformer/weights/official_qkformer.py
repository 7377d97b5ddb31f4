"""QKFormer weights trained with the official code (zhouchenlin2096/QKFormer), renamed for ``models.qkformer``.

The official names (``cifar10/model.py``, ``imagenet/qkformer.py``, ``cifar10-dvs/model.py``,
``dvs128-gesture/model.py``) and ours:

- ``patch_embed1.proj_conv`` / ``proj{i}_conv`` (the stem's convs, in order), ``proj_res_conv`` (its shortcut):
  ``stages.0.embed.layers.{i}.conv.conv`` / ``stages.0.embed.shortcut.conv.conv``, each ``*_bn`` beside them;
- ``patch_embed{s}`` for ``s >= 2`` (a downsampling SPEDS): its first conv ``proj3_conv`` (CIFAR, ImageNet) or
  ``proj_conv`` (the DVS files), its second ``proj4_conv``, ``proj_res_conv``: ``stages.{s-1}.embed.layers.0``,
  ``.layers.1``, ``.shortcut``;
- ``stage{s}.{j}.tssa`` (Q-K token attention), ``.ssa`` (CIFAR, DVS) or ``.attn`` (ImageNet) (SSA),
  ``{q,k,v,proj}_{conv,bn}``: ``stages.{s-1}.blocks.{j}.attn.{q,k,v,proj}.{conv,bn}``;
- ``stage{s}.{j}.mlp.mlp{1,2}_*`` (CIFAR, DVS) or ``fc{1,2}_*`` (ImageNet): ``...mlp.fc{1,2}.{conv,bn}``;
- ``head``: ``head.fc``.

The attention's Conv1d weights ``[out, in, 1]`` become 1x1 Conv2d weights ``[out, in, 1, 1]`` (the same
numbers).  The official LIF neurons and SSA's ``qkv_mp`` pool hold no tensors.

Telling the layout apart: the keys ``patch_embed1.*`` and ``stage{s}.{j}.tssa.*`` are QKFormer's alone.
Spikformer's and Spikingformer's official names start with ``patch_embed.`` (no stage number) and
``block.{j}.`` (``official.py``), SD-Transformer's carry neither, and ours start with ``stages.``.
"""
from __future__ import annotations

import re

from torch import Tensor

from ..utils.errors import OfficialWeightsError
from .renames import rename

__all__ = ["FAMILY", "SOURCE", "is_layout", "convert"]

FAMILY = "qkformer_"
SOURCE = ("zhouchenlin2096/QKFormer: cifar10/model.py, imagenet/qkformer.py, cifar10-dvs/model.py, "
          "dvs128-gesture/model.py")

_QK_BLOCK = re.compile(r"stage\d+\.\d+\.tssa\.")
_RULES = [  # (official key, our key from its match); stage numbers count from 1 there, from 0 here
    (r"patch_embed1\.proj(\d*)_(conv|bn)\.(\w+)$",
     lambda m: f"stages.0.embed.layers.{int(m[1] or 0)}.conv.{m[2]}.{m[3]}"),
    (r"patch_embed([2-9])\.proj3?_(conv|bn)\.(\w+)$",
     lambda m: f"stages.{int(m[1]) - 1}.embed.layers.0.conv.{m[2]}.{m[3]}"),
    (r"patch_embed([2-9])\.proj4_(conv|bn)\.(\w+)$",
     lambda m: f"stages.{int(m[1]) - 1}.embed.layers.1.conv.{m[2]}.{m[3]}"),
    (r"patch_embed([1-9])\.proj_res_(conv|bn)\.(\w+)$",
     lambda m: f"stages.{int(m[1]) - 1}.embed.shortcut.conv.{m[2]}.{m[3]}"),
    (r"stage([1-9])\.(\d+)\.(?:tssa|ssa|attn)\.(q|k|v|proj)_(conv|bn)\.(\w+)$",
     lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.attn.{m[3]}.{m[4]}.{m[5]}"),
    (r"stage([1-9])\.(\d+)\.mlp\.(?:mlp|fc)([12])_(conv|bn)\.(\w+)$",
     lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.mlp.fc{m[3]}.{m[4]}.{m[5]}"),
    (r"head\.(weight|bias)$", lambda m: f"head.fc.{m[1]}"),
]


def is_layout(state: dict) -> bool:
    """True for a state_dict in the official QKFormer names (module docstring): it has a stem ``patch_embed1``
    and a Q-K attention block ``stage{s}.{j}.tssa``."""
    keys = [k for k in state if isinstance(k, str)]
    return any(k.startswith("patch_embed1.") for k in keys) and any(_QK_BLOCK.match(k) for k in keys)


def convert(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """``(our_state, notes)`` for an official QKFormer ``state``; raises ``OfficialWeightsError`` naming every key
    no rule maps."""
    unknown = [k for k in state if rename(k, _RULES) is None]
    if unknown:
        raise OfficialWeightsError(f"{len(unknown)} key(s) of the QKFormer layout that no rule maps: "
                                   f"{', '.join(unknown)}")
    ours, reshaped = {}, 0
    for key, value in state.items():
        name = rename(key, _RULES)
        if ".attn." in name and name.endswith("conv.weight") and value.dim() == 3:
            value, reshaped = value.unsqueeze(-1), reshaped + 1
        ours[name] = value
    notes = [f"{reshaped} attention Conv1d weight(s) [out, in, 1] taken as 1x1 Conv2d weights"] if reshaped else []
    return ours, notes
