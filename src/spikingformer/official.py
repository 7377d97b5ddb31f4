"""Weights trained with the official code, renamed for this library's models.

The official repositories name tensors after their own modules: ``patch_embed.proj1_conv``,
``block.3.attn.q_bn``, ``head`` (zhouchenlin2096/Spikingformer for Spikingformer, its
Spikingformer-CML twin for Spikingformer-dagger, whose pools carry no weights, and ZK-Zhou/spikformer
for Spikformer V1).  ``convert_official`` maps such a state_dict onto ours, so the released
checkpoints can be evaluated, measured (``spikingformer energy``) and verified here.  What differs
besides the names:

- Conv1d weights ``[out, in, 1]`` become the 1x1 Conv2d (Spikingformer) or Linear (Spikformer)
  weights of the same numbers.
- ``block.i.norm1`` / ``norm2``: LayerNorms the official blocks build and never call.  They are
  dropped (SPEC §6: a layer built but unused is a defect, so our models do not have them).
- Spikformer V1's Q/K/V ``Linear`` layers carry a bias that the BatchNorm right after them cancels;
  ours have none.  Each bias ``b`` is folded into that BatchNorm's running mean (``mu - b``), which
  gives the same eval-mode output (``BN(Wx + b)`` with mean ``mu`` is ``BN(Wx)`` with mean
  ``mu - b``), and in training mode the batch mean cancels it as before.
"""
from __future__ import annotations

import re

from torch import Tensor

__all__ = ["official_family", "convert_official", "check_family", "OfficialWeightsError"]


class OfficialWeightsError(ValueError):
    """A state_dict in an official layout that this mapping does not know."""


_DEAD = re.compile(r"block\.\d+\.norm[12]\.(weight|bias)$")

# (pattern, replacement) per family; every official parameter/buffer key must match exactly one.
_RULES = {
    "spikingformer": [
        (r"patch_embed\.(?:proj|block0)_(conv|bn)\.(\w+)$", r"tokenizer.encode.\1.\2"),
        (r"patch_embed\.(?:proj|block)([1-4])_(conv|bn)\.(\w+)$",
         lambda m: f"tokenizer.convs.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
        (r"block\.(\d+)\.attn\.(q|k|v|proj)_(conv|bn)\.(\w+)$", r"blocks.\1.attn.\2.\3.\4"),
        (r"block\.(\d+)\.mlp\.mlp([12])_(conv|bn)\.(\w+)$", r"blocks.\1.mlp.fc\2.\3.\4"),
        (r"head\.(weight|bias)$", r"head.fc.\1"),
    ],
    "spikformer": [
        (r"patch_embed\.proj_(conv|bn)\.(\w+)$", r"stem.convs.0.\1.\2"),
        (r"patch_embed\.proj_(conv|bn)([1-3])\.(\w+)$", r"stem.convs.\2.\1.\3"),
        (r"patch_embed\.rpe_(conv|bn)\.(\w+)$", r"stem.rpe.\1.\2"),
        (r"block\.(\d+)\.attn\.(q|k|v|proj)_(?:linear|conv)\.(\w+)$", r"blocks.\1.attn.\2.linear.\3"),
        (r"block\.(\d+)\.attn\.(q|k|v|proj)_bn\.(\w+)$", r"blocks.\1.attn.\2.bn.\3"),
        (r"block\.(\d+)\.mlp\.fc([12])_(?:linear|conv)\.(\w+)$", r"blocks.\1.mlp.fc\2.linear.\3"),
        (r"block\.(\d+)\.mlp\.fc([12])_bn\.(\w+)$", r"blocks.\1.mlp.fc\2.bn.\3"),
        (r"head\.(weight|bias)$", r"head.fc.\1"),
    ],
}
_QKV_BIAS = re.compile(r"(blocks\.\d+\.attn\.[qkv])\.linear\.bias$")


def official_family(state: dict) -> str | None:
    """``"spikingformer"`` or ``"spikformer"`` when ``state`` has an official repository's key layout,
    else ``None``.  Our own keys never start with ``patch_embed.`` or ``block.``."""
    keys = set(state)
    if not any(k.startswith("patch_embed.") for k in keys) or not any(k.startswith("block.") for k in keys):
        return None
    if any(k.startswith("patch_embed.rpe_") or ".attn.q_linear." in k for k in keys):
        return "spikformer"
    return "spikingformer"


def _rename(key: str, family: str) -> str | None:
    for pattern, repl in _RULES[family]:
        m = re.match(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def convert_official(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str, list[str]]:
    """``(our_state, family, notes)`` for an official ``state``; ``notes`` say what was dropped or folded.
    Raises ``OfficialWeightsError`` naming every key no rule maps."""
    family = official_family(state)
    if family is None:
        raise OfficialWeightsError("not an official Spikingformer/Spikformer state_dict (no patch_embed./block. keys)")
    out, dead, unknown = {}, [], []
    for key, value in state.items():
        if _DEAD.match(key):
            dead.append(key)
            continue
        new = _rename(key, family)
        if new is None:
            unknown.append(key)
            continue
        if new.endswith("conv.weight") and value.dim() == 3:
            value = value.unsqueeze(-1)          # Conv1d [o, i, 1] -> 1x1 Conv2d [o, i, 1, 1]
        elif new.endswith("linear.weight") and value.dim() > 2:
            value = value.flatten(1)             # Conv1d/1x1 Conv2d -> Linear [o, i]
        out[new] = value
    if unknown:
        raise OfficialWeightsError(f"official {family} state_dict with {len(unknown)} key(s) no rule maps: "
                                   f"{unknown[:6]}{' ...' if len(unknown) > 6 else ''}")
    notes = []
    if dead:
        notes.append(f"dropped {len(dead)} LayerNorm tensors (block.*.norm1/norm2) the official blocks never use")
    folded = [k for k in out if _QKV_BIAS.match(k)]
    for key in folded:
        bn = _QKV_BIAS.match(key)[1] + ".bn.running_mean"
        if bn not in out:
            raise OfficialWeightsError(f"{key} has no BatchNorm running mean to fold into ({bn} missing)")
        out[bn] = out[bn] - out.pop(key)
    if folded:
        notes.append(f"folded {len(folded)} Q/K/V Linear biases into their BatchNorm running means")
    return out, family, notes


def check_family(model_name: str, family: str | None, source) -> None:
    """Refuse to load official weights of one family into a model of the other (``family`` None: not official)."""
    if family is None:
        return
    wanted = "spikformer" if model_name.startswith("spikformer_") else "spikingformer"
    if model_name.startswith("spikformer_v2"):
        raise OfficialWeightsError(f"{source} holds official Spikformer V1 weights; {model_name} is a Spikformer "
                                   f"V2 (convolutional stem), which they do not fit")
    if family != wanted:
        names = "spikformer_*" if family == "spikformer" else "spikingformer_* / spikingformer_dagger_*"
        raise OfficialWeightsError(f"{source} holds official {family} weights, which fit {names}, not {model_name}")
