"""The text Spikingformer: shapes, spike-driven synapses, padding invariance, gradients, its registry entries."""
from __future__ import annotations

import pytest
import torch

from spikingformer import create_model, list_models, model_modality
from spikingformer.analysis.energy import estimate_energy
from spikingformer.analysis.probe import SynapticProbe
from spikingformer.models.text import MaskedLinearBN, SpikingformerText
from spikingformer.nn.layers import LinearBN

TINY = dict(vocab_size=50, dim=32, num_heads=4, max_len=24, T=2)
# The default attention scale 0.125 keeps SN_attn silent at init in a model this small; wider heads and
# scale 1 make it fire, so tokens really mix through Q K^T V (where padding could leak) and proj learns.
MIXING = dict(num_heads=2, attn_scale=1.0)


def tiny(head="sequence", **kw):
    return create_model("spikingformer_text_2_128", head=head, **{**TINY, **kw})


def batch(b=3, n=10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (b, n), generator=g)
    segs = (torch.arange(n) >= n // 2).long().expand(b, n).clone()
    return ids, segs


def pad(ids, segs, extra):
    return (torch.cat([ids, ids.new_zeros(ids.shape[0], extra)], 1),
            torch.cat([segs, segs.new_zeros(segs.shape[0], extra)], 1))


def calibrate(model, ids, segs, steps=4):
    """Train-mode passes give BN running statistics, so the eval-mode model fires."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = None  # cumulative average: a few passes suffice
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(ids, segs)
    return model.eval()


def test_shapes_and_names():
    ids, segs = batch()
    assert tiny()(ids, segs).shape == (3, 2)
    assert tiny(num_classes=1)(ids, segs).shape == (3, 1)
    assert tiny("mlm")(ids, segs).shape == (3, 10, 50)
    # one registry, which tells the text models from the vision ones (fed images) by their modality
    assert list_models(modality="text") == ["spikingformer_text_12_768", "spikingformer_text_2_128"]
    assert set(list_models()) == set(list_models(modality="text")) | set(list_models(modality="vision"))
    assert not set(list_models(modality="text")) & set(list_models(modality="vision"))
    assert [model_modality(n) for n in ("spikingformer_text_2_128", "spikingformer_4_384", "bert")] == \
        ["text", "vision", None]
    small = create_model("spikingformer_text_2_128")
    assert isinstance(small, SpikingformerText)
    assert sum(p.numel() for p in small.parameters()) == 4_323_330
    x, mask = small.forward_features(ids)
    assert x.shape == (4, 3, 10, 128) and mask.all()


def test_mlm_decoder_is_tied_to_the_token_embedding():
    m = tiny("mlm")
    assert m.head.fc.weight is m.embed.tok.weight


@pytest.mark.parametrize("head", ["sequence", "mlm"])
def test_spike_driven(head):
    ids, segs = batch()
    ids[0, 7:] = 0  # some padding
    m = tiny(head).train()
    with SynapticProbe(m) as probe:
        m(ids, segs)
    assert probe.spike_driven, [r.name for r in probe.violations]
    linears = [r for r in probe.ordered if isinstance(r.module, torch.nn.Linear)]
    assert [r.name for r in linears if r.readout] == ["head.fc"]
    assert len(linears) == 2 * 6 + 1 and all(r.kind == "spike" for r in linears if not r.readout)
    assert probe.layers["head.fc"].kind == "real"  # the read-out sees the real-valued residual stream
    qkv = probe.layers["blocks.0.attn.qkv"]
    assert [s.kind for s in qkv.inputs] == ["spike"] * 3 and qkv.inputs[0].firing_rate > 0


def test_energy_estimate_runs_on_token_ids():
    ids, segs = batch()
    m = calibrate(tiny(), ids, segs)
    report = estimate_energy(m, ids)
    assert report.spike_driven and report.T == 2 and report.images == 3
    assert [r.name for r in report.layers if r.readout] == ["head.fc"]
    assert report.ac > 0 and report.backbone_mJ < report.total_mJ


def test_masked_linear_bn_matches_linear_bn_and_ignores_masked_rows():
    ref, m = LinearBN(8, 6), MaskedLinearBN(8, 6)
    m.load_state_dict(ref.state_dict())
    x = (torch.rand(2, 3, 5, 8) > 0.5).float()
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    junk = x.clone()
    junk[:, 1, 3:] = 1.0  # whatever sits at masked positions must not move the statistics
    out_a, out_b = m(x, mask), m(junk, mask)
    assert torch.allclose(out_a[:, mask], out_b[:, mask], atol=1e-6)
    assert (out_a[:, ~mask] == 0).all()


@pytest.mark.parametrize("head", ["sequence", "mlm"])
def test_padding_changes_nothing_for_real_tokens(head):
    ids, segs = batch(n=12)
    m = calibrate(tiny(head, **MIXING), ids, segs)
    pids, psegs = pad(ids, segs, 7)
    with torch.no_grad(), SynapticProbe(m) as probe:
        x, _ = m.forward_features(ids, segs)
        xp, maskp = m.forward_features(pids, psegs)
        y, yp = m(ids, segs), m(pids, psegs)
    for layer in ("blocks.0.attn.proj.linear", "blocks.1.attn.proj.linear", "blocks.1.mlp.fc2.linear"):
        assert probe.layers[layer].inputs[0].firing_rate > 0  # the eval model does fire, attention included
    assert maskp[:, 12:].logical_not().all()
    assert torch.allclose(xp[:, :, :12], x, atol=1e-5)
    assert torch.allclose(yp[:, :12] if head == "mlm" else yp, y, atol=1e-5)
    # The check can fail: changing one real token does move the others' outputs.
    ids2 = ids.clone()
    ids2[:, 0] = 7
    with torch.no_grad():
        assert not torch.allclose(m.forward_features(ids2, segs)[0][:, :, 1:], x[:, :, 1:], atol=1e-5)


def test_padding_invariance_holds_in_training_mode_too():
    """BN statistics are taken over real tokens only, so batch statistics ignore padding."""
    ids, segs = batch(n=12)
    m = tiny(**MIXING).train()
    with torch.no_grad():
        y = m(ids, segs)
        yp = m(*pad(ids, segs, 5))
    assert torch.allclose(yp, y, atol=1e-5)


@pytest.mark.parametrize("head", ["sequence", "mlm"])
def test_gradients_reach_every_parameter(head):
    ids, segs = batch()
    ids[1, 6:] = 0
    m = tiny(head, **MIXING).train()
    out = m(ids, segs)
    out.square().mean().backward()
    silent = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_bad_input_and_unknown_names():
    m = tiny()
    with pytest.raises(ValueError, match=r"\[B, N\] int64"):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError, match="max_len=24"):
        m(torch.ones(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50\)"):
        m(torch.full((1, 4), 50))
    with pytest.raises(ValueError, match="at least one real"):
        m(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        m(torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown model 'bert'; available models: .*spikingformer_text"):
        create_model("bert")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['depht'\] for TextConfig"):
        create_model("spikingformer_text_2_128", depht=3)
    with pytest.raises(ValueError, match="unknown head 'cls'"):
        tiny("cls")


def test_probe_exempts_no_layer_of_a_text_model():
    """The embedding lookup is the encoding: a non-spike input to the first Linear is a violation."""
    model = create_model("spikingformer_text_2_128", depth=1).eval()
    ids = torch.randint(5, 1000, (2, 8))
    with SynapticProbe(model) as probe, torch.no_grad():
        model(ids)
    assert probe.encoding_layer is None and probe.spike_driven
    model.blocks[0].attn.sn_in = torch.nn.Identity()  # the first Linear now sees the real-valued embedding
    with SynapticProbe(model) as probe, torch.no_grad():
        model(ids)
    assert [r.name for r in probe.violations] == ["blocks.0.attn.q.linear", "blocks.0.attn.k.linear",
                                                  "blocks.0.attn.v.linear"]


@pytest.mark.parametrize("head", ["sequence", "mlm"])
def test_the_read_out_after_t_steps_is_a_run_of_t_steps(head):
    """``forward_steps``: its last step is ``forward``, and step ``t`` what the same weights answer at ``T = t``
    (the encoding repeats, neurons never look ahead, eval-mode BN treats each step alone), padding included."""
    ids, segs = batch(n=12)
    pids, psegs = pad(ids, segs, 5)
    model = calibrate(tiny(head, **{**MIXING, "T": 3}), ids, segs)
    with torch.no_grad():
        steps = model.forward_steps(pids, psegs)
        assert steps.shape == (3, *model(pids, psegs).shape)
        torch.testing.assert_close(steps[-1], model(pids, psegs), rtol=1e-5, atol=1e-5)
        for t in (1, 2):  # the same weights, run for t steps
            short = tiny(head, **{**MIXING, "T": t})
            short.load_state_dict(model.state_dict())
            torch.testing.assert_close(steps[t - 1], short.eval()(pids, psegs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steps[0], steps[-1])
