"""Multistep leaky integrate-and-fire neuron (SPEC §2, Eq. 1-3).

Every spiking tensor is time-major ``[T, ...]``.  The neuron starts each call from
``V[-1] = V_reset``, so no membrane state survives between forward calls and users
never call ``reset_net``.  Outputs and gradients match SpikingJelly's
``LIFNode(tau, detach_reset=True, step_mode="m")`` with its default surrogate
(``Sigmoid(alpha=4)``).

``MultiStepLIF(backend="triton")`` runs the same neuron as two hand-written Triton kernels
(``spikingformer.nn.kernels``): same spikes, same gradients, less activation memory.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.errors import InputError

__all__ = ["SigmoidSurrogateSpike", "multistep_lif", "lif_steps", "MultiStepLIF", "LIF_BACKENDS"]

LIF_BACKENDS = ("torch", "triton")


class SigmoidSurrogateSpike(torch.autograd.Function):
    """Heaviside step ``S = (x >= 0)`` forward; ``d sigmoid(alpha x) / dx`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return grad_out * (ctx.alpha * sg * (1.0 - sg)), None


def multistep_lif(
    x: Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
    detach_reset: bool = True,
) -> Tensor:
    """Run a LIF neuron over the leading time axis of ``x`` and return its spikes.

    Charge (Eq. 1) ``H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau``;
    fire (Eq. 2) ``S[t] = H[t] >= V_th``; hard reset (Eq. 3)
    ``V[t] = H[t] (1 - S[t]) + V_reset S[t]``, with ``V[-1] = V_reset``.
    The loop over ``T`` is plain tensor code with no Python-side state, so
    ``torch.compile`` traces and fuses it whole.
    """
    if x.dim() < 1 or len(x) == 0:
        raise InputError(f"multistep_lif expects a time-major tensor [T, ...] of at least one step, "
                         f"got shape {tuple(x.shape)}")
    return lif_steps(x, torch.full_like(x[0], v_reset), tau, v_threshold, v_reset, alpha, detach_reset)[0]


def lif_steps(x: Tensor, v: Tensor, tau: float, v_threshold: float, v_reset: float, alpha: float,
              detach_reset: bool) -> tuple[Tensor, Tensor]:
    """``multistep_lif`` from the membrane ``v`` (``V[-1]``): the spikes and the last membrane ``V[T-1]``."""
    spikes = []
    # unbind, not x[t]: autograd then stacks the T step gradients once, where indexing builds a
    # zero-filled [T, ...] gradient per step and adds them up (O(T^2) memory traffic).
    for x_t in x.unbind(0):
        # Same operation order as SpikingJelly's neuronal_charge, so results agree bit for bit.
        h = v + (x_t - (v - v_reset)) / tau
        s = SigmoidSurrogateSpike.apply(h - v_threshold, alpha)
        if detach_reset:  # the product's values (finite membranes) and gradient, for one op and a bool saved
            v = torch.where(s.detach() > 0, v_reset, h)
        else:
            v = h * (1.0 - s) + v_reset * s
        spikes.append(s)
    return torch.stack(spikes), v


class MultiStepLIF(nn.Module):
    """LIF layer in multistep mode (the paper's ``SN``): ``[T, ...] -> [T, ...]`` spikes in {0, 1}.

    ``backend`` picks the implementation: ``"torch"`` (``multistep_lif``, any device, traced and
    fused by ``torch.compile``) or ``"triton"`` (``kernels.multistep_lif_triton``: CUDA, or the CPU
    under ``TRITON_INTERPRET=1``; needs ``detach_reset=True``).  It can be changed after
    construction, as ``FastPath.prepare`` does.

    During the calls of a ``streaming.Stream`` (``streaming``), each call starts from the ``membrane``
    the stream's previous call left (None: at rest), on either backend.
    """

    streaming = False
    membrane: Tensor | None = None

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        alpha: float = 4.0,
        detach_reset: bool = True,
        backend: str = "torch",
    ):
        super().__init__()
        if not 1.0 < tau < float("inf"):  # not "tau <= 1": NaN would pass that
            raise InputError(f"tau must be > 1 for a leaky neuron, got {tau}")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.v_reset = float(v_reset)
        self.alpha = float(alpha)
        self.detach_reset = bool(detach_reset)
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        if backend not in LIF_BACKENDS:
            raise InputError(f"backend must be one of {', '.join(LIF_BACKENDS)}, got {backend!r}")
        if backend == "triton" and not self.detach_reset:
            raise InputError("the triton LIF backend implements detach_reset=True only")
        self._backend = backend

    def forward(self, x: Tensor) -> Tensor:
        if self.streaming:
            return self._stream(x)
        if self._backend == "triton":
            from .kernels import multistep_lif_triton  # triton is optional: imported on first use

            return multistep_lif_triton(x, self.tau, self.v_threshold, self.v_reset, self.alpha)
        return multistep_lif(x, self.tau, self.v_threshold, self.v_reset, self.alpha, self.detach_reset)

    def _stream(self, x: Tensor) -> Tensor:
        """One call of a stream: from the membrane the previous call left, keeping the last one."""
        v = self.membrane
        if v is not None and v.shape != x.shape[1:]:
            raise InputError(f"a stream's input changed shape: {tuple(v.shape)} per step, now "
                             f"{tuple(x.shape[1:])} (Stream.reset() starts a new one)")
        if self._backend == "triton":  # membrane in fp32, as in multistep_lif_triton
            from .kernels import lif_stream

            spikes, v = lif_stream(x, v, self.tau, self.v_threshold, self.v_reset)
        else:
            v = torch.full_like(x[0], self.v_reset) if v is None else v
            spikes, v = lif_steps(x, v, self.tau, self.v_threshold, self.v_reset, self.alpha, self.detach_reset)
        self.membrane = v.detach()
        return spikes

    def extra_repr(self) -> str:
        backend = f", backend={self._backend}" if self._backend != "torch" else ""
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"alpha={self.alpha}, detach_reset={self.detach_reset}{backend}")
