"""The fast path: what makes these models train and infer quickly on a GPU.

Measured choices (see ``benchmarks/throughput.py`` and the README's performance section):

- ``torch.compile`` of the whole model.  The LIF loop (SPEC §2) is plain tensor code with
  no Python-side state, so inductor unrolls it over ``T`` and fuses every step with the
  BatchNorm before it and the reshapes after it: one kernel where eager runs a dozen.
  On an H100 the whole-model graph ran faster than compiling region by region (blocks
  sharing one graph), which in turn compiles in about half the time (``regional=True``).
- bf16 autocast.  Spikes are exactly 0/1 in bf16 too, so only the membrane arithmetic
  and the matmuls lose precision, as with any mixed-precision training.
- channels-last convolutions, and the fused AdamW kernel.

On the CPU the same switches work (compile uses inductor's C++ backend) but are off by
default: there the eager path is the dependable one.  In fp32 the fast path emits the same
spikes as the eager path (tested).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FastPath", "default_fast_path"]


@dataclass(frozen=True)
class FastPath:
    """Switches of the fast path; ``FastPath.off()`` is the plain eager path."""

    compile: bool = True
    compile_mode: str | None = None        # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    regional: bool = False                 # compile top-level regions (faster compile, slower run)
    amp_dtype: torch.dtype | None = torch.bfloat16
    channels_last: bool = True
    fused_optimizer: bool = True

    @classmethod
    def off(cls) -> "FastPath":
        return cls(compile=False, amp_dtype=None, channels_last=False, fused_optimizer=False)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Lay out and compile ``model`` for speed; returns the module to call.

        Regional compilation works in place (``nn.Module.compile``), so the returned module
        is ``model`` itself and its ``state_dict`` keys are unchanged.
        """
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not self.compile:
            return model
        if not self.regional:
            return torch.compile(model, mode=self.compile_mode)
        for child in model.children():
            for region in (child if isinstance(child, nn.ModuleList) else [child]):
                region.compile(mode=self.compile_mode)
        return model

    def autocast(self, device: torch.device | str):
        """Autocast context for the forward pass (a no-op when ``amp_dtype`` is None)."""
        device_type = torch.device(device).type
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.amp_dtype)

    def adamw(self, params, **kwargs) -> torch.optim.AdamW:
        """AdamW; with ``fused_optimizer`` one fused kernel updates every parameter (CUDA and CPU)."""
        return torch.optim.AdamW(params, fused=self.fused_optimizer or None, **kwargs)


def default_fast_path(device: torch.device | str) -> FastPath:
    """The fast path is the default on CUDA; elsewhere the eager path is."""
    return FastPath() if torch.device(device).type == "cuda" else FastPath.off()
