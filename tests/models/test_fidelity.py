"""The paper's facts about the models: parameter counts, which tensors are spikes, invariances."""
import pytest
import torch

import spikingformer as sf
from spikingformer.cli import SPEC_PARAMS_M
from spikingformer.probe import SynapticProbe

from ..helpers import calibrate_bn

SPIKINGFORMERS = sf.list_models("spikingformer_*")
SPIKFORMERS = sf.list_models("spikformer_*")


def small_input(model, batch=2):
    """The native size up to 128x128; ImageNet models get 64x64 (16 tokens) to stay cheap on CPU."""
    size = model.cfg.img_size if model.cfg.img_size <= 128 else 4 * model.patch_size
    return torch.randn(batch, model.cfg.in_chans, size, size)


def test_list_models_gives_spec_names():
    assert sf.list_models() == sorted(SPEC_PARAMS_M)


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS_M))
def test_parameter_count_matches_paper(name):
    with torch.device("meta"):  # counts only: no memory, no init cost
        model = sf.create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - SPEC_PARAMS_M[name]) / SPEC_PARAMS_M[name] < 0.005, n


@pytest.mark.parametrize("name", ["spikingformer_4_384", "spikingformer_8_512", "spikformer_4_384"])
def test_dagger_has_the_same_parameters(name):
    dagger = name.replace("spikingformer_", "spikingformer_dagger_")
    if dagger not in sf.list_models():
        pytest.skip("no dagger variant")
    with torch.device("meta"):
        a, b = sf.create_model(name), sf.create_model(dagger)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


@pytest.mark.parametrize("name", SPIKINGFORMERS)
def test_spikingformer_is_spike_driven(name):
    model = sf.create_model(name, depth=2, T=2).train()
    with SynapticProbe(model) as probe, torch.no_grad():
        model(small_input(model))
    layers = probe.ordered
    enc = probe.encoding_layer
    assert enc.name == "tokenizer.encode.conv" and enc.kind == "real"
    assert len(layers) > 10
    for rec in layers[1:]:
        if rec.readout:
            continue
        for stats in rec.inputs:
            assert stats.binary, f"{rec.name} received {stats.kind} values {sorted(stats.distinct)[:5]}"
    # not vacuous: the spikes are neither all zero nor all one
    rates = [s.firing_rate for r in layers[1:] if not r.readout for s in r.inputs]
    assert max(rates) < 1 and sum(r > 0.01 for r in rates) > len(rates) // 2
    assert probe.spike_driven


@pytest.mark.parametrize("name", SPIKFORMERS)
def test_spikformer_feeds_integers_into_linears(name):
    model = sf.create_model(name, depth=2, T=2).train()
    with SynapticProbe(model) as probe, torch.no_grad():
        model(small_input(model))
    bad = probe.violations
    assert not probe.spike_driven and bad
    assert all(r.kind == "integer" for r in bad)  # SEW residual: sums of spikes, never reals
    assert any(max(s.distinct) >= 2 for r in bad for s in r.inputs)
    assert all(isinstance(r.module, torch.nn.Linear) for r in bad)


@pytest.mark.parametrize("name", ["spikingformer_4_384", "spikingformer_dagger_8_512", "spikformer_4_384",
                                  "spikformer_v2_8_384", "spikingformer_dvs_2_256"])
def test_eval_logits_do_not_depend_on_the_rest_of_the_batch(name):
    model = sf.create_model(name, depth=1, T=2)
    x = small_input(model, batch=6)
    calibrate_bn(model, x)
    with torch.no_grad():
        alone = model(x[:1])
        together = model(x)
        shuffled = model(x.flip(0))
    assert alone.abs().sum() > 0
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.flip(0), together, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikingformer_dagger_4_384", "spikformer_4_384",
                                  "spikformer_v2_8_384", "spikingformer_dvs_2_256"])
def test_backward_reaches_every_parameter(name):
    model = sf.create_model(name, depth=1, T=2, num_classes=5).train()
    x = small_input(model, batch=4)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(4) % 5)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_sequence_input_is_time_major():
    model = sf.create_model("spikingformer_dvs_2_256", depth=1, img_size=32).eval()
    seq = torch.rand(5, 3, 2, 32, 32)
    assert model(seq).shape == (3, 10)
    # a static image equals the same image repeated T times as a sequence
    img = torch.rand(3, 2, 32, 32)
    torch.testing.assert_close(model(img), model(img.unsqueeze(0).repeat(model.T, 1, 1, 1, 1)))


@pytest.mark.parametrize("head", ["avgpool_fc", "sn_avgpool_fc", "fc_avgpool", "sn_fc_avgpool"])
def test_heads_of_eq_15_to_18(head):
    model = sf.create_model("spikingformer_4_256", depth=1, head=head, num_classes=7).train()
    x = small_input(model)
    with SynapticProbe(model) as probe:
        out = model(x)
    assert out.shape == (2, 7)
    fc = probe.layers["head.fc"]
    assert fc.readout
    if head == "sn_fc_avgpool":  # Eq. 18: the only head whose FC sees spikes
        assert fc.kind == "spike"
    else:
        assert fc.kind == "real"
