"""One optimizer step, for every training command: the micro-batches of an update, whose gradients add up
(DDP all-reducing in the last one's backward only), each forward under autocast and its backward through the
loss scaler; then clipping, the update and the scaler's.  ``engine.train_one_epoch`` (train, pretrain) runs
one micro-batch per loaded batch, ``text_engine.fit`` (mlm, glue) the parts of each process's share of a step.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ..nn.fast import FastPath

__all__ = ["micro_step", "optimizer_step"]


def micro_step(model: nn.Module, scaler: torch.amp.GradScaler, path: FastPath, device: torch.device, sync: bool,
               forward: Callable[[], tuple]) -> tuple:
    """Run ``forward()`` under ``path``'s autocast and backpropagate its first output (the loss as it weighs
    in the update) through ``scaler``; the gradients add to those already there.  Under DDP the backward
    all-reduces only when ``sync`` (the update's last micro-batch).  Returns ``forward()``'s outputs."""
    path.step_begin()  # CUDA graphs: the previous step's outputs may now be overwritten
    no_sync = getattr(model, "no_sync", None)
    # DDP decides in the forward whether the backward all-reduces: both go inside no_sync
    with no_sync() if no_sync is not None and not sync else contextlib.nullcontext():
        with path.autocast(device):
            out = forward()
        scaler.scale(out[0]).backward()
    return out


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params, clip_grad: float) -> None:
    """The update closing a group of micro-batches: unscale and clip the global gradient norm (``clip_grad``
    > 0), step (skipped by the scaler on an fp16 overflow), update the loss scale, drop the gradients."""
    if clip_grad > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
