"""The paper's facts about the models: parameter counts, which tensors are spikes, invariances."""
import pytest
import torch

import spikingformer as sf
from spikingformer.analysis.probe import SynapticProbe
from spikingformer.models import paper_facts
from spikingformer.models.spikformer import SEWBlock
from spikingformer.models.spikingformer import MSBlock
from spikingformer.nn.layers import ConvBN, SeqMaxPool, SpikeQKV
from spikingformer.nn.neuron import MultiStepLIF, multistep_lif

from ..helpers import calibrate_bn

SPIKINGFORMERS = sf.list_models("spikingformer_*", modality="vision")
SPIKFORMERS = sf.list_models("spikformer_*", modality="vision")


def small_input(model, batch=2):
    """The native size up to 128x128; ImageNet models get 64x64 (16 tokens) to stay cheap on CPU."""
    size = model.cfg.img_size if model.cfg.img_size <= 128 else 4 * model.patch_size
    return torch.randn(batch, model.cfg.in_chans, size, size)


def test_every_vision_model_gives_the_papers_parameter_count():
    assert all(paper_facts(name).params_M for name in sf.list_models(modality="vision"))


# A named model whose official code has another size than its table gives: the official count, and why
KNOWN_SIZE_GAPS = {"ms_resnet_104": 77_350_504}  # the official resnet104; Table 2's 78.37M is 1.3 % more (docstring)


@pytest.mark.parametrize("name", sf.list_models(modality="vision"))
def test_parameter_count_matches_paper(name):
    with torch.device("meta"):  # counts only: no memory, no init cost
        model = sf.create_model(name)
    n, paper = sum(p.numel() for p in model.parameters()), paper_facts(name).params_M
    if name in KNOWN_SIZE_GAPS:
        assert n == KNOWN_SIZE_GAPS[name] and abs(n / 1e6 - paper) / paper > 0.005
    else:
        assert abs(n / 1e6 - paper) / paper < 0.005, n


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


# ---------------------------------------------------------------------------------------------------
# The building blocks and the wiring of SPEC §2-5, checked against hand computation and the spec's
# formulas (written out here independently of the library's own reshapes).


def capture(module, names):
    """{name: (input, output)} of the named submodules' latest calls."""
    seen, mods = {}, dict(module.named_modules())
    for n in names:
        mods[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0].detach(), o.detach())))
    return seen


def spec_attention(q, k, v, heads):
    """Q K^T V * 0.125 per head on token tensors [T, B, N, C]; head i owns channels [i C/h, (i+1) C/h)."""
    dh = q.shape[-1] // heads
    parts = [(q[..., i * dh:(i + 1) * dh] @ k[..., i * dh:(i + 1) * dh].transpose(-2, -1))
             @ v[..., i * dh:(i + 1) * dh] * 0.125 for i in range(heads)]
    return torch.cat(parts, dim=-1)


def tokens(x):  # [T, B, C, H, W] -> [T, B, H*W, C], token n = row-major position (n // W, n % W)
    return x.permute(0, 1, 3, 4, 2).reshape(x.shape[0], x.shape[1], -1, x.shape[2])


