"""Model families.  Importing this package registers every named model, vision and text."""
from . import qkformer, sd_transformer, spikformer, spikingformer, text  # noqa: F401  (registration side effect)
from . import resnet  # noqa: F401  (registration side effect; SEW ResNet needs spikingjelly to build, not to list)
from ._registry import (
    MODALITIES,
    PaperFacts,
    Reported,
    create_model,
    list_models,
    model_modality,
    paper_facts,
    register_with_timm,
)
from .qkformer import QKFormer, QKFormerConfig
from .sd_transformer import SDTransformer, SDTransformerConfig
from .spikformer import Spikformer, SpikformerConfig
from .spikingformer import Spikingformer, SpikingformerConfig
from .text import SpikingformerText, TextConfig

__all__ = ["create_model", "list_models", "model_modality", "paper_facts", "PaperFacts", "Reported", "MODALITIES",
           "register_with_timm",
           "Spikingformer", "SpikingformerConfig", "Spikformer", "SpikformerConfig", "SDTransformer",
           "SDTransformerConfig", "QKFormer", "QKFormerConfig", "SpikingformerText", "TextConfig"]
