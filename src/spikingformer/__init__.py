"""spikingformer: spike-driven transformer SNNs on PyTorch (Spikingformer, Spikformer V1/V2)."""
from .analysis.energy import estimate_energy
from .analysis.probe import SynapticProbe
from .analysis.verify import verify_model
from .deploy.fold import fold_bn
from .deploy.streaming import Stream
from .models import create_model, list_models, model_modality, paper_facts, register_with_timm
from .nn.fast import FastPath
from .nn.neuron import MultiStepLIF, multistep_lif
from .weights.loading import load_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_modality", "paper_facts", "load_model", "MultiStepLIF", "multistep_lif", "SynapticProbe",
           "estimate_energy", "verify_model", "fold_bn", "FastPath", "Stream", "__version__"]

register_with_timm()