def test_ms_block_is_eq_7_8_with_pssa_of_eq_12_14():
    blk = MSBlock(16, num_heads=4).train()
    for n in "qkv":  # BN shift 1.5: Q, K, V fire at ~40 %, so the attention neuron fires at some positions
        getattr(blk.attn, n).bn.bias.data.fill_(1.5)
    x = torch.randn(2, 3, 16, 3, 5) * 2  # [T, B, C, H, W]: H != W, so a transposed token grid shows
    names = ["attn", "attn.sn_in", "attn.q", "attn.k", "attn.v", "attn.sn_q", "attn.sn_k", "attn.sn_v",
             "attn.sn_attn", "attn.proj", "mlp", "mlp.sn1", "mlp.fc1", "mlp.sn2", "mlp.fc2"]
    c = capture(blk, names)
    out = blk(x)
    # PSSA: every synaptic layer sees SN(X), the pre-activation spikes of the real-valued stream.
    assert torch.equal(c["attn.sn_in"][0], x)
    xs = multistep_lif(x)
    for n in "qkv":
        assert torch.equal(c[f"attn.{n}"][0], xs)
        assert torch.equal(c[f"attn.sn_{n}"][0], c[f"attn.{n}"][1])
    q, k, v = (tokens(c[f"attn.sn_{n}"][1]) for n in "qkv")
    a = spec_attention(q, k, v, heads=4)
    assert torch.equal(tokens(c["attn.sn_attn"][0]), a)
    # SN_attn fires at V_th = 0.5, and here that is not the same as at 1.0
    assert torch.equal(c["attn.sn_attn"][1], multistep_lif(c["attn.sn_attn"][0], v_threshold=0.5))
    assert not torch.equal(c["attn.sn_attn"][1], multistep_lif(c["attn.sn_attn"][0]))
    assert torch.equal(c["attn.proj"][0], c["attn.sn_attn"][1]) and torch.equal(c["attn"][1], c["attn.proj"][1])
    # MS residual: X' = X + PSSA(X) (real values, not spikes), X'' = X' + SMLP(X')
    x1 = x + c["attn"][1]
    assert torch.equal(c["mlp"][0], x1) and torch.equal(c["mlp.sn1"][0], x1)
    assert torch.equal(c["mlp.fc1"][0], c["mlp.sn1"][1]) and torch.equal(c["mlp.sn2"][0], c["mlp.fc1"][1])
    assert torch.equal(c["mlp.fc2"][0], c["mlp.sn2"][1]) and c["mlp.fc1"][1].shape[2] == 64  # hidden 4D
    assert torch.equal(out, x1 + c["mlp.fc2"][1])
    assert 0 < c["attn.sn_attn"][1].mean() < 1 and 0 < xs.mean() < 1  # not vacuous


def test_sew_block_and_ssa_of_spikformer():
    blk = SEWBlock(16, num_heads=4).train()
    for n in "qkv":
        getattr(blk.attn, n).bn.bias.data.fill_(1.5)
    x = (torch.rand(2, 3, 15, 16) < 0.4).float() + (torch.rand(2, 3, 15, 16) < 0.4).float()  # SEW sums {0, 1, 2}
    names = ["attn", "attn.q", "attn.k", "attn.v", "attn.sn_q", "attn.sn_k", "attn.sn_v", "attn.sn_attn",
             "attn.proj", "attn.sn_proj", "mlp", "mlp.fc1", "mlp.sn1", "mlp.fc2", "mlp.sn2"]
    c = capture(blk, names)
    out = blk(x)
    for n in "qkv":  # SSA: Q = SN(BN(Linear(X))) straight on the block input
        assert torch.equal(c[f"attn.{n}"][0], x) and torch.equal(c[f"attn.sn_{n}"][0], c[f"attn.{n}"][1])
    a = spec_attention(*(c[f"attn.sn_{n}"][1] for n in "qkv"), heads=4)
    assert torch.equal(c["attn.sn_attn"][0], a)
    assert torch.equal(c["attn.sn_attn"][1], multistep_lif(a, v_threshold=0.5))
    assert not torch.equal(c["attn.sn_attn"][1], multistep_lif(a))
    assert torch.equal(c["attn.proj"][0], c["attn.sn_attn"][1])
    assert torch.equal(c["attn.sn_proj"][0], c["attn.proj"][1]) and torch.equal(c["attn"][1], c["attn.sn_proj"][1])
    x1 = x + c["attn"][1]  # SEW residual: spikes added to the stream
    assert torch.equal(c["mlp"][0], x1) and torch.equal(c["mlp.fc1"][0], x1)
    assert torch.equal(c["mlp.sn1"][0], c["mlp.fc1"][1]) and torch.equal(c["mlp.fc2"][0], c["mlp.sn1"][1])
    assert torch.equal(c["mlp.sn2"][0], c["mlp.fc2"][1]) and torch.equal(out, x1 + c["mlp.sn2"][1])
    assert 0 < c["attn.sn_attn"][1].mean() < 1


