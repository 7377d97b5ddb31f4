"""``hubconf.py``: ``torch.hub`` builds every named model from a checkout."""
import importlib.util
from pathlib import Path

import pytest
import torch

import spikingformer as sf

REPO = Path(__file__).resolve().parents[1]


def test_hub_entry_points_are_the_named_models():
    """What ``torch.hub.list`` offers from GitHub: the hubconf's public callables."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted(sf.list_models())
    assert "create_model('spikformer_v2_8_512'" in hubconf.spikformer_v2_8_512.__doc__


def test_hub_builds_a_model_with_overrides():
    model = torch.hub.load(str(REPO), "spikingformer_4_256", source="local", trust_repo=True,
                           depth=1, dim=32, num_heads=4, num_classes=3, T=2)
    assert (model.T, model.cfg.dim, model.cfg.num_classes) == (2, 32, 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="publishes no trained weights"):
        torch.hub.load(str(REPO), "spikingformer_4_256", source="local", trust_repo=True, pretrained=True)
