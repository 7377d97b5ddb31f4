"""Model families.  Importing this package registers every named model."""
from . import spikformer, spikingformer  # noqa: F401  (registration side effect)
from ._registry import create_model, list_models, register_with_timm
from .spikformer import Spikformer, SpikformerConfig
from .spikingformer import Spikingformer, SpikingformerConfig

__all__ = ["create_model", "list_models", "register_with_timm",
           "Spikingformer", "SpikingformerConfig", "Spikformer", "SpikformerConfig"]
