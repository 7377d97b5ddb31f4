"""Spiking primitives: the multistep LIF neuron (Eq. 1-3), the layers the models are built of, the fast path
and the optional Triton kernels.  Imports nothing of the package above it."""
from .fast import FastPath
from .neuron import MultiStepLIF, multistep_lif

__all__ = ["FastPath", "MultiStepLIF", "multistep_lif"]
