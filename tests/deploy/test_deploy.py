"""Deployment form: BN folded into the conv/linear before it (the step Eq. 20 assumes)."""
import pytest
import torch
from torch import nn

import spikingformer as sf
from spikingformer.analysis.energy import estimate_energy
from spikingformer.deploy.fold import fold_bn
from spikingformer.nn.layers import ConvBN

from ..helpers import calibrate_bn


def trained_like(name, x, **kw):
    """A model whose BNs are far from identity (random affine, calibrated statistics), in eval mode."""
    model = sf.create_model(name, depth=2, T=2, **kw)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return calibrate_bn(model, x)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikingformer_dagger_4_384", "spikformer_4_384",
                                  "spikformer_v2_8_384"])
def test_folded_model_keeps_outputs_verdict_and_energy(name):
    size = 64 if "v2" in name else 32
    x = torch.randn(3, 3, size, size)
    model = trained_like(name, x, dim=64, num_heads=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        out, out_folded = model(x), folded(x)
    assert out.abs().sum() > 0
    torch.testing.assert_close(out_folded, out, atol=1e-5, rtol=0)
    a, b = estimate_energy(model, x), estimate_energy(folded, x)
    assert a.spike_driven == b.spike_driven == name.startswith("spikingformer")
    assert [(r.name, r.op, r.kind) for r in a.layers] == [(r.name, r.op, r.kind) for r in b.layers]
    # float32: a membrane within rounding of the threshold may flip one spike (seen: 1 in 24576 K spikes)
    assert b.total_mJ == pytest.approx(a.total_mJ, rel=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # original untouched


def test_folding_is_exact_in_float64():
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    model = trained_like("spikformer_4_384", x.float(), dim=64, num_heads=2).double()
    folded = fold_bn(model)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-12, rtol=0)
    a, b = estimate_energy(model, x), estimate_energy(folded, x)
    assert [(r.fr, r.ac, r.mac) for r in a.layers] == [(r.fr, r.ac, r.mac) for r in b.layers]
    assert a.total_mJ == b.total_mJ and a.ac > 0


def test_fold_gives_bias_free_convs_a_bias():
    block = ConvBN(3, 5, 3, 1, 1)
    block.bn.running_mean.normal_()
    folded = fold_bn(block)
    assert block.conv.bias is None and folded.conv.bias is not None
    assert isinstance(folded.bn, nn.Identity)
    x = torch.randn(2, 1, 3, 6, 6)
    torch.testing.assert_close(folded(x), block.eval()(x), atol=1e-5, rtol=1e-5)


def test_fold_uses_each_bn_own_eps_and_gives_an_eval_mode_copy():
    block = ConvBN(3, 5, 3, 1, 1)
    block.bn = nn.BatchNorm2d(5, eps=0.1)  # not the default 1e-5: small variances make the difference plain
    block.bn.running_var.uniform_(0.01, 0.05)
    block.bn.running_mean.normal_()
    folded = fold_bn(block)  # block is in train mode
    assert not folded.training and block.training
    assert not any(m.training for m in folded.modules())
    x = torch.randn(2, 1, 3, 6, 6)
    # the reference: torch's own BatchNorm in eval mode, with its eps
    torch.testing.assert_close(folded(x), block.eval()(x), atol=1e-5, rtol=1e-5)


def test_bn_without_running_stats_is_refused():
    block = ConvBN(3, 5)
    block.bn = nn.BatchNorm2d(5, track_running_stats=False)
    with pytest.raises(ValueError, match="no running statistics"):
        fold_bn(block)


def test_stray_batchnorm_is_reported():
    model = nn.Sequential(ConvBN(3, 4), nn.BatchNorm1d(4))
    with pytest.warns(UserWarning, match="left 1 BatchNorm.*1"):
        fold_bn(model)


def test_folding_a_folded_model_changes_nothing():
    torch.manual_seed(0)
    model, x = sf.create_model("spikingformer_4_384", depth=1, dim=64, num_heads=2, T=2).eval(), torch.randn(2, 3, 32, 32)
    once = fold_bn(model)
    assert torch.equal(fold_bn(once)(x), once(x))


@pytest.mark.parametrize("name,options", [("sew_resnet34", dict(depth=18)), ("sew_resnet50", dict(depth=50)),
                                          ("ms_resnet_104", dict(layers=(1, 2, 1, 1), width=8))])
def test_models_that_declare_their_conv_bn_pairs_fold_every_bn(name, options, recwarn):
    """SEW ResNet's SpikingJelly blocks and MS-ResNet's stem apply a BatchNorm to a conv outside a ConvBN: their
    ``bn_pairs()`` name the pairs, and every BN folds (float64: the same values at every folded BN's place)."""
    if name.startswith("sew_"):
        pytest.importorskip("spikingjelly.activation_based.model.sew_resnet")
    torch.manual_seed(0)
    model = sf.create_model(name, T=2, **options).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    calibrate_bn(model, x)
    for m in model.modules():  # BNs that are no identity, so that a fold that missed one would show
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    folded = fold_bn(model)
    assert not [w for w in recwarn.list if "fold_bn left" in str(w.message)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    seen = {}
    for tag, net in (("bn", model), ("folded", folded)):
        mods = dict(net.named_modules())
        hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n, tag=tag: seen.setdefault((tag, n), o))
                 for n in bns]
        with torch.no_grad():
            net(x)
        for h in hooks:
            h.remove()
    for n in bns:
        torch.testing.assert_close(seen[("folded", n)], seen[("bn", n)], rtol=1e-9, atol=1e-9)
