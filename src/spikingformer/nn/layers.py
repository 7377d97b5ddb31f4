"""Building blocks shared by every model family (SPEC §1, §3).

Spiking tensors are time-major ``[T, B, C, H, W]``.  Convolutions, norms and pools
merge ``T*B`` into the batch axis; neurons (``MultiStepLIF``) run over ``T``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..utils.errors import InputError
from .neuron import MultiStepLIF

__all__ = ["ConvBN", "LinearBN", "SeqMaxPool", "SpikeQKV", "SoftmaxQKV", "ClassifierHead", "HEADS", "seq_apply", "run_blocks",
           "recomputing", "running_mean"]


def seq_apply(fn, x: Tensor) -> Tensor:
    """Apply a per-sample module ``fn`` to ``[T, B, ...]`` by merging ``T*B`` into the batch."""
    t, b = x.shape[:2]
    y = fn(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def running_mean(x: Tensor) -> Tensor:
    """``x [T, ...]`` averaged over its first ``t`` steps, for every ``t``: the read-outs after each step."""
    return x.cumsum(0) / torch.arange(1, len(x) + 1, device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))


def run_blocks(blocks, x: Tensor, *args, checkpointing: bool = False, owner: nn.Module | None = None) -> Tensor:
    """``x`` through ``blocks`` (modules, or stages of ``owner``) in turn; ``args`` go to every block.

    With ``checkpointing`` (timm's ``set_grad_checkpointing``) a block keeps only its input for the
    backward pass, which runs its forward again to get the rest: the ``T``-fold activations of all
    but one block are never held at once, for one more forward per step.  Neurons start every call
    from rest, so the second forward emits the same spikes; it must not move BatchNorm's running
    statistics a second time, which eager recomputation would (compiled, the forward graph alone
    updates them)."""
    if not (checkpointing and torch.is_grad_enabled()):
        for blk in blocks:
            x = blk(x, *args)
        return x
    for blk in blocks:
        if torch.compiler.is_compiling():
            x = checkpoint(blk, x, *args, use_reentrant=False)
        else:
            x = checkpoint(blk, x, *args, use_reentrant=False,
                           context_fn=lambda m=owner or blk: (contextlib.nullcontext(), _frozen_bn_stats(m)))
    return x


_recomputing = 0  # checkpointed forwards being recomputed right now (backward passes, any thread)


def recomputing() -> bool:
    """True while ``run_blocks`` recomputes a checkpointed block in a backward pass: forward hooks that
    count calls (``probe.SynapticProbe``) skip it, so that they see one forward per forward pass."""
    return _recomputing > 0


class _frozen_bn_stats:
    """The recomputation's context (``context_fn``).  Momentum 0 keeps the running statistics as they are
    while the BatchNorm still normalises by the batch's and saves for backward what it saved the first time
    (which the recomputation must match); ``num_batches_tracked`` is restored.  A class, not a generator:
    ``checkpoint`` calls ``context_fn`` once per forward and enters the context at every recomputation, and a
    graph can be backpropagated through more than once (``retain_graph=True``, ``torch.autograd.grad``)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._kept: list[list] = []

    def __enter__(self):
        global _recomputing
        bns = [m for m in self.module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self._kept.append([(m, m.momentum, m.num_batches_tracked.clone()) for m in bns])
        for m in bns:
            m.momentum = 0.0
        _recomputing += 1
        return self

    def __exit__(self, *exc) -> bool:
        global _recomputing
        _recomputing -= 1
        for m, momentum, count in self._kept.pop():
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
        return False


class ConvBN(nn.Module):
    """``Conv2d`` + ``BatchNorm2d`` over ``[T, B, C, H, W]`` (SPEC §3).

    The BN is kept separate during training and folds into the conv at deployment,
    which is why the energy model counts only the conv.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return seq_apply(lambda z: self.bn(self.conv(z)), x)


class LinearBN(nn.Module):
    """``Linear`` over the channel axis + ``BatchNorm1d``, on token tensors ``[T, B, N, D]``.

    Spikformer V1/V2 write their attention and MLP this way (SPEC §5).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: Tensor) -> Tensor:
        t, b, n, _ = x.shape
        y = self.linear(x.flatten(0, 1))                 # [TB, N, D']
        y = self.bn(y.transpose(1, 2)).transpose(1, 2)   # BN over channels
        return y.reshape(t, b, n, y.shape[-1])  # not -1: an empty batch has no size to infer


class SeqMaxPool(nn.Module):
    """``MaxPool2d(3, stride 2, padding 1)`` over ``[T, B, C, H, W]``; the max of spikes is a spike."""

    def __init__(self, kernel_size: int = 3, stride: int = 2, padding: int = 1):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        return seq_apply(self.pool, x)


class SpikeQKV(nn.Module):
    """The attention product ``Q K^T V * s`` of SSA / PSSA (Eq. 14), without softmax.

    ``q, k, v``: ``[..., N, d]`` per head.  Matrix products are associative, so when the
    token count ``N`` exceeds the head dim ``d`` we compute ``Q (K^T V)`` (``O(N d^2)``)
    instead of ``(Q K^T) V`` (``O(N^2 d)``): the same numbers, less work (SPEC §4).
    It is a module, not a function, so analysis hooks see Q, K and V as fed to it.
    """

    def __init__(self, scale: float = 0.125):
        super().__init__()
        self.scale = scale

    @staticmethod
    def kv_first(n_tokens: int, head_dim: int) -> bool:
        return n_tokens > head_dim

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.kv_first(q.shape[-2], q.shape[-1]):
            out = q @ (k.transpose(-2, -1) @ v)
        else:
            out = (q @ k.transpose(-2, -1)) @ v
        return out * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class SoftmaxQKV(SpikeQKV):
    """Vanilla self-attention's product ``Softmax(Q K^T / sqrt(d)) V`` (Spikformer V2 Eq. 9) in the place of
    ``SpikeQKV``: the attention of the ANN Transformer the papers compare against (``models._base.to_ann``).
    The softmax needs the whole ``Q K^T``, so it is always computed first (``kv_first`` is never true)."""

    def __init__(self):
        super().__init__(scale=1.0)

    @staticmethod
    def kv_first(n_tokens: int, head_dim: int) -> bool:
        return False

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v

    def extra_repr(self) -> str:
        return "softmax"


HEADS = ("avgpool_fc", "sn_avgpool_fc", "fc_avgpool", "sn_fc_avgpool", "avgpool_sn_fc")


class ClassifierHead(nn.Module):
    """The four classification heads of Eq. 15-18 on token features ``[T, B, N, D]``.

    - ``avgpool_fc``    (Eq. 15, default): ``FC(AvgPool(X))``
    - ``sn_avgpool_fc`` (Eq. 16): ``FC(AvgPool(SN(X)))``
    - ``fc_avgpool``    (Eq. 17): ``AvgPool(FC(X))``
    - ``sn_fc_avgpool`` (Eq. 18): ``AvgPool(FC(SN(X)))``
    - ``avgpool_sn_fc`` (SD-Transformer's head): ``FC(SN(AvgPool_tokens(X)))`` at each step, averaged over
      time; the neuron fires on each step's token average, so the FC is fed spikes.

    AvgPool averages over tokens and over time.  The paper treats the head as the
    read-out (Eq. 20 leaves it out); only Eq. 18 and SD-Transformer's head feed the FC spikes.
    """

    def __init__(self, dim: int, num_classes: int, kind: str = "avgpool_fc", tau: float = 2.0):
        super().__init__()
        if kind not in HEADS:
            raise InputError(f"unknown head {kind!r}; valid heads: {', '.join(HEADS)}")
        self.kind = kind
        self.sn = MultiStepLIF(tau) if "sn" in kind.split("_") else None
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(self.pool_steps(x).mean(0))

    def forward_steps(self, x: Tensor) -> Tensor:
        """``[T, B, classes]``: at step ``t`` the read-out of steps ``1..t`` alone (the average over time
        taken so far).  Neurons never look ahead, so that is the output of the model run for ``t`` steps
        on the first ``t`` inputs; the last equals ``forward`` up to rounding."""
        return self.finish(running_mean(self.pool_steps(x)))

    def pool_steps(self, x: Tensor) -> Tensor:
        """``[T, B, F]``: each step's token average, of the features (Eq. 15-16) or of the FC's output
        (Eq. 17-18); the read-out averages these over time, then ``finish`` es."""
        if self.kind == "avgpool_sn_fc":  # the FC fed spikes, one step at a time, as the official head
            return self.fc(self.sn(x.mean(dim=2)))
        if self.sn is not None:
            x = self.sn(x)
        return x.mean(dim=2) if self.kind.endswith("avgpool_fc") else self.fc(x).mean(dim=2)

    def finish(self, pooled: Tensor) -> Tensor:
        """Logits from ``pool_steps`` averaged over the time steps read out."""
        return self.fc(pooled) if self.kind.endswith("avgpool_fc") else pooled
