"""Multistep LIF as two Triton kernels (SPEC §2, Eq. 1-3), exposed as a PyTorch custom op.

One program owns a block of neurons and loops over ``T`` inside, with the membrane in
fp32 registers; spikes are written in the input dtype.  The backward kernel saves nothing
but the input ``X``: it re-runs the charge/fire/reset loop (keeping each ``H[t]`` in
registers), then walks ``t = T-1 .. 0`` applying the surrogate gradient with
``detach_reset``::

    grad_H[t]   = grad_S[t] * sg'(H[t] - V_th) + grad_V[t] * (1 - S[t])
    grad_X[t]   = grad_H[t] / tau
    grad_V[t-1] = grad_H[t] * (1 - 1/tau)          (grad_V[T-1] = 0)

with ``sg'(u) = alpha * sigmoid(alpha u) * (1 - sigmoid(alpha u))`` (SpikingJelly's
``Sigmoid(alpha=4)``).

Memory held between forward and backward, per neuron per time step (``b`` = bytes of the
input dtype: 4 in fp32, 2 in bf16/fp16):

- autograd of the eager loop (``neuron.multistep_lif``) saves two tensors per step: the
  surrogate's input ``H[t] - V_th`` and the reset's spike mask (bool): ``b + 1`` bytes;
- this kernel saves ``X[t]`` only: ``b`` bytes.

(Counted with ``torch.autograd.graph.saved_tensors_hooks``, ``tests/nn/test_lif_triton.py``: 5 vs 4
bytes in fp32, 3 vs 2 in bf16.)  In bf16/fp16 the fp32 membrane gives the spikes of the fp32 loop
on the upcast input, not those of the eager loop's low-precision membrane.

The backward's memory traffic is the minimum, ``3b`` bytes per neuron-step (read ``X`` and
``grad_S``, write ``grad_X``): ``T`` is a constexpr, both sweeps unroll and the membranes stay
in registers, at most ``MAX_CHUNK`` steps of them (every configuration of the papers, ``T <= 16``,
is one chunk).  Longer runs go chunk by chunk from the last, re-running the steps before each
chunk from ``X``, which is then read about ``1 + (T / MAX_CHUNK - 1) / 2`` times.  An earlier
version kept ``H`` in a transient fp32 buffer: ``3b + 8`` bytes per neuron-step.  The kernels
are compiled for an H100 on the CPU by the tests (``triton.compile`` with a ``GPUTarget``),
which check that no register spills.

What the kernels gain over the LIF loop that ``torch.compile`` traces and fuses is measured on
a GPU by ``benchmarks/throughput.py`` (``fast`` against ``fast+torch``; the README's table).

Bit-exact spikes: the charge repeats ``multistep_lif``'s operation order,
``H = V + (X - (V - V_reset)) / tau``, in fp32 with each operation rounded once.  ATen
divides by a Python scalar exactly on the CPU but multiplies by the fp32 reciprocal
``1/tau`` on CUDA (``BinaryDivTrueKernel.cu``), so the kernel does the same per device:
``div_rn`` under the CPU interpreter, ``fma(d, 1/tau, 0)`` on CUDA.  The fma (exactly the
rounded product) keeps Triton's default mul+add contraction from fusing the product into
the following addition, which would round once where eager rounds twice.

``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) is read by
``triton.jit``, so the kernels are jitted on first launch, and they call Triton builtins
only: the ``triton.language.standard`` helpers (``tl.sigmoid``, ``tl.zeros``, ...) are jitted
when ``triton`` is imported and fail inside an interpreter enabled after that.  So the flag
takes effect whenever it is set before the first launch, even after ``import triton``.
"""
from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ...utils.errors import InputError

__all__ = ["multistep_lif_triton", "lif_stream", "check_device"]

BLOCK = 1024  # neurons per program: 4 warps x 32 lanes x 8 elements