def stem_trace(model, x):
    """The ConvBN / SN / MaxPool calls of the model's tokenizer or stem, in order: (letter, module, in, out)."""
    stem = getattr(model, "tokenizer", None) or model.stem
    calls = []
    letter = {ConvBN: "C", MultiStepLIF: "S", SeqMaxPool: "P"}
    for m in stem.modules():
        if type(m) in letter:
            m.register_forward_hook(lambda m, i, o: calls.append((letter[type(m)], m, i[0].detach(), o.detach())))
    with torch.no_grad():
        out = stem(model.check_input(x))
    return calls, out


@pytest.mark.parametrize("name,size,ops", [
    # SPEC §4: encoding ConvBN, then per stage SN, [MaxPool], ConvBN; CIFAR pools in stages 3-4, ImageNet in all.
    ("spikingformer_4_384", 32, "C S C S C S P C S P C"),
    ("spikingformer_8_512", 64, "C S P C S P C S P C S P C"),
    ("spikingformer_dvs_2_256", 64, "C S P C S P C S P C S P C"),
    # SPEC §5, dagger: ConvBN-MaxPool-LIF; CIFAR pools follow the ConvBN of stages 2, 3, ImageNet of 0-3.
    ("spikingformer_dagger_4_384", 32, "C S C S C P S C P S C"),
    ("spikingformer_dagger_8_768", 64, "C P S C P S C P S C P S C"),
    # Spikformer V1 SPS: ConvBN -> SN -> [MaxPool] (CIFAR: no pool in the first two), then RPE = SN(ConvBN(x)).
    ("spikformer_4_384", 32, "C S C S C S P C S P C S"),
    ("spikformer_8_512", 64, "C S P C S P C S P C S P C S"),
])
def test_tokenizer_order_of_spec(name, size, ops):
    model = sf.create_model(name, depth=1, dim=32, num_heads=4, T=2).train()
    x = torch.randn(2, model.cfg.in_chans, size, size)
    calls, out = stem_trace(model, x)
    assert " ".join(c[0] for c in calls) == ops
    assert torch.equal(calls[0][2], torch.stack([x] * 2))  # the encoding conv sees the raw input, T times
    sps = name.startswith("spikformer")
    chain = calls[:-2] if sps else calls
    for prev, cur in zip(chain, chain[1:]):  # each op consumes the previous one's output
        assert torch.equal(cur[2], prev[3])
    convs = [c[1].conv for c in calls if c[0] == "C"]
    assert all(cv.kernel_size == (3, 3) and cv.stride == (1, 1) and cv.padding == (1, 1) for cv in convs)
    assert [cv.out_channels for cv in convs] == [4, 8, 16, 32, 32]  # D/8, D/4, D/2, D, D (SPS: RPE)
    assert out.shape[-1] == size // model.patch_size == (8 if size == 32 else 4)
    if sps:  # RPE: x + SN(ConvBN_3x3(x)), x the last stage's (pooled) spikes
        (_, _, rpe_in, _), (_, _, _, rpe_spikes) = calls[-2:]
        assert torch.equal(rpe_in, calls[-3][3]) and torch.equal(out, rpe_in + rpe_spikes)


def test_spikformer_v2_convolutional_stem():
    # SPEC §5 / V2 §4.1: four blocks of a 2x2 stride-2 ConvBN and a 3x3 ConvBN pair (x4, then back),
    # an SN before every conv after the first, spikes out; channels D/8, D/4, D/2, D.
    model = sf.create_model("spikformer_v2_8_384", depth=1, dim=32, num_heads=4, T=2).train()
    x = torch.randn(2, 3, 32, 32)
    calls, out = stem_trace(model, x)
    assert " ".join(c[0] for c in calls) == "C S C S C" + " S C S C S C" * 3 + " S"
    for prev, cur in zip(calls, calls[1:]):
        assert torch.equal(cur[2], prev[3])
    convs = [c[1].conv for c in calls if c[0] == "C"]
    assert [(cv.kernel_size[0], cv.stride[0], cv.out_channels) for cv in convs] == [
        (k, s, o) for c in (4, 8, 16, 32) for k, s, o in ((2, 2, c), (3, 1, 4 * c), (3, 1, c))]
    assert torch.equal(out, calls[-1][3]) and out.shape[-2:] == (2, 2)  # 32 / 16


