"""The one transformer block of every family, composed of its attention and MLP (as timm's ``Block``).

``X' = X + Attn(X)``, ``X'' = X' + MLP(X')`` is the block of Spikformer (SEW residual) and of Spikingformer
(MS residual, Eq. 7-8) alike; what makes the residual SEW or MS is where the branches put their neurons
(SPEC §4-5):

- post-activation (Spikformer's SSA and MLP): each synaptic layer is followed by ``SN`` and the branch
  *ends* with one, so the block adds spikes to the stream (SEW), which then holds integers {0, 1, 2, ...};
- pre-activation (Spikingformer's PSSA and SMLP): each synaptic layer is preceded by ``SN`` and the branch
  *starts* with one, so it adds real values to a real-valued stream (MS) and every layer sees spikes.

A family names its attention and MLP by subclassing ``SpikingSelfAttention`` and ``SpikingMLP`` with its
synaptic layer (``ConvBN`` on ``[T, B, C, H, W]`` maps, ``LinearBN`` on ``[T, B, N, C]`` token sequences) and
its placement of the neurons, and its block by subclassing ``Block`` with those two.  Token sequences with
padding (the text models) pass a real-token ``mask`` ``[B, N]`` through the block to every layer.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..nn.layers import SpikeQKV
from ..nn.neuron import MultiStepLIF

__all__ = ["SpikingSelfAttention", "SpikingMLP", "Block"]


def _synapse(layer: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    # only the text models' layers take a mask, and only when a batch has padding
    return layer(x) if mask is None else layer(x, mask)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[T, B, C, H, W]`` or ``[T, B, N, C]`` -> ``[T, B, heads, N, C / heads]``; channel ``c`` belongs to head
    ``c // (C / heads)``, as in the official code."""
    if x.dim() == 5:
        t, b, c, h, w = x.shape
        return x.reshape(t, b, num_heads, c // num_heads, h * w).transpose(-2, -1)
    t, b, n, c = x.shape
    return x.reshape(t, b, n, num_heads, c // num_heads).transpose(2, 3)


def _merge_heads(a: Tensor, like: Tensor) -> Tensor:
    """``_split_heads`` undone: ``a`` ``[T, B, heads, N, d]`` back to the layout and shape of ``like``."""
    if like.dim() == 4:
        return a.transpose(2, 3).reshape(like.shape)
    t, b, c, h, w = like.shape
    if like[0].is_contiguous():
        return a.transpose(-2, -1).reshape(t, b, c, h, w)
    # a channels-last stream (the fast path) stays so, so that proj's backward needs no layout copy
    return a.permute(0, 1, 3, 2, 4).reshape(t, b, h, w, c).permute(0, 1, 4, 2, 3)


class SpikingSelfAttention(nn.Module):
    """Spiking self-attention without softmax (Eq. 12-14): ``Q, K, V = SN(BN(W X_s))``, per head
    ``A = Q K^T V * s`` (``SpikeQKV``), output ``BN(W_proj SN_attn(A))`` with ``SN_attn`` at ``V_th = 0.5``.

    Subclasses set ``synapse`` (the ``BN(W .)`` layer class, called ``(in, out, bias=)``) and
    ``pre_activation``: ``X_s = SN(X)`` (PSSA) or ``X_s = X`` with a final ``SN`` after the projection (SSA).
    Given a real-token ``mask``, pad tokens' K and V spikes are zeroed: they add nothing to ``K^T V``.
    """

    synapse: type[nn.Module]
    pre_activation: bool

    def __init__(self, dim: int, num_heads: int, tau: float = 2.0, scale: float = 0.125,
                 attn_threshold: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        if self.pre_activation:
            self.sn_in = MultiStepLIF(tau)
        self.q, self.k, self.v = (self.synapse(dim, dim, bias=False) for _ in range(3))
        self.sn_q, self.sn_k, self.sn_v = (MultiStepLIF(tau) for _ in range(3))
        self.qkv = SpikeQKV(scale)
        self.sn_attn = MultiStepLIF(tau, v_threshold=attn_threshold)
        self.proj = self.synapse(dim, dim, bias=True)
        if not self.pre_activation:
            self.sn_proj = MultiStepLIF(tau)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        xs = self.sn_in(x) if self.pre_activation else x
        q = self.sn_q(_synapse(self.q, xs, mask))
        k = self.sn_k(_synapse(self.k, xs, mask))
        v = self.sn_v(_synapse(self.v, xs, mask))
        if mask is not None:  # spikes times a 0/1 mask stay spikes
            keep = mask[None, :, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        a = self.qkv(*(_split_heads(s, self.num_heads) for s in (q, k, v)))
        out = _synapse(self.proj, self.sn_attn(_merge_heads(a, xs)), mask)
        return out if self.pre_activation else self.sn_proj(out)


class SpikingMLP(nn.Module):
    """Two synaptic layers ``fc1`` (``D -> hidden``) and ``fc2`` (``hidden -> D``), each with its neuron
    ``sn1`` / ``sn2`` before it (``pre_activation``: SMLP, ``fc2(sn2(fc1(sn1(X))))``) or after it (Spikformer's
    MLP, ``sn2(fc2(sn1(fc1(X))))``).  Subclasses set ``synapse`` and ``pre_activation``."""

    synapse: type[nn.Module]
    pre_activation: bool

    def __init__(self, dim: int, hidden: int, tau: float = 2.0):
        super().__init__()
        # registered in the order the data flows, the order hooks and per-layer reports list them in
        if self.pre_activation:
            self.sn1, self.fc1 = MultiStepLIF(tau), self.synapse(dim, hidden, bias=True)
            self.sn2, self.fc2 = MultiStepLIF(tau), self.synapse(hidden, dim, bias=True)
        else:
            self.fc1, self.sn1 = self.synapse(dim, hidden, bias=True), MultiStepLIF(tau)
            self.fc2, self.sn2 = self.synapse(hidden, dim, bias=True), MultiStepLIF(tau)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for fc, sn in ((self.fc1, self.sn1), (self.fc2, self.sn2)):
            x = _synapse(fc, sn(x), mask) if self.pre_activation else sn(_synapse(fc, x, mask))
        return x


class Block(nn.Module):
    """``X' = X + Attn(X)``; ``X'' = X' + MLP(X')`` (Eq. 7-8; Spikformer's Eq. 4), hidden ``mlp_ratio * D``.

    ``attn_layer`` / ``mlp_layer`` (a ``SpikingSelfAttention`` and a ``SpikingMLP`` class) default to the
    class attributes of the same names, which the families' blocks set."""

    attn_layer: type[SpikingSelfAttention]
    mlp_layer: type[SpikingMLP]

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, tau: float = 2.0,
                 attn_scale: float = 0.125, attn_threshold: float = 0.5,
                 attn_layer: type[SpikingSelfAttention] | None = None, mlp_layer: type[SpikingMLP] | None = None):
        super().__init__()
        self.attn = (attn_layer or self.attn_layer)(dim, num_heads, tau, attn_scale, attn_threshold)
        self.mlp = (mlp_layer or self.mlp_layer)(dim, int(dim * mlp_ratio), tau)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(x, mask)
        return x + self.mlp(x, mask)
