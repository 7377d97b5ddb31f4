"""Model families.  Importing this package registers every named model, vision and text."""
# registration side effects; SEW ResNet needs spikingjelly to build, not to be listed
from . import ms_resnet, qkformer, sd_transformer, sew_resnet, spikformer, spikingformer, text  # noqa: F401
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