# SPEC §4-6: name -> (depth, dim, heads, T, tau, in_chans, img_size, downsample, cml); None: not given,
# a set: any of its values is the paper's.
CIFAR, IMNET = (False, False, True, True), (True,) * 4
SPEC_CONFIGS = {
    "spikingformer_4_256": (4, 256, 8, 4, 2.0, 3, 32, CIFAR, False),
    "spikingformer_2_384": (2, 384, 12, 4, 2.0, 3, 32, CIFAR, False),
    "spikingformer_4_384": (4, 384, 12, 4, 2.0, 3, 32, CIFAR, False),
    "spikingformer_8_384": (8, 384, 8, 4, 2.0, 3, 224, IMNET, False),
    "spikingformer_8_512": (8, 512, 8, 4, 2.0, 3, 224, IMNET, False),
    "spikingformer_8_768": (8, 768, 8, 4, 2.0, 3, 224, IMNET, False),  # official imagenet.yml: num_heads 8
    "spikingformer_dvs_2_256": (2, 256, 16, {10, 16}, 1.5, 2, 128, IMNET, False),
    "spikingformer_dagger_2_384": (2, 384, 12, 4, 2.0, 3, 32, CIFAR, True),
    "spikingformer_dagger_4_384": (4, 384, 12, 4, 2.0, 3, 32, CIFAR, True),
    "spikingformer_dagger_8_384": (8, 384, 8, 4, 2.0, 3, 224, IMNET, True),
    "spikingformer_dagger_8_512": (8, 512, 8, 4, 2.0, 3, 224, IMNET, True),
    "spikingformer_dagger_8_768": (8, 768, 8, 4, 2.0, 3, 224, IMNET, True),
    # Spikingformer-CML's cifar10-dvs / dvs128-gesture models (tau 1.75) and cifar10/CML_Spikformer.py
    "spikingformer_dagger_dvs_2_256": (2, 256, 16, 16, 1.75, 2, 128, IMNET, True),
    "spikformer_dagger_4_384": (4, 384, 12, 4, 2.0, 3, 32, CIFAR, True),
    "spikformer_2_384": (2, 384, 12, 4, 2.0, 3, 32, CIFAR, None),
    "spikformer_4_384": (4, 384, 12, 4, 2.0, 3, 32, CIFAR, None),
    "spikformer_dvs_2_256": (2, 256, 16, 16, 2.0, 2, 128, IMNET, None),  # ZK-Zhou/spikformer cifar10dvs
    "spikformer_8_384": (8, 384, 12, 4, 2.0, 3, 224, IMNET, None),
    "spikformer_8_512": (8, 512, 8, 4, 2.0, 3, 224, IMNET, None),
    "spikformer_8_768": (8, 768, 12, 4, 2.0, 3, 224, IMNET, None),
    "spikformer_v2_8_384": (8, 384, None, None, 2.0, 3, 224, None, None),
    "spikformer_v2_8_512": (8, 512, None, None, 2.0, 3, 224, None, None),
    "spikformer_v2_12_512": (12, 512, None, None, 2.0, 3, 224, None, None),
    "spikformer_v2_12_768": (12, 768, None, None, 2.0, 3, 224, None, None),
    "spikformer_v2_16_768": (16, 768, None, None, 2.0, 3, 224, None, None),
}


def test_spec_configs_cover_every_model():
    assert sorted(SPEC_CONFIGS) == SPIKFORMERS + SPIKINGFORMERS


