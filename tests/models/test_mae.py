"""Spikformer V2 MAE (V2 §4.2): masking, no leakage from masked patches, encoder/classifier equivalence, loss."""
import copy

import pytest
import torch

from spikingformer import create_model
from spikingformer.analysis.probe import SynapticProbe
from spikingformer.models.mae import (
    MAEConfig,
    SpikformerV2MAE,
    neighbours,
    patchify,
    random_masking,
    sincos_pos_embed_2d,
    tile_conv_bn,
    unpatchify,
    visible_tiles,
    with_halo,
)
from spikingformer.nn.layers import ConvBN

from ..benchmarks import load_script

ENCODER = dict(depth=1, dim=32, num_heads=2, img_size=64)  # 64x64 images: 4x4 = 16 patches


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(T: int = 1, **encoder) -> SpikformerV2MAE:
    return SpikformerV2MAE(MAEConfig("spikformer_v2_8_384", {**ENCODER, **encoder}, T=T, decoder_dim=32,
                                     decoder_depth=1, decoder_heads=2))


def masks(batch: int = 3, seed: int = 1):
    return random_masking(batch, (4, 4), 0.75, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_reconstruction():
    model = tiny()
    x = torch.randn(3, 3, 64, 64)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (3, 16, 16 * 16 * 3) and out.visible.shape == (3, 16) and out.loss.dim() == 0
    masked, recon = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert masked.shape == recon.shape == x.shape
    vis = out.visible.view(3, 1, 4, 1, 4, 1).expand(3, 3, 4, 16, 4, 16).reshape(3, 3, 64, 64)
    assert torch.equal(masked, x * vis)              # masked patches blanked, visible ones untouched
    assert torch.equal(recon[vis], x[vis])           # the reconstruction keeps the visible patches
    assert not torch.allclose(recon[~vis], x[~vis])  # and predicts the others


@pytest.mark.parametrize("grid,keep", [((4, 4), 4), ((14, 14), 49), ((2, 2), 1)])
def test_mask_ratio_is_exact_per_sample_and_seeded(grid, keep):
    ids, visible = random_masking(64, grid, 0.75, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (64, keep) and visible.shape == (64, *grid)
    assert visible.flatten(1).sum(1).tolist() == [keep] * 64
    assert torch.equal(ids, ids.sort(1).values)  # raster order
    assert torch.equal(visible.flatten(1).nonzero()[:, 1].view(64, keep), ids)
    assert len({tuple(r) for r in ids.tolist()}) > 1  # a different mask per sample
    again, _ = random_masking(64, grid, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)


def test_masking_rejects_ratios_that_keep_nothing_or_everything():
    with pytest.raises(ValueError, match="at least one must be kept"):
        random_masking(2, (2, 2), 0.9)
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        MAEConfig(mask_ratio=0.0)


@pytest.mark.parametrize("train,T", [(True, 1), (False, 1), (True, 2)])
def test_masked_pixels_cannot_change_the_encoder_output(train, T):
    """The no-leakage property, exactly: sparse conv + sparse BN in the SCS, visible tokens only after it."""
    model = tiny(T).train(train)
    if not train:  # eval-mode BN gets running statistics equal to one batch's (momentum None: cumulative)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        model.train()(torch.randn(4, 3, 64, 64))
        model.eval()
    ids, visible = masks()
    pix = visible.repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(1).expand(3, 3, 64, 64)
    x = torch.randn(3, 3, 64, 64)
    y = torch.where(pix, x, 10 * torch.randn_like(x))  # new pixels in every masked patch
    bn = model.encoder.stem.layers[0].bn
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = model.forward_encoder(x, ids, visible)
    stats_a = bn.running_mean.clone()
    model.load_state_dict(state)
    b = model.forward_encoder(y, ids, visible)
    assert torch.equal(a, b) and a.abs().sum() > 0
    assert torch.equal(stats_a, bn.running_mean)  # BN running statistics saw visible positions only
    assert torch.equal(model.forward_decoder(a, ids, (4, 4)), model.forward_decoder(b, ids, (4, 4)))
    # No gradient reaches a masked pixel: a leak too small to flip a spike would still show here.
    model.load_state_dict(state)
    xg = y.clone().requires_grad_()
    out = model.forward_encoder(xg, ids, visible)
    (out * torch.randn_like(out)).sum().backward()
    assert xg.grad[~pix].abs().max() == 0 and xg.grad[pix].abs().sum() > 0
    # Control: one changed visible pixel does change it, and the dense stem would leak masked pixels.
    model.load_state_dict(state)
    z = x.clone()
    z[pix.logical_and(torch.rand_like(x) < 0.01)] += 5
    assert not torch.equal(model.forward_encoder(z, ids, visible), a)
    dense = [model.encoder.stem(model.encoder.check_input(v)).permute(0, 1, 3, 4, 2)[:, visible] for v in (x, y)]
    assert not torch.equal(*dense)  # the same visible tokens, changed by masked pixels


@pytest.mark.parametrize("train,T", [(True, 1), (False, 1), (True, 2)])
def test_the_tiled_stem_computes_what_a_dense_masked_stem_does(train, T):
    """Outputs, gradients and BN statistics of the tiles (visible patches only, with their halos) equal those
    of the dense stem zeroed outside the mask, in float64; the first BN's statistics are the visible positions'."""
    torch.manual_seed(0)
    model = tiny(T, depth=2).double().train()
    for m in model.modules():  # eval-mode BN gets the statistics of one batch (momentum None: cumulative)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None if not train else m.momentum
    model(torch.randn(4, 3, 64, 64, dtype=torch.float64))
    model.train(train)
    ref = copy.deepcopy(model)
    ids, visible = masks()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    stem = model.encoder.stem.layers
    if train:
        for m in (model, ref):
            m.encoder.stem.layers[0].bn.reset_running_stats()
    seen = []
    ref.encoder.stem.layers[-1].register_forward_hook(lambda m, a, out: seen.append(out))
    with load_script("memory") as bench:  # the benchmark's baseline: the dense stem zeroed outside the mask
        want = bench.dense_stem_encoder(ref, x, ids, visible)
    assert seen[0].permute(0, 1, 3, 4, 2)[:, ~visible].abs().sum() == 0  # whose masked positions stay silent
    out = model.forward_encoder(x, ids, visible)
    assert out.shape == (T, 3, 4, 32) and want.abs().sum() > 0
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g).sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    if train:  # momentum 0.1 from zero: a tenth of the mean over the visible positions of the first conv
        keep = visible.repeat_interleave(8, 1).repeat_interleave(8, 2)
        expected = stem[0].conv(x).permute(0, 2, 3, 1)[keep].mean(0)
        torch.testing.assert_close(stem[0].bn.running_mean, 0.1 * expected.detach())


def test_tiles_are_the_visible_patches_and_their_halos():
    x = torch.arange(2 * 1 * 8 * 8.0).view(1, 2, 1, 8, 8)                 # T = 1, B = 2, 2x2 patches of 4x4
    ids = torch.tensor([[0, 3], [1, 2]])
    tiles = visible_tiles(x, ids, (2, 2))
    assert tiles.shape == (1, 2, 2, 1, 4, 4)
    assert torch.equal(tiles[0, 0, 1, 0], x[0, 0, 0, 4:, 4:]) and torch.equal(tiles[0, 1, 0, 0], x[0, 1, 0, :4, 4:])
    near = neighbours(ids, (2, 2))                                         # 2 = the zero tile
    assert near[0, 0].tolist() == [[2, 2, 2], [2, 0, 2], [2, 2, 1]]       # (0, 0) sees (1, 1) below-right
    assert near[1, 1].tolist() == [[2, 2, 0], [2, 1, 2], [2, 2, 2]]       # (1, 0) sees (0, 1) above-right
    halo = with_halo(tiles, near, 1)
    masked = x.clone()
    masked[0, 0, 0, :4, 4:] = masked[0, 0, 0, 4:, :4] = 0                 # sample 0 shows patches 0 and 3
    padded = torch.nn.functional.pad(masked[0, 0, 0], (1, 1, 1, 1))
    assert torch.equal(halo[0, 0, 0, 0], padded[:6, :6]) and torch.equal(halo[0, 0, 1, 0], padded[4:, 4:])
    with pytest.raises(ValueError, match="a 3x3 patch grid does not tile the 8x8 feature map"):
        visible_tiles(x, ids, (3, 3))
    with pytest.raises(ValueError, match="a halo of 5 around 4x4 tiles reaches past"):
        with_halo(tiles, near, 5)
    for conv in (dict(kernel_size=3, padding=2, dilation=2), dict(kernel_size=3, stride=2, padding=1)):
        layer = ConvBN(1, 1)
        layer.conv = torch.nn.Conv2d(1, 1, **conv)
        with pytest.raises(ValueError, match="must read within its tile or have 'same' padding"):
            tile_conv_bn(layer, tiles, near)


def test_encoder_blocks_see_only_the_visible_tokens():
    model = tiny(T=2)
    shapes = []
    for blk in model.encoder.blocks:
        blk.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    model(torch.randn(3, 3, 64, 64))
    assert shapes == [(2, 3, 4, 32)]  # [T, B, N_v = 16 * 0.25, D]


def test_encoder_state_dict_keys_are_the_classifier_backbone_keys():
    for name, args in (("spikformer_v2_8_384", ENCODER), ("spikformer_v2_8_512", dict(depth=2, img_size=64))):
        mae = SpikformerV2MAE(MAEConfig(name, args, decoder_depth=1))
        clf = create_model(name, **args, num_classes=1000, T=4)
        backbone = {k: v.shape for k, v in clf.state_dict().items() if not k.startswith("head.")}
        assert {k: v.shape for k, v in mae.encoder.state_dict().items()} == backbone
        assert {k[8:] for k in mae.state_dict() if k.startswith("encoder.")} == set(backbone)
        assert set(clf.state_dict()) - set(backbone) == {"head.fc.weight", "head.fc.bias"}


def test_encoder_keeps_the_v2_classifiers_spike_driven_profile():
    """The MAE encoder feeds every synaptic layer the same kind of input (spike / integer / real)
    as the V2 classifier does: masking changes which positions fire, not what the layers see.  (The stem's
    3x3 convs run unpadded on tiles with halos, as a function of their weights: no module call to hook.)"""
    model = tiny(depth=2).train()
    clf = create_model("spikformer_v2_8_384", **{**ENCODER, "depth": 2}, num_classes=10, T=1).train()
    clf.load_state_dict({**clf.state_dict(), **model.encoder.state_dict()})
    x = torch.randn(4, 3, 64, 64)
    with SynapticProbe(clf) as ref, torch.no_grad():
        clf(x)
    with SynapticProbe(model.encoder) as probe, torch.no_grad():
        model(x)
    kinds = {r.name: r.kind for r in probe.ordered}
    halo_convs = {f"stem.layers.{i}.conv" for i, m in enumerate(model.encoder.stem.layers)
                  if isinstance(m, ConvBN) and m.conv.kernel_size == (3, 3)}
    assert len(halo_convs) == 8
    assert kinds == {r.name: r.kind for r in ref.ordered if not r.readout and r.name not in halo_convs}
    assert probe.encoding_layer.name == ref.encoding_layer.name == "stem.layers.0.conv"
    assert [r.name for r in probe.violations] == [r.name for r in ref.violations]
    assert ref.violations and all(r.kind == "integer" for r in ref.violations)  # SEW residual sums (SPEC §5)


def test_loss_counts_masked_patches_only():
    model = tiny()
    x = torch.randn(3, 3, 64, 64)
    _, visible = masks()
    target = model.target(x)
    vis = visible.flatten(1)
    garbage = torch.where(vis.unsqueeze(-1), 100.0, target)  # wrong only on visible patches
    assert model.loss(x, garbage, vis) == 0
    off = torch.where(vis.unsqueeze(-1), target, target + 0.5)  # off by 0.5 on masked patches
    torch.testing.assert_close(model.loss(x, off, vis), torch.tensor(0.25))
    # norm_pix targets: predicting each patch's mean (0) scores (n - 1) / n with the unbiased variance
    torch.testing.assert_close(model.loss(x, torch.zeros_like(target), vis), torch.tensor(767 / 768), atol=1e-5,
                               rtol=0)
    out = model(x, generator=torch.Generator().manual_seed(1))
    pred = out.pred.detach().requires_grad_()
    model.loss(x, pred, out.visible).backward()
    assert (pred.grad[out.visible] == 0).all() and (pred.grad[~out.visible] != 0).any()


def test_patchify_roundtrip_and_sincos_embedding():
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 768) and torch.equal(p[0, 1], x[0, :, :16, 16:32].permute(1, 2, 0).flatten())
    assert torch.equal(unpatchify(p, 16, (2, 3)), x)
    pe = sincos_pos_embed_2d(8, (2, 3))
    assert pe.shape == (6, 8)
    # columns of each quarter: sin(w), cos(w), sin(h), cos(h) at frequencies 1 and 1/100
    torch.testing.assert_close(pe[5], torch.tensor([torch.sin(torch.tensor(2.)), torch.sin(torch.tensor(.02)),
                                                    torch.cos(torch.tensor(2.)), torch.cos(torch.tensor(.02)),
                                                    torch.sin(torch.tensor(1.)), torch.sin(torch.tensor(.01)),
                                                    torch.cos(torch.tensor(1.)), torch.cos(torch.tensor(.01))]))


def test_bad_models_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="not a Spikformer V2"):
        SpikformerV2MAE(MAEConfig("spikformer_4_384", decoder_depth=1))
    with pytest.raises(ValueError, match="must not set"):
        MAEConfig(encoder_args={"T": 4})
    model = tiny()
    with pytest.raises(ValueError, match="static images"):
        model(torch.randn(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of the tokenizer's patch size 16"):
        model(torch.randn(2, 3, 40, 40))
