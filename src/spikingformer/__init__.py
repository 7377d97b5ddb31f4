"""spikingformer: spike-driven transformer SNNs on PyTorch (Spikingformer, Spikformer V1/V2)."""
from .models import create_model, list_models, register_with_timm
from .neuron import MultiStepLIF, multistep_lif

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "MultiStepLIF", "multistep_lif", "__version__"]

register_with_timm()
