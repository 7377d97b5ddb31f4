"""Deployment form: every BatchNorm folded into the conv/linear before it.

The energy model (Eq. 19-20) counts no BatchNorm because, at inference, ``BN(W x + b)``
with running statistics is the affine map ``W' x + b'`` with
``W' = W * g / sqrt(var + eps)`` and ``b' = (b - mean) * g / sqrt(var + eps) + beta``
per output channel (the paper's "Theoretical Energy Consumption Calculation").
``fold_bn`` returns that deployed model; its spikes, outputs, spike-driven verdict and
energy are those of the unfolded model in eval mode.  Exactly so in float64; in float32
``W' x`` and ``BN(W x)`` round differently, so a membrane potential within rounding of the
threshold can, rarely, flip one spike (the energy then moves in the 6th-7th digit).
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..nn.layers import ConvBN, LinearBN
from ..utils.errors import InputError

__all__ = ["fold_bn"]


@torch.no_grad()
def _fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm, name: str) -> None:
    """Fold ``bn`` (eval semantics) into ``layer`` in place.  Computed in float64 so the folded
    weights are the rounded exact product, not a product of rounded factors."""
    if bn.running_mean is None or bn.running_var is None:
        raise InputError(f"cannot fold {name}.bn: it has no running statistics (track_running_stats=False), "
                         "so it normalises with batch statistics even at inference")
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    w = layer.weight
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(shift)
    w.copy_(w.double() * scale.view(-1, *([1] * (w.dim() - 1))))
    new_bias = (bias * scale + shift).to(w.dtype)
    if layer.bias is None:  # bias-free tokenizer / Q-K-V convs gain the BN shift as their bias
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _fold_declared(model: nn.Module) -> None:
    """Fold the ``(conv, bn)`` pairs that ``model.bn_pairs()`` names (module names; the model's forward applies
    each BN right after its conv), replacing each BN by ``nn.Identity``."""
    modules = dict(model.named_modules())
    for conv, bn in getattr(model, "bn_pairs", lambda: [])():
        if isinstance(modules[bn], nn.Identity):  # folded already
            continue
        _fold_into(modules[conv], modules[bn], conv)
        parent, _, child = bn.rpartition(".")
        setattr(modules[parent], child, nn.Identity().eval())


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with the BN of every ``ConvBN``/``LinearBN`` folded into
    its conv/linear and replaced by ``nn.Identity``; also every pair a model declares with a
    ``bn_pairs()`` method (its BNs that follow a conv outside these blocks: SEW ResNet's, MS-ResNet's
    stem).  ``model`` itself is not changed.

    Module names stay the same (``...q.conv``), so probes and energy reports of the two
    models line up row by row.  Any other BatchNorm cannot be folded generically (what feeds
    it is the forward's business); it is left in place with a warning.
    """
    folded = copy.deepcopy(model).eval()
    _fold_declared(folded)
    for name, mod in list(folded.named_modules()):
        if isinstance(getattr(mod, "bn", None), nn.Identity):  # folded already: folding twice changes nothing
            continue
        if isinstance(mod, ConvBN):
            _fold_into(mod.conv, mod.bn, name)
        elif isinstance(mod, LinearBN):
            _fold_into(mod.linear, mod.bn, name)
        else:
            continue
        mod.bn = nn.Identity().eval()  # the whole copy reports eval mode, its new modules included
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        warnings.warn(f"fold_bn left {len(left)} BatchNorm layer(s) that do not follow a ConvBN/LinearBN "
                      f"conv/linear unfolded: {', '.join(left[:5])}", stacklevel=2)
    return folded
