"""The public model API: registry, overrides, input checks, timm."""
import importlib.util

import pytest
import torch

import spikingformer as sf
from spikingformer.analysis.probe import SynapticProbe


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'spikingformer_9_999'.*spikingformer_8_512"):
        sf.create_model("spikingformer_9_999")


def test_one_registry_holds_the_text_models_too():
    """The README's model table lists the text models beside the vision ones: create_model builds both, and
    the modality tells them apart, so that `train` (which feeds images) names the commands that train text."""
    from spikingformer.models.text import SpikingformerText
    from spikingformer.train.config import ConfigError, TrainConfig

    assert isinstance(sf.create_model("spikingformer_text_2_128", depth=1, dim=32, num_heads=2), SpikingformerText)
    assert sf.list_models("spikingformer_text_*") == sf.list_models(modality="text") != []
    with pytest.raises(ConfigError, match="spikingformer_text_2_128 is a text model: `spikingformer mlm`"):
        TrainConfig(model="spikingformer_text_2_128")
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        sf.list_models(modality="audio")


def test_bad_override_lists_valid_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['depht'\].*depth"):
        sf.create_model("spikingformer_4_384", depht=2)


@pytest.mark.parametrize("kw,msg", [
    (dict(dim=100), "multiple of 8"), (dict(dim=-8), "positive multiple of 8"), (dict(num_heads=7), "divide dim"),
    (dict(num_heads=0), "num_heads must be >= 1"), (dict(num_heads=-2), "num_heads must be >= 1"),
    (dict(mlp_ratio=0.001), "no hidden unit"), (dict(in_chans=0), "in_chans must be >= 1"),
    (dict(num_classes=-1), "num_classes >= 0"), (dict(tau=float("nan")), "tau must be > 1"),
    (dict(head="softmax"), "unknown head"), (dict(T=0), "T and depth")])
@pytest.mark.parametrize("name", ["spikingformer_4_384", "spikformer_4_384", "spikformer_v2_8_384"])
def test_bad_config_values(name, kw, msg):
    """Refused as the model is built, naming the option (not a ZeroDivisionError, nor a failure at forward)."""
    with pytest.raises(ValueError, match=msg):
        sf.create_model(name, **kw)


def test_cml_needs_the_pools_of_the_sps_stem():
    with pytest.raises(ValueError, match="cml moves the max-pools of the SPS stem"):
        sf.create_model("spikformer_v2_8_384", cml=True)


@pytest.mark.parametrize("kw,msg", [
    (dict(depth="2"), "option 'depth' expects int, got '2'"), (dict(depth=2.0), "'depth' expects int"),
    (dict(cml=2), "'cml' expects bool"), (dict(head=3), "'head' expects str"),
    (dict(downsample=[0, 0, 1, 2]), r"'downsample' expects tuple\[bool, bool, bool, bool\]"),
    (dict(downsample=[True]), "'downsample' expects tuple"),
])
def test_wrongly_typed_option_is_named(kw, msg):
    with pytest.raises(TypeError, match=msg):
        sf.create_model("spikingformer_dagger_4_384", **kw)


def test_options_of_numeric_kin_are_taken_as_plain_python():
    """numpy scalars (``labels.max() + 1``), 0/1 flags and YAML lists: accepted and stored as the field's type."""
    import numpy as np

    m = sf.create_model("spikingformer_4_256", depth=np.int64(1), num_classes=np.int64(7), tau=np.float32(1.5),
                        mlp_ratio=2, cml=1, downsample=[0, 1, True, np.bool_(True)])
    cfg = m.cfg
    assert (cfg.depth, cfg.num_classes, cfg.tau, cfg.mlp_ratio, cfg.cml) == (1, 7, 1.5, 2.0, True)
    assert [type(v) for v in (cfg.depth, cfg.num_classes, cfg.tau, cfg.mlp_ratio, cfg.cml)] == [int, int, float,
                                                                                                 float, bool]
    assert cfg.downsample == (False, True, True, True) and m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_overrides_apply():
    m = sf.create_model("spikingformer_4_384", num_classes=100, depth=2, T=2)
    assert m.head.fc.out_features == 100 and len(m.blocks) == 2 and m.T == 2


@pytest.mark.parametrize("shape,msg", [
    ((3, 32, 32), "rank 3"),
    ((2, 1, 3, 4, 32, 32), "rank 6"),
    ((2, 1, 32, 32), "3 input channels, got 1"),
    ((2, 3, 30, 32), "multiple of the tokenizer's patch size 4"),
    ((2, 3, 2, 2), "multiple"),
])
def test_bad_input_fails_before_any_compute(shape, msg):
    model = sf.create_model("spikingformer_4_384", depth=1)
    with SynapticProbe(model) as probe, pytest.raises(ValueError, match=msg):
        model(torch.randn(shape))
    assert not probe.layers  # nothing ran


def test_imagenet_model_needs_multiple_of_16():
    model = sf.create_model("spikformer_v2_8_384", depth=1)
    with pytest.raises(ValueError, match="patch size 16"):
        model(torch.randn(1, 3, 40, 40))


def test_reset_classifier():
    m = sf.create_model("spikingformer_4_256", depth=1)
    m.reset_classifier(3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384"])
def test_forward_features_and_head(name):
    """As timm's: ``forward_features`` takes what ``forward`` takes, images included."""
    m = sf.create_model(name, depth=1, T=3)
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (3, 2, 64, m.cfg.dim)  # [T, B, N, D]: 8x8 tokens
    assert torch.equal(feats, m.forward_features(torch.stack([x] * 3)))  # the same as a [T, B, ...] sequence
    assert m.forward_head(feats).shape == (2, 10)
    with pytest.raises(ValueError, match="3 input channels, got 6"):
        m.forward_features(torch.randn(2, 6, 32, 32))


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
def test_registered_with_timm():
    import timm

    assert set(sf.list_models(modality="vision")) <= set(timm.list_models())  # not all "spik*": sew_resnet34
    assert not set(sf.list_models(modality="text")) & set(timm.list_models())  # timm's tools feed images
    m = timm.create_model("spikingformer_4_256", num_classes=5, depth=1)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("spikingformer_4_256", pretrained=True)


@pytest.mark.parametrize("name", ["spikingformer_4_384", "spikformer_4_384", "spikformer_v2_8_384"])
def test_an_empty_batch_gives_empty_logits_and_a_clear_energy_error(name):
    model = sf.create_model(name, depth=1, dim=64, num_heads=2, T=2, img_size=32).eval()
    assert model(torch.randn(0, 3, 32, 32)).shape == (0, model.num_classes)
    with pytest.raises(ValueError, match="no input: give at least one non-empty batch"):
        sf.estimate_energy(model, torch.randn(0, 3, 32, 32))
    with pytest.raises(RuntimeError, match="on a non-empty batch"):
        sf.verify_model(model, torch.randn(0, 3, 32, 32))


def test_input_of_another_dtype_is_named():
    model = sf.create_model("spikingformer_4_384", depth=1, dim=64, num_heads=2, T=2)
    with pytest.raises(TypeError, match="input is torch.float64 but Spikingformer's weights are torch.float32"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="expects floating-point input, got torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the model: allowed
        assert model(torch.randn(1, 3, 32, 32)).dtype == torch.bfloat16
