"""spikingformer: spike-driven transformer SNNs on PyTorch (Spikingformer, Spikformer V1/V2)."""
from .deploy import fold_bn
from .energy import estimate_energy
from .fast import FastPath
from .loading import load_model
from .models import create_model, list_models, register_with_timm
from .neuron import MultiStepLIF, multistep_lif
from .probe import SynapticProbe
from .streaming import Stream
from .verify import verify_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_model", "MultiStepLIF", "multistep_lif", "SynapticProbe",
           "estimate_energy", "verify_model", "fold_bn", "FastPath", "Stream", "__version__"]

register_with_timm()
