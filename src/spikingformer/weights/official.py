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

The comparison models' official layouts (SD-Transformer: ``official_sdt``; QKFormer: ``official_qkformer``; SEW
ResNet: ``official_sew``) are mapped by their own modules and asked first.

Layouts (``LAYOUTS``): the tensor names tell most apart, and say CML or not where they can.  Two cannot
be told by their tensors: Spikformer V1's ImageNet model (``q_conv``, ``proj_conv1..3``, ``rpe_conv``,
``mlp.fc1_conv``) and the Spikingformer that the official 8-512 energy log prints under the same names
("lifconvbn": LIF-Conv-BN, the pre-activation order; its ``rpe_conv`` is the fifth tokenizer ConvBN, with
no neuron or residual of its own).  The training args a timm checkpoint stores decide (the Spikingformer
train.py's ``--dim``/``--layer``/``--time-step`` flags, which the Spikformer one has not), else the model
asked for, else Spikformer V1; a note says which.

Heads and T leave no trace in tensor shapes, so the training args are the only record of them:
``recorded_options`` reads them (SPEC §6: 8-768 has 8 heads), and a model built otherwise is refused
(``loading``), not loaded to predict wrongly.
"""
from __future__ import annotations

import numbers
import re

from torch import Tensor

from ..models import list_models
from ..utils.errors import OfficialWeightsError
from . import official_qkformer, official_sdt, official_sew
from .renames import rename

__all__ = ["LAYOUTS", "official_layout", "convert_official", "recorded_options", "recorded_model", "check_recorded",
           "check_family", "OfficialWeightsError"]


_DEAD = re.compile(r"block\.\d+\.norm[12]\.(weight|bias)$")

# (pattern, replacement) per rule set; every official parameter/buffer key must match exactly one.
_CONV_ATTN_AND_HEAD = [  # named alike by Spikingformer and the lifconvbn names
    (r"block\.(\d+)\.attn\.(q|k|v|proj)_(conv|bn)\.(\w+)$", r"blocks.\1.attn.\2.\3.\4"),
    (r"head\.(weight|bias)$", r"head.fc.\1"),
]
_RULES = {
    "spikingformer": [
        (r"patch_embed\.(?:proj|block0)_(conv|bn)\.(\w+)$", r"tokenizer.encode.\1.\2"),
        (r"patch_embed\.(?:proj|block)([1-4])_(conv|bn)\.(\w+)$",
         lambda m: f"tokenizer.convs.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
        (r"block\.(\d+)\.mlp\.mlp([12])_(conv|bn)\.(\w+)$", r"blocks.\1.mlp.fc\2.\3.\4"),
        *_CONV_ATTN_AND_HEAD,
    ],
    "lifconvbn": [  # Spikformer's names on Spikingformer's modules: rpe_conv is the fifth tokenizer ConvBN
        (r"patch_embed\.proj_(conv|bn)\.(\w+)$", r"tokenizer.encode.\1.\2"),
        (r"patch_embed\.proj_(conv|bn)([1-3])\.(\w+)$", lambda m: f"tokenizer.convs.{int(m[2]) - 1}.{m[1]}.{m[3]}"),
        (r"patch_embed\.rpe_(conv|bn)\.(\w+)$", r"tokenizer.convs.3.\1.\2"),
        (r"block\.(\d+)\.mlp\.fc([12])_(conv|bn)\.(\w+)$", r"blocks.\1.mlp.fc\2.\3.\4"),
        *_CONV_ATTN_AND_HEAD,
    ],
    "spikformer": [
        (r"patch_embed\.proj_(conv|bn)\.(\w+)$", r"stem.convs.0.\1.\2"),
        (r"patch_embed\.proj_(conv|bn)([1-3])\.(\w+)$", r"stem.convs.\2.\1.\3"),
        (r"patch_embed\.block([1-4])_(conv|bn)\.(\w+)$", lambda m: f"stem.convs.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
        (r"patch_embed\.rpe_(conv|bn)\.(\w+)$", r"stem.rpe.\1.\2"),
        (r"block\.(\d+)\.attn\.(q|k|v|proj)_(?:linear|conv)\.(\w+)$", r"blocks.\1.attn.\2.linear.\3"),
        (r"block\.(\d+)\.attn\.(q|k|v|proj)_bn\.(\w+)$", r"blocks.\1.attn.\2.bn.\3"),
        (r"block\.(\d+)\.mlp\.fc([12])_(?:linear|conv)\.(\w+)$", r"blocks.\1.mlp.fc\2.linear.\3"),
        (r"block\.(\d+)\.mlp\.fc([12])_bn\.(\w+)$", r"blocks.\1.mlp.fc\2.bn.\3"),
        (r"head\.(weight|bias)$", r"head.fc.\1"),
    ],
}
_RULES["spikformer_cml"] = _RULES["spikformer"]

# layout -> (model family, what the layout itself records of the model, where it comes from)
LAYOUTS = {
    "spikingformer": ("spikingformer", {}, "Spikingformer / Spikingformer-CML model.py (CML or not: same names)"),
    "lifconvbn": ("spikingformer", {"cml": False},
                  "the older 'lifconvbn' Spikingformer names (proj_conv1..3, rpe_conv, mlp.fc1_conv) of the official "
                  "8-512 energy log"),
    "spikformer": ("spikformer", {"cml": False}, "Spikformer V1 (ZK-Zhou/spikformer model.py)"),
    "spikformer_cml": ("spikformer", {"cml": True},
                       "Spikformer with CML (Spikingformer-CML cifar10/CML_Spikformer.py)"),
}
# The comparison models' layouts, each in its own module (``is_layout``, ``convert``, ``FAMILY``, ``SOURCE``); they are
# asked first, as the official SD-Transformer's names are Spikformer V1's (``official_sdt``)
_PEERS = {peer.FAMILY.rstrip("_"): peer for peer in (official_sdt, official_qkformer, official_sew)}
LAYOUTS.update({name: (name, {}, peer.SOURCE) for name, peer in _PEERS.items()})
_QKV_BIAS = re.compile(r"(blocks\.\d+\.attn\.[qkv])\.linear\.bias$")
# flags of the Spikingformer train.py that ZK-Zhou/spikformer's ImageNet train.py does not have
_SPIKINGFORMER_FLAGS = ("dim", "num_heads", "layer", "time_step")
# (training arg, our option): depths before layer, as the official scripts pass depths= when both exist
_ARG_OPTIONS = (("dim", "dim"), ("num_heads", "num_heads"), ("depths", "depth"), ("layer", "depth"),
                ("time_step", "T"), ("T", "T"), ("mlp_ratio", "mlp_ratio"))


def _args(args) -> dict:
    """A timm checkpoint's ``args`` (its ``argparse.Namespace``, read back as an attribute bag, or a dict) as a dict;
    ``{}`` for anything else."""
    if isinstance(args, dict):
        return args
    return dict(vars(args)) if hasattr(args, "__dict__") else {}


def official_layout(state: dict, args=None, model: str | None = None) -> str | None:
    """The official layout (a key of ``LAYOUTS``) of ``state``, or ``None`` for ours (which never starts with
    ``patch_embed.`` or ``block.``).  ``args``: the checkpoint's training args; ``model``: the name asked for;
    both only decide between the two layouts that share their tensor names (module docstring)."""
    peer = next((name for name, peer in _PEERS.items() if peer.is_layout(state)), None)
    if peer:
        return peer
    keys = set(state)
    if not any(k.startswith("patch_embed.") for k in keys) or not any(k.startswith("block.") for k in keys):
        return None
    if not any(k.startswith("patch_embed.rpe_") or ".attn.q_linear." in k for k in keys):
        return "spikingformer"
    if any(k.startswith("patch_embed.block") for k in keys):
        return "spikformer_cml"
    if any(".attn.q_linear." in k for k in keys):
        return "spikformer"
    given = _args(args)
    if any(flag in given for flag in _SPIKINGFORMER_FLAGS):
        return "lifconvbn"
    return "lifconvbn" if not given and (model or "").startswith("spikingformer_") else "spikformer"


def convert_official(state: dict[str, Tensor], layout: str | None = None) -> tuple[dict[str, Tensor], str, list[str]]:
    """``(our_state, layout, notes)`` for an official ``state`` (``layout``: ``official_layout``'s, found here
    when not given); ``notes`` say what was dropped or folded.  Raises ``OfficialWeightsError`` naming every
    key no rule maps."""
    layout = layout or official_layout(state)
    if layout is None:
        raise OfficialWeightsError("not a state_dict in any official layout (Spikingformer, Spikformer, "
                                   "SD-Transformer, QKFormer)")
    if layout in _PEERS:
        out, notes = _PEERS[layout].convert(state)
        return out, layout, notes
    out, dead, unknown = {}, [], []
    for key, value in state.items():
        if _DEAD.match(key):
            dead.append(key)
            continue
        new = rename(key, _RULES[layout])
        if new is None:
            unknown.append(key)
            continue
        if new.endswith("conv.weight") and value.dim() == 3:
            value = value.unsqueeze(-1)          # Conv1d [o, i, 1] -> 1x1 Conv2d [o, i, 1, 1]
        elif new.endswith("linear.weight") and value.dim() > 2:
            value = value.flatten(1)             # Conv1d/1x1 Conv2d -> Linear [o, i]
        out[new] = value
    if unknown:
        raise OfficialWeightsError(f"official {layout} state_dict with {len(unknown)} key(s) no rule maps: "
                                   f"{unknown[:6]}{' ...' if len(unknown) > 6 else ''}")
    notes = _shared_names_note(layout, state)
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
    return out, layout, notes


def _shared_names_note(layout: str, state: dict) -> list[str]:
    """Which model a state_dict in the tensor names that two official models share was read as, and why."""
    if layout == "lifconvbn":
        return ["read as Spikingformer in the older 'lifconvbn' names of the official 8-512 energy log (its training "
                "args, or the model asked for, say so; Spikformer V1's ImageNet model has the same tensor names)"]
    if layout == "spikformer" and any(".attn.q_conv." in k for k in state):
        return ["read as Spikformer V1 (ZK-Zhou imagenet/model.py names); the official 8-512 energy log's "
                "Spikingformer ('lifconvbn') has the same tensor names: ask for a spikingformer_* model to read it "
                "as that"]
    return []


def recorded_options(layout: str, args=None) -> dict:
    """What ``layout`` and a timm checkpoint's training ``args`` record of the model, in our option names:
    ``dim``, ``num_heads``, ``depth`` (``depths``, else ``layer``), ``T`` (``time_step`` or ``T``), ``mlp_ratio``,
    and ``cml`` (from the layout, or an args ``model`` name that says CML)."""
    given, out = _args(args), dict(LAYOUTS[layout][1])
    for arg, ours in _ARG_OPTIONS:
        value = given.get(arg)
        if ours not in out and isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[ours] = int(value) if float(value).is_integer() and ours != "mlp_ratio" else float(value)
    if "cml" in str(given.get("model", "")).lower():
        out["cml"] = True
    return out


def recorded_model(layout: str, recorded: dict) -> tuple[str, dict] | None:
    """``(name, model_args)`` of the named model whose size (``depth``-``dim``, and ``cml``: the dagger) ``recorded``
    gives, with the recorded heads, T and MLP ratio as its options; ``None`` when the record does not name one.
    Spikingformer's and Spikingformer-CML's files share their tensor names: without a record of CML, both sizes
    are candidates, and an ``OfficialWeightsError`` names them."""
    if "depth" not in recorded or "dim" not in recorded:
        return None
    size, family = f"{recorded['depth']}_{recorded['dim']}", LAYOUTS[layout][0]
    names = [f"{family}_{size}", f"{family}_dagger_{size}"]
    if "cml" not in recorded:
        found = [n for n in names if n in list_models(modality="vision")]
        if found:
            raise OfficialWeightsError(f"its training args record a {size.replace('_', '-')} {family} but not whether "
                                       f"it downsamples with CML: give --model {' or '.join(found)}")
        return None
    name = names[bool(recorded["cml"])]
    options = {k: v for k, v in recorded.items() if k in ("num_heads", "T", "mlp_ratio")}
    return (name, options) if name in list_models(modality="vision") else None


# What official weights record but their tensors' shapes cannot show (dim, depth and mlp_ratio they show).
_UNSEEN = ("num_heads", "T", "cml")


def check_recorded(model, path, recorded: dict, name: str | None) -> None:
    """Refuse official weights whose training args (or layout) record heads, T or CML otherwise than ``model``
    is built: they would load, and predict wrongly without a word (``recorded_options``)."""
    cfg = getattr(model, "cfg", None)
    wrong = {k: v for k, v in recorded.items() if k in _UNSEEN and getattr(cfg, k, None) != v}
    if not wrong:
        return
    said = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
    has = ", ".join(f"{k}={getattr(cfg, k, None)!r}" for k in wrong)
    kv = [f"{k}={v}" for k, v in wrong.items()]
    how = ("the CML variants are the *_dagger_* models" if "cml" in wrong else
           f"build it so: --model-kwargs {' '.join(kv)} (energy, verify, export) or "
           f"{' '.join('--set model_args.' + x for x in kv)} (eval, predict)")
    raise OfficialWeightsError(f"{path} was trained with {said} (recorded in the checkpoint), but "
                     f"{name or type(model).__name__} has {has}; {how}")


def model_family(model_name: str) -> str | None:
    """The family (a ``LAYOUTS`` family) a model name belongs to, by its prefix; None for any other model."""
    families = sorted({family for family, _, _ in LAYOUTS.values()}, key=len, reverse=True)
    return next((f for f in families if model_name.startswith(f)), None)  # "sew_resnet34": no "_" after its family


def check_family(model_name: str, layout: str | None, source) -> None:
    """Refuse to load official weights of one family into a model of another (``layout`` None: not official)."""
    if layout is None:
        return
    family, _, what = LAYOUTS[layout]
    wanted = model_family(model_name)
    if model_name.startswith("spikformer_v2"):
        raise OfficialWeightsError(f"{source} holds official Spikformer V1 weights; {model_name} is a Spikformer "
                                   f"V2 (convolutional stem), which they do not fit")
    if family != wanted:
        names = {"spikformer": "spikformer_*", "spikingformer": "spikingformer_* / spikingformer_dagger_*"}.get(
            family, f"{family}*")
        raise OfficialWeightsError(f"{source} holds official {family} weights, which fit {names}, not {model_name} "
                                   f"(its tensor names: {what})")