@pytest.mark.parametrize("name", sorted(SPEC_CONFIGS))
def test_named_model_is_the_spec_table_row(name):
    depth, dim, heads, T, tau, in_chans, img, down, cml = SPEC_CONFIGS[name]
    with torch.device("meta"):
        model = sf.create_model(name)
    cfg = model.cfg
    assert (cfg.depth, cfg.dim, cfg.tau, cfg.in_chans, cfg.img_size) == (depth, dim, tau, in_chans, img)
    assert cfg.mlp_ratio == 4.0 and cfg.head == "avgpool_fc" and len(model.blocks) == depth
    for want, got in ((heads, cfg.num_heads), (T, cfg.T), (down, getattr(cfg, "downsample", None)),
                      (cml, getattr(cfg, "cml", None))):
        assert want is None or want == got or (isinstance(want, set) and got in want)
    if name.startswith("spikformer_v2"):
        assert cfg.stem == "scs" and model.patch_size == 16
    # the attention of every block: s = 0.125, SN_attn at V_th = 0.5; every other neuron V_th 1 and the model's tau
    assert {m.scale for m in model.modules() if isinstance(m, SpikeQKV)} == {0.125}
    for n, m in model.named_modules():
        if isinstance(m, MultiStepLIF):
            assert (m.tau, m.v_threshold, m.v_reset) == (tau, 0.5 if n.endswith("sn_attn") else 1.0, 0.0), n


@pytest.mark.parametrize("name", SPIKINGFORMERS)
def test_conv_biases_of_spec_section_3(name):
    # Tokenizer and Q/K/V convs have no bias (a BN follows); projection and MLP convs have one.
    model = sf.create_model(name, depth=1, dim=32, num_heads=4)
    convs = dict((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert len(convs) == 5 + 6
    for n, m in convs.items():
        with_bias = n.startswith("blocks.") and (".proj." in n or ".mlp." in n)
        assert (m.bias is not None) == with_bias, n


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384", "spikformer_v2_8_384"])
def test_init_of_the_official_code(name):
    # SPEC is silent; the official models' _init_weights (Spikingformer, Spikformer): Linear weights
    # trunc_normal(std 0.02), Linear biases 0, norms weight 1 / bias 0.
    model = sf.create_model(name, depth=1, dim=256, num_heads=8)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    w = torch.cat([m.weight.flatten() for m in linears])
    assert w.numel() > 2000 and 0.018 < w.std() < 0.022 and w.mean().abs() < 0.002
    assert all(m.bias is None or not m.bias.any() for m in linears)
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    assert all((m.weight == 1).all() and not m.bias.any() for m in bns)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384"])
def test_tokens_are_row_major_positions(name):
    # Token n is spatial position (n // W, n % W) of the [T, B, D, H, W] map, feature d its channel d:
    # for Spikingformer in forward_features (after the blocks), for Spikformer where the stem's map enters the blocks.
    model = sf.create_model(name, depth=1, dim=32, num_heads=4, T=2)
    grid, tok = [], []
    if name.startswith("spikingformer"):
        model.blocks[-1].register_forward_hook(lambda m, i, o: grid.append(o.detach()))
        tok.append(model.forward_features(torch.randn(2, 3, 32, 32)))
    else:
        model.stem.register_forward_hook(lambda m, i, o: grid.append(o.detach()))
        model.blocks[0].register_forward_pre_hook(lambda m, i: tok.append(i[0].detach()))
        model.forward_features(torch.randn(2, 3, 32, 32))
    assert grid[0].shape == (2, 2, 32, 8, 8)
    assert tok[0][1, 0, 8 * 3 + 5, 7] == grid[0][1, 0, 7, 3, 5] and torch.equal(tok[0], tokens(grid[0]))


def test_every_step_of_a_sequence_counts():
    # [T, B, C, H, W] input: the model sees every step; changing only the last step changes the logits.
    model = sf.create_model("spikingformer_dvs_2_256", depth=1, dim=32, num_heads=4, img_size=32).train()
    seq = torch.rand(4, 2, 2, 32, 32) * 4
    calls, _ = stem_trace(model, seq)
    assert torch.equal(calls[0][2], seq)
    with torch.no_grad():
        a = model(seq)
        seq2 = seq.clone()
        seq2[-1] = 0
        assert not torch.allclose(a, model(seq2))
