"""Running a model on a batch of any kind: images or frames (a tensor), token sequences (a dict of keyword
inputs), or an ``(x, y)`` pair from a loader."""
from __future__ import annotations

import torch
from torch import Tensor, nn

Batch = Tensor | dict


def run_model(model: nn.Module, x: Batch | tuple | list):
    """``model(x)``: a text batch is a dict of keyword inputs; an ``(x, y)`` pair contributes its ``x``."""
    x = x[0] if isinstance(x, (tuple, list)) else x
    return model(**x) if isinstance(x, dict) else model(x)


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: list[Batch]) -> nn.Module:
    """Give an untrained model BN running statistics from ``batches`` (train-mode passes), then ``eval()``.

    At initialisation the running statistics are 0/1 and most neurons of an eval-mode
    model never fire, which would make every energy figure meaningless.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    for x in batches:
        run_model(model, x)
    return model.eval()
