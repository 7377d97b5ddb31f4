"""Online inference: a vision model fed its input as it arrives, a time step (or a few) per call.

Training and ``forward`` see all ``T`` steps at once and every neuron starts each call from rest.
A sensor delivers event frames one at a time, and an answer may be wanted before the last one.
Inside ``Stream(model)`` every neuron keeps its membrane between calls, and each call returns the
read-out of all the steps seen so far:

    with Stream(model) as stream:
        for frame in frames:                # [B, C, H, W] per step, or [t, B, C, H, W] chunks
            logits = stream(frame)          # the read-out of the steps seen so far

Every layer but the neurons works on each time step alone (convolutions, BatchNorm in eval mode,
pools, the attention product of SPEC §4, the head's token average), so after ``t`` steps the
logits equal ``model.forward_steps(x)[t - 1]`` for the whole sequence ``x``, and after ``T``
steps of a repeated image they equal ``model(image)`` (tested, up to float rounding).  Each
neuron streams on its backend: the PyTorch loop, or the Triton forward kernel (``kernels.lif_stream``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models._base import SpikingVisionModel
from ..nn.neuron import MultiStepLIF
from ..utils.errors import InputError

__all__ = ["Stream"]


class Stream:
    """``model`` in eval mode with stateful neurons, for the length of a ``with`` block.  Only the
    stream's calls use and move the membranes: ``model(x)`` inside the block runs as ever."""

    def __init__(self, model: nn.Module):
        model = getattr(model, "_orig_mod", model)  # a torch.compile'd model streams its module, eagerly
        if not isinstance(model, SpikingVisionModel):
            raise TypeError(f"Stream runs the vision models (Spikingformer, Spikformer V1/V2), not a "
                            f"{type(model).__name__}")
        self.model = model
        self.neurons = [m for m in model.modules() if isinstance(m, MultiStepLIF)]
        self.steps, self._pooled, self._shape, self._open, self._was_training = 0, None, None, False, False

    def __enter__(self) -> Stream:
        if getattr(self.model, "_open_stream", None) is not None:  # the membranes live in the model's neurons
            raise RuntimeError("this model is already streaming (one open Stream per model)")
        self.model._open_stream, self._open, self._was_training = self, True, self.model.training
        self.model.eval()
        self.reset()
        return self

    def __exit__(self, *exc) -> None:
        self.reset()
        self.model._open_stream, self._open = None, False
        self.model.train(self._was_training)

    def reset(self) -> None:
        """Start a new stream: every neuron back at rest, no steps seen."""
        for m in self.neurons:
            m.membrane = None
        self.steps, self._pooled, self._shape = 0, None, None

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """The next step ``[B, C, H, W]`` or steps ``[t, B, C, H, W]`` -> logits ``[B, classes]`` of all so far."""
        if not self._open:
            raise RuntimeError("use the stream inside `with Stream(model) as stream:`")
        if isinstance(x, Tensor) and x.dim() == 4:
            x = x.unsqueeze(0)
        if self._shape is not None and isinstance(x, Tensor) and x.shape[1:] != self._shape:
            raise InputError(f"this stream's steps are [B, C, H, W] = {tuple(self._shape)}, got "
                             f"{tuple(x.shape[1:])}: stream.reset() starts a stream of other samples")
        for m in self.neurons:
            m.streaming = True
        try:
            pooled = self.model.head.pool_steps(self.model.forward_features(x)).sum(0)
        finally:
            for m in self.neurons:
                m.streaming = False
        self._shape = x.shape[1:]
        self._pooled = pooled if self._pooled is None else self._pooled + pooled
        self.steps += x.shape[0]
        return self.model.head.finish(self._pooled / self.steps)