def _lif_forward_kernel(x_ptr, s_ptr, v_ptr, n, T, tau, inv_tau, v_threshold, v_reset,
                        BLOCK: tl.constexpr, RECIPROCAL: tl.constexpr, STATEFUL: tl.constexpr):
    # torch.compile passes Python floats as fp64 scalars; the values are fp32-exact (_launch_args),
    # and the arithmetic must stay fp32 to round as the eager neuron does.
    tau, inv_tau = tl.cast(tau, tl.float32), tl.cast(inv_tau, tl.float32)
    v_threshold, v_reset = tl.cast(v_threshold, tl.float32), tl.cast(v_reset, tl.float32)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x_ptrs, s_ptrs = x_ptr + offs, s_ptr + offs
    # STATEFUL (a stream's call, ``lif_stream``): start from the fp32 membrane at v_ptr and leave the
    # last one there; otherwise start at rest (v_ptr unused).
    v = tl.load(v_ptr + offs, mask=mask, other=0.0) if STATEFUL else tl.full([BLOCK], v_reset, tl.float32)
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        h = v + (tl.fma(x - (v - v_reset), inv_tau, 0.0) if RECIPROCAL else tl.math.div_rn(x - (v - v_reset), tau))
        spike = (h - v_threshold) >= 0.0
        # via fp32: Triton's interpreter cannot cast int1 straight to bf16 (free on a GPU)
        tl.store(s_ptrs, spike.to(tl.float32).to(s_ptr.dtype.element_ty), mask=mask)
        v = tl.where(spike, v_reset, h)
        x_ptrs += n  # pointer steps keep offsets below 2**31 however long T * n gets
        s_ptrs += n
    if STATEFUL:
        tl.store(v_ptr + offs, v, mask=mask)


def _lif_backward_kernel(x_ptr, grad_s_ptr, grad_x_ptr, n, tau, inv_tau, v_threshold, v_reset, alpha,
                         T: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, RECIPROCAL: tl.constexpr):
    # fp32 scalars, as in the forward
    tau, inv_tau, alpha = tl.cast(tau, tl.float32), tl.cast(inv_tau, tl.float32), tl.cast(alpha, tl.float32)
    v_threshold, v_reset = tl.cast(v_threshold, tl.float32), tl.cast(v_reset, tl.float32)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    grad_v = tl.full([BLOCK], 0.0, tl.float32)
    chunks = (T + CHUNK - 1) // CHUNK  # not tl.cdiv: a jitted helper (module docstring)
    for chunk in range(chunks):  # the last chunk of steps first
        start = (chunks - 1 - chunk) * CHUNK
        # Recompute H exactly as the forward did, so the spikes seen here are the forward's: first
        # the membrane at the chunk's start (no steps when T <= CHUNK), ...
        x_ptrs, grad_s_ptrs, grad_x_ptrs = x_ptr + offs, grad_s_ptr + offs, grad_x_ptr + offs
        v = tl.full([BLOCK], v_reset, tl.float32)
        for _ in range(start):
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
            h = v + (tl.fma(x - (v - v_reset), inv_tau, 0.0) if RECIPROCAL else tl.math.div_rn(x - (v - v_reset), tau))
            v = tl.where((h - v_threshold) >= 0.0, v_reset, h)
            x_ptrs += n  # pointer steps keep offsets below 2**31 however long T * n gets
            grad_s_ptrs += n
            grad_x_ptrs += n
        # ... then the chunk's own membranes, unrolled so that they stay in registers (the tuple hs).
        hs = ()
        for i in tl.static_range(CHUNK):
            x = tl.load(x_ptrs, mask=mask & (start + i < T), other=0.0).to(tl.float32)
            h = v + (tl.fma(x - (v - v_reset), inv_tau, 0.0) if RECIPROCAL else tl.math.div_rn(x - (v - v_reset), tau))
            hs = hs + (h,)
            v = tl.where((h - v_threshold) >= 0.0, v_reset, h)
            x_ptrs += n
            grad_s_ptrs += n
            grad_x_ptrs += n
        # Reverse sweep over the chunk; past T, grad_S loads as 0, so grad_V stays 0 until step T-1.
        for i in tl.static_range(CHUNK - 1, -1, -1):
            grad_s_ptrs -= n
            grad_x_ptrs -= n
            u = hs[i] - v_threshold
            not_spike = (u < 0.0).to(tl.float32)
            sg = 1.0 / (1.0 + tl.exp(-alpha * u))
            step = mask & (start + i < T)
            grad_s = tl.load(grad_s_ptrs, mask=step, other=0.0).to(tl.float32)
            grad_h = grad_s * (alpha * sg * (1.0 - sg)) + grad_v * not_spike
            grad_d = grad_h / tau
            tl.store(grad_x_ptrs, grad_d.to(grad_x_ptr.dtype.element_ty), mask=step)
            grad_v = grad_h - grad_d


