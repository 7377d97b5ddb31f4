"""``torch.hub`` entry points: every model of ``spikingformer.list_models()``, by name.

    model = torch.hub.load("<owner>/spikingformer", "spikingformer_8_512", num_classes=100, T=4)

Keyword arguments override the model's config, as with ``spikingformer.create_model``.  No trained
weights are published: train with ``spikingformer train`` and load a run with ``spikingformer.load_model``.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "src"))  # a hub checkout is not installed

import spikingformer as _sf  # noqa: E402

dependencies = ["torch"]


def _entry(name: str):
    def build(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError("spikingformer publishes no trained weights; load a checkpoint with "
                             "spikingformer.load_model(path)")
        return _sf.create_model(name, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"``spikingformer.create_model({name!r}, **kwargs)``: kwargs override its config."
    return build


globals().update({name: _entry(name) for name in _sf.list_models()})
