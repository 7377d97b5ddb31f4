"""SEW ResNet weights trained with the official code (fangwei123456/Spike-Element-Wise-ResNet), renamed for
``models.sew_resnet``.

The official ImageNet model (``imagenet/sew_resnet.py``, SpikingJelly's old ``clock_driven`` API) wraps each
block's conv and BatchNorm in one ``SeqToANNContainer``; SpikingJelly 2.0's ``sew_resnet``, which our
``SEWResNet`` is, keeps them apart:

- ``conv1.weight``, ``bn1.*`` (the stem, outside any container): the same names;
- ``layer{i}.{j}.conv{k}.module.0.weight`` / ``.module.1.*``: ``layer{i}.{j}.conv{k}.weight`` / ``.bn{k}.*``;
- ``layer{i}.{j}.downsample.0.module.{0,1}.*`` (its 1x1 conv, its BN; ``downsample.1`` is the IF neuron):
  ``layer{i}.{j}.downsample.{0,1}.*`` (the neuron is ``downsample_sn`` here);
- ``fc.*``: ``head.fc.*``.

The IF neurons and the pools hold no tensors.  Telling the layout apart: a block conv inside a container,
``layer{i}.{j}.conv1.module.0.weight``, is this repository's alone; ours and SpikingJelly 2.0's name it
``layer{i}.{j}.conv1.weight``, and no other official layout (``official.py``: ``patch_embed.``, ``block.``) has
``layer`` keys.
"""
from __future__ import annotations

import re

from torch import Tensor

from ..utils.errors import OfficialWeightsError
from .renames import rename

__all__ = ["FAMILY", "SOURCE", "is_layout", "convert"]

FAMILY = "sew_resnet"
SOURCE = "fangwei123456/Spike-Element-Wise-ResNet: imagenet/sew_resnet.py"

_CONTAINED_CONV = re.compile(r"layer\d+\.\d+\.conv1\.module\.0\.weight")
_RULES = [  # (official key, our key)
    (r"(conv1\.weight|bn1\.\w+)", r"\1"),
    (r"(layer\d+\.\d+)\.conv([123])\.module\.0\.weight", r"\1.conv\2.weight"),
    (r"(layer\d+\.\d+)\.conv([123])\.module\.1\.(\w+)", r"\1.bn\2.\3"),
    (r"(layer\d+\.\d+)\.downsample\.0\.module\.([01])\.(\w+)", r"\1.downsample.\2.\3"),
    (r"fc\.(weight|bias)", r"head.fc.\1"),
]


def is_layout(state: dict) -> bool:
    """True for a state_dict in the official SEW ResNet names: a block conv inside a ``SeqToANNContainer``."""
    return any(isinstance(k, str) and _CONTAINED_CONV.fullmatch(k) for k in state)


def convert(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """``(our_state, notes)`` for an official SEW ResNet ``state``; raises ``OfficialWeightsError`` naming every
    key no rule maps.  Nothing is dropped or reshaped (no notes)."""
    unknown = [k for k in state if rename(k, _RULES) is None]
    if unknown:
        raise OfficialWeightsError(f"{len(unknown)} key(s) of the SEW ResNet layout that no rule maps: "
                                   f"{', '.join(unknown)}")
    return {rename(k, _RULES): v for k, v in state.items()}, []
