"""Several processes through ``torchrun``: process-group setup, reductions, synchronized BatchNorm.

BatchNorm and ``[T*B, ...]``: every model merges time and batch into the leading axis before
a norm (SPEC §1), so a BN layer sees an ordinary ``[N, C, ...]`` batch and normalizes each
channel over ``N`` and the spatial/token axes.  Synchronizing it across processes only has to
reduce those per-channel sums over every process: torch's ``SyncBatchNorm`` does exactly
that (CUDA only), and ``AllReduceBatchNorm`` below does the same on any backend (gloo on
CPU), which is how the two-process equivalence test runs without a GPU.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils.errors import InputError

__all__ = ["DistInfo", "resolve_device", "init_distributed", "cleanup", "session", "all_reduce_sum", "barrier", "gather_objects",
           "AllReduceBatchNorm", "convert_sync_batchnorm"]


@dataclass
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; a CUDA device asked for on a machine without one is
    a ``ValueError``."""
    dev = torch.device(device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available (device=auto falls back "
                         "to the cpu)")
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and join the process group (nccl on CUDA, else gloo)."""
    try:  # an empty variable (`export WORLD_SIZE=$N` with N unset) means one process, as an absent one
        world, rank, local = (int(os.environ.get(k) or 0) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError as e:
        raise InputError(f"torchrun's WORLD_SIZE/RANK/LOCAL_RANK must be integers: {e}") from None
    world = max(world, 1)
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, dev)


def cleanup(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "auto"):
    """``init_distributed`` for the length of a run, and the process group torn down however it ends."""
    info = init_distributed(device)
    try:
        yield info
    finally:
        cleanup(info)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (no-op in a single process)."""
    if _active():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if _active():
        dist.barrier()


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: every process gets the sum, and the gradient of a sum
    is the sum of the gradients every process computed for it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batch of every process, on any backend.

    Mean and (biased) variance come from per-channel sums all-reduced over processes in two
    passes (mean first, then squared deviations: as accurate as a single-process BN); the
    reductions are differentiable, so gradients flow through the shared statistics exactly as
    in one process with the whole batch.  Running statistics use the unbiased variance over
    the global element count, as ``BatchNorm`` does.  Outside training or distributed runs
    it is an ordinary BatchNorm.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise InputError(f"expected at least 2D input [N, C, ...], got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # statistics in fp32 whatever the autocast dtype
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        xc = x - mean.view(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        return y.to(dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by a synchronized one: torch's ``SyncBatchNorm`` on CUDA, else ``AllReduceBatchNorm``."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        out = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