MAX_CHUNK = 16  # steps per chunk of the backward kernel: every paper configuration (T <= 16) is one chunk


def backward_blocks(T: int) -> tuple[int, int]:
    """``(CHUNK, BLOCK)`` of the backward kernel for ``T`` steps: each thread of its 4 warps keeps
    16 membranes in registers (``BLOCK / 128`` neurons times ``CHUNK`` steps), at least one neuron."""
    chunk = min(T, MAX_CHUNK)
    return chunk, min(BLOCK, max(128, 2048 // triton.next_power_of_2(chunk)))


@functools.cache
def _kernels(interpret: bool):
    """The jitted kernels; ``triton.jit`` picks the interpreter from ``TRITON_INTERPRET`` at this point."""
    del interpret  # only the cache key: a later change of the flag gets freshly jitted kernels
    return triton.jit(_lif_forward_kernel), triton.jit(_lif_backward_kernel)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _launcher(kernel):
    """``wrap_triton(kernel)``, which lets ``torch.compile`` trace the launch; an interpreted kernel
    is launched directly (nothing traces it, and torch 2.11's ``wrap_triton`` refuses it)."""
    return kernel if _interpreting() else wrap_triton(kernel)


def check_device(device: torch.device | str) -> None:
    """Raise a clear error unless the Triton kernels can run on ``device``."""
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return
    hint = " (or set TRITON_INTERPRET=1 to run them slowly in Triton's interpreter)" if device.type == "cpu" else ""
    raise RuntimeError(f"the Triton LIF backend runs on CUDA devices{hint}; got a tensor on {device.type!r}")


def _fp32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _launch_args(x: Tensor, tau: float):
    """Shared scalars: neurons per step, steps, the reciprocal ATen would use, and which charge to run."""
    # ATen's fp32 1/fp32(tau), in plain Python so tracing with fake tensors can run it: a double
    # quotient of two fp32 values rounds to the correctly rounded fp32 one (53 >= 2 * 24 + 2 bits).
    inv_tau = _fp32(1.0 / _fp32(tau))
    return x[0].numel(), x.shape[0], inv_tau, x.device.type == "cuda"


@triton_op("spikingformer::lif_forward", mutates_args=())
def lif_forward(x: Tensor, tau: float, v_threshold: float, v_reset: float, alpha: float) -> Tensor:
    """Spikes ``S[t]`` of a LIF neuron over the leading axis of a time-major dense ``x``
    (``_time_major_dense``), laid out as ``x`` is.

    ``alpha`` is unused here; it is an input so that ``_setup_context`` hands it to the backward.
    """
    check_device(x.device)  # here, not in the wrapper: dynamo cannot trace Triton's flag lookup
    spikes = torch.empty_like(x)
    n, T, inv_tau, reciprocal = _launch_args(x, tau)
    forward, _ = _kernels(_interpreting())
    _launcher(forward)[(triton.cdiv(n, BLOCK),)](
        x, spikes, spikes, n, T, tau, inv_tau, v_threshold, v_reset, BLOCK=BLOCK, RECIPROCAL=reciprocal,
        STATEFUL=False)  # v_ptr unused: the output, so that no input looks mutated to inductor's analysis
    return spikes


@triton_op("spikingformer::lif_backward", mutates_args=())
def lif_backward(x: Tensor, grad_spikes: Tensor, tau: float, v_threshold: float, v_reset: float,
                 alpha: float) -> Tensor:
    """``dL/dX`` from ``dL/dS`` with the sigmoid surrogate and a detached reset."""
    grad_x = torch.empty_like(x)
    n, T, inv_tau, reciprocal = _launch_args(x, tau)
    T = int(T)  # a constexpr of the kernel: a symbolic step count under torch.compile is specialised here
    _, backward = _kernels(_interpreting())
    chunk, block = backward_blocks(T)
    _launcher(backward)[(triton.cdiv(n, block),)](
        x, grad_spikes, grad_x, n, tau, inv_tau, v_threshold, v_reset, alpha,
        T=T, CHUNK=chunk, BLOCK=block, RECIPROCAL=reciprocal)
    return grad_x


def _setup_context(ctx, inputs, output):
    x, ctx.tau, ctx.v_threshold, ctx.v_reset, ctx.alpha = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad_spikes):
    (x,) = ctx.saved_tensors
    if grad_spikes.stride() != x.stride():  # the kernels index both flat: one layout for both
        grad_spikes = torch.empty_like(x).copy_(grad_spikes)
    grad_x = lif_backward(x, grad_spikes, ctx.tau, ctx.v_threshold, ctx.v_reset, ctx.alpha)
    return grad_x, None, None, None, None


lif_forward.register_autograd(_backward, setup_context=_setup_context)


def multistep_lif_triton(
    x: Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 4.0,
) -> Tensor:
    """Triton twin of ``neuron.multistep_lif`` (``detach_reset=True``): ``[T, ...] -> [T, ...]`` spikes.

    Takes fp32, bf16 or fp16 input of any layout; the membrane runs in fp32 whatever the input dtype.
    The spikes keep the input's layout when its steps are dense, NCHW or channels-last.
    """
    if x.dim() < 1 or len(x) == 0:
        raise InputError(f"multistep_lif_triton expects a time-major tensor [T, ...] of at least one step, "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"multistep_lif_triton takes fp32, bf16 or fp16 input, got {x.dtype}")
    return lif_forward(_time_major_dense(x), float(tau), float(v_threshold), float(v_reset), float(alpha))


def lif_stream(x: Tensor, v: Tensor | None, tau: float = 2.0, v_threshold: float = 1.0,
               v_reset: float = 0.0) -> tuple[Tensor, Tensor]:
    """The next ``T`` steps of a neuron whose fp32 membrane ``v`` (``V[-1]``; None: at rest) an
    earlier call left: ``(spikes, V[T-1])``.  Inference only (``streaming.Stream``).

    The forward kernel with its membrane loaded and stored, so a stream of calls emits the spikes of
    ``multistep_lif_triton`` on the whole sequence, bit for bit.  ``v`` may be updated in place.
    """
    if x.dim() < 1 or len(x) == 0:
        raise InputError(f"lif_stream expects a time-major tensor [T, ...] of at least one step, "
                         f"got shape {tuple(x.shape)}")
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("lif_stream is inference only (no backward): run it under torch.no_grad()")
    check_device(x.device)
    x = _time_major_dense(x)
    if v is None:
        v = torch.full_like(x[0], v_reset, dtype=torch.float32)
    elif v.shape != x.shape[1:] or v.dtype != torch.float32:
        raise InputError(f"the membrane must be fp32 {tuple(x.shape[1:])}, got {v.dtype} {tuple(v.shape)}")
    elif v.stride() != x[0].stride():  # one flat index for both: the membrane follows the steps' layout
        v = torch.empty_like(x[0], dtype=torch.float32).copy_(v)
    spikes = torch.empty_like(x)
    n, T, inv_tau, reciprocal = _launch_args(x, tau)
    forward, _ = _kernels(_interpreting())
    forward[(triton.cdiv(n, BLOCK),)](x, spikes, v, n, T, float(tau), inv_tau, float(v_threshold), float(v_reset),
                                      BLOCK=BLOCK, RECIPROCAL=reciprocal, STATEFUL=True)
    return spikes, v


def _time_major_dense(x: Tensor) -> Tensor:
    """``x`` itself when every step ``x[t]`` is one dense block (NCHW or channels-last) and the steps
    follow each other, else a contiguous copy.

    The kernels index flat, so any such layout works, and ``empty_like`` gives the spikes the same
    one.  Keeping it matters under the fast path: spikes that stay channels-last reach the next
    convolution as it wants them, where a contiguous copy made cuDNN's backward convert every
    gradient back (``grad_output.to(input.suggest_memory_format())``).
    """
    step = x[0]
    dense = step.is_contiguous() or (step.dim() == 4 and step.is_contiguous(memory_format=torch.channels_last))
    return x if dense and (x.shape[0] == 1 or x.stride(0) == step.numel()) else x.contiguous()
