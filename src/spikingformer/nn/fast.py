"""The fast path: what makes these models train and infer quickly on a GPU.

Measured choices (``benchmarks/throughput.py``; the README's performance section has the table):

- The hand-written Triton LIF kernels of ``spikingformer.nn.kernels`` for every neuron
  (``lif_backend="auto"`` picks them on CUDA when the model is compiled).  Against the LIF loop
  traced and fused by inductor they trained 1.3-1.5x faster on an H100 and compiled in half
  the time, for a higher peak memory (9.2 against 7.1 GiB at batch 256; the reference takes
  13.0); the spikes are the same (tested).
- ``torch.compile`` of the whole model: the BatchNorms, pools, residual adds and attention
  reshapes between the neurons fuse into few kernels.
- bf16 autocast.  Spikes are exactly 0/1 in bf16 too; the kernels keep the membrane in fp32.
- channels-last convolutions, and the fused AdamW kernel.
- CUDA graphs (``compile_mode="reduce-overhead"`` or ``"max-autotune"``), off by default: at
  batch 256 they gained 2 %.  A graph replay overwrites the outputs of the previous one, so a
  training loop marks where each iteration starts: call ``path.step_begin()`` once per
  iteration, before the forward (a no-op for the other modes)::

      for x, y in loader:
          path.step_begin()
          with path.autocast(device):
              loss = loss_fn(model(x), y)
          ...

On the CPU the same switches work (compile uses inductor's C++ backend, the neurons stay the
PyTorch loop) but are off by default: there the eager path is the dependable one.  In fp32
the fast path emits the same spikes as the eager path (tested).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from ..utils.errors import InputError
from .neuron import LIF_BACKENDS, MultiStepLIF

__all__ = ["FastPath", "FAST_MODES", "AMP_MODES", "COMPILE_MODES", "LIF_BACKEND_MODES", "amp_dtype",
           "resolve_lif_backend"]

FAST_MODES = ("auto", "on", "off")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # "": torch's default
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
AMP_MODES = ("auto", "bf16", "fp16", "off")
LIF_BACKEND_MODES = ("auto",) + LIF_BACKENDS


def amp_dtype(amp: str, device: torch.device | str) -> torch.dtype | None:
    """``None`` (fp32) or the autocast dtype.  ``auto``: bf16 on CUDA devices that compute in it
    (compute capability 8.0 and up: A100, H100, RTX 30xx and later); fp16, which the engines pair with
    a loss-scaling ``GradScaler``, on older ones (V100, T4), where bf16 is emulated and slow; fp32 on
    the CPU, where autocast is slow too."""
    if amp == "auto":
        device = torch.device(device)
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def resolve_lif_backend(mode: str, compiled: bool, device: torch.device | str) -> str:
    """The neurons' backend for ``mode`` in ``LIF_BACKEND_MODES``: ``auto`` is the Triton kernels
    for a compiled model on CUDA (where they were measured fastest) and the PyTorch loop otherwise."""
    if mode not in LIF_BACKEND_MODES:
        raise InputError(f"lif_backend must be one of {', '.join(LIF_BACKEND_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    cuda = torch.device(device).type == "cuda"
    return "triton" if compiled and cuda and importlib.util.find_spec("triton") is not None else "torch"


def _compiles_on(device: torch.device | str) -> bool:
    """Whether ``fast: auto`` is on: CUDA devices that Triton, and so inductor, generates code for
    (compute capability 7.0 and up), where Triton is installed (PyTorch's Windows wheels lack it).
    An older GPU, such as a P100, or a machine without Triton trains on the eager path."""
    device = torch.device(device)
    return (device.type == "cuda" and importlib.util.find_spec("triton") is not None
            and torch.cuda.get_device_capability(device) >= (7, 0))


@dataclass(frozen=True)
class FastPath:
    """Switches of the fast path; ``FastPath.off()`` is the plain eager path."""

    compile: bool = True
    compile_mode: str | None = None        # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    amp_dtype: torch.dtype | None = torch.bfloat16
    channels_last: bool = True
    fused_optimizer: bool = True
    lif_backend: str | None = "auto"       # neurons: auto (resolve_lif_backend) | torch | triton | None: as built

    def __post_init__(self):
        if self.lif_backend is not None:
            resolve_lif_backend(self.lif_backend, self.compile, "cpu")  # validates

    @property
    def cudagraphs(self) -> bool:
        """Whether the compiled model replays CUDA graphs (and so needs ``step_begin``): the two
        ``torch.compile`` modes that turn them on (``max-autotune-no-cudagraphs`` does not)."""
        return self.compile and self.compile_mode in CUDAGRAPH_MODES

    def step_begin(self) -> None:
        """Mark the start of a training or inference iteration; call it before each forward.

        With CUDA graphs the previous iteration's outputs live in memory the next replay
        overwrites; marking the step tells the graph tree that they are no longer needed
        (without it: "accessing tensor output of CUDAGraphs that has been overwritten").
        """
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()

    @classmethod
    def off(cls) -> "FastPath":
        return cls(compile=False, amp_dtype=None, channels_last=False, fused_optimizer=False, lif_backend=None)

    @classmethod
    def from_modes(cls, fast: str, amp: str, device: torch.device | str, compile_mode: str = "",
                   lif_backend: str = "auto") -> "FastPath":
        """The path a config asks for: ``fast`` in ``FAST_MODES`` (``auto``: on exactly on CUDA, from Volta on),
        ``amp`` in ``AMP_MODES`` (independent of ``fast``, so the eager path can run in bf16),
        ``compile_mode`` in ``COMPILE_MODES`` and the neurons' ``lif_backend`` in ``LIF_BACKEND_MODES``."""
        if fast not in FAST_MODES:
            raise InputError(f"fast must be one of {', '.join(FAST_MODES)}, got {fast!r}")
        if compile_mode not in COMPILE_MODES:
            raise InputError(f"compile_mode must be one of {', '.join(map(repr, COMPILE_MODES))}, got {compile_mode!r}")
        on = _compiles_on(device) if fast == "auto" else fast == "on"
        base = cls() if on else cls.off()
        return dataclasses.replace(base, amp_dtype=amp_dtype(amp, device), compile_mode=compile_mode or None,
                                   lif_backend=lif_backend)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Lay out and compile ``model`` for speed; returns the module to call.

        Every ``MultiStepLIF`` is switched in place to the backend ``lif_backend`` resolves to on
        the model's device (unless it is None).
        """
        neurons = [m for m in model.modules() if isinstance(m, MultiStepLIF)]
        device = next(model.parameters(), torch.empty(0)).device
        if self.lif_backend is not None:
            backend = resolve_lif_backend(self.lif_backend, self.compile, device)
            for m in neurons:
                m.backend = backend
        if any(m.backend == "triton" for m in neurons):
            from .kernels import check_device

            check_device(device)
            if self.compile and device.type != "cuda":
                raise InputError("torch.compile cannot trace the Triton interpreter: compile the "
                                 "triton LIF backend on CUDA, or use compile=False on the CPU")
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not self.compile:
            return model
        return torch.compile(model, mode=self.compile_mode)

    def describe(self) -> str:
        """How a run computes, for its first log line: ``compiled, bf16 autocast``, ``eager, fp32``, ..."""
        how = "eager" if not self.compile else f"compiled ({self.compile_mode})" if self.compile_mode else "compiled"
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        return f"{how}, {precision}"

    def autocast(self, device: torch.device | str):
        """Autocast context for the forward pass (a no-op when ``amp_dtype`` is None)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Lay an image batch out as the prepared model expects it."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def adamw(self, params, **kwargs) -> torch.optim.AdamW:
        """AdamW; with ``fused_optimizer`` one fused kernel updates every parameter (CUDA and CPU)."""
        return torch.optim.AdamW(params, fused=self.fused_optimizer or None, **kwargs)
