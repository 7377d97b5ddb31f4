"""Gradient checkpointing (timm's ``set_grad_checkpointing``): the same step, recomputed blocks."""
import copy

import pytest
import torch

import spikingformer as sf
from spikingformer.models.mae import MAEConfig, SpikformerV2MAE
from spikingformer.nn.layers import ConvBN, LinearBN

TINY = dict(depth=2, dim=32, num_heads=4, T=2, num_classes=5)


def _vision(name):
    return sf.create_model(name, **TINY), (torch.randn(4, 3, 32, 32),), torch.arange(4) % 5


def _text():
    model = sf.create_model("spikingformer_text_2_128", vocab_size=50, max_len=12, dim=32, T=2, num_classes=3)
    ids = torch.randint(1, 50, (4, 12))
    ids[1, 7:] = 0  # padding: the mask travels to every recomputed block
    return model, (ids,), torch.arange(4) % 3


CASES = {"spikingformer": lambda: _vision("spikingformer_4_384"), "spikformer": lambda: _vision("spikformer_4_384"),
         "spikformer_v2": lambda: _vision("spikformer_v2_8_384"), "text": _text,
         "sd_transformer": lambda: _vision("sd_transformer_2_512")}


def _train_step(model, inputs, y):
    loss = torch.nn.functional.cross_entropy(model(*inputs), y)
    loss.backward()
    return (loss.detach(), {n: p.grad for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


# synaptic layers outside every checkpointed block or stage (run once a step); every other one runs twice
NOT_RECOMPUTED = {"spikingformer": {"tokenizer.encode"}, "spikformer": {"stem.rpe"}, "spikformer_v2": set(),
                  "text": set(), "sd_transformer": {"tokenizer.encode", "tokenizer.rpe"}}


def _count_layer_calls(model):
    calls = {}
    for name, m in model.named_modules():
        if isinstance(m, (ConvBN, LinearBN)):
            calls[name] = 0
            m.register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


def _count_block_calls(model):
    calls = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops once it has what it needs
    return calls


def _plain_and_checkpointed(family: str = "spikingformer"):
    """A seeded model of ``family``, a copy of it that recomputes its blocks, and a batch ``(inputs, y)``."""
    torch.manual_seed(0)
    plain, inputs, y = CASES[family]()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    return plain, ckpt, inputs, y


@pytest.mark.parametrize("family", CASES)
def test_checkpointed_step_equals_the_plain_one(family):
    """Same loss, gradients and BatchNorm statistics (counts included), bit for bit, while every block and
    stem stage runs twice: once forward, once recomputed in the backward pass."""
    plain, ckpt, inputs, y = _plain_and_checkpointed(family)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    calls = _count_layer_calls(ckpt)
    loss_a, grads_a, bufs_a = _train_step(plain.train(), inputs, y)
    loss_b, grads_b, bufs_b = _train_step(ckpt.train(), inputs, y)
    assert {n for n, c in calls.items() if c == 1} == NOT_RECOMPUTED[family]
    assert {c for n, c in calls.items() if n not in NOT_RECOMPUTED[family]} == {2}
    assert torch.equal(loss_a, loss_b)
    for n in grads_a:
        assert torch.equal(grads_a[n], grads_b[n]), n
    assert any(n.endswith("running_mean") for n in bufs_b)
    for n in bufs_a:
        assert torch.equal(bufs_a[n], bufs_b[n]), n


def test_no_recomputation_without_gradients():
    model, inputs, _ = CASES["spikingformer"]()
    model.set_grad_checkpointing()
    calls = _count_block_calls(model)
    with torch.no_grad():
        model.train()(*inputs)
    assert len(calls) == len(model.blocks)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def test_momentum_none_keeps_the_cumulative_average():
    """BatchNorm with ``momentum=None`` averages over ``num_batches_tracked``: a recomputation that
    counted itself would weigh the batch twice."""
    torch.manual_seed(0)
    plain, inputs, y = CASES["spikingformer"]()
    for m in plain.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    for _ in range(2):
        bufs_a = _train_step(plain.train(), inputs, y)[2]
        bufs_b = _train_step(ckpt.train(), inputs, y)[2]
    for n in bufs_a:
        assert torch.equal(bufs_a[n], bufs_b[n]), n
    assert all(m.momentum is None for m in ckpt.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_mae_checkpoints_its_sparse_stem_encoder_and_decoder():
    """Every stage of the sparse stem, every encoder block and every decoder block runs twice; the
    step is the plain one, sparse BatchNorm statistics included."""
    torch.manual_seed(0)
    plain = SpikformerV2MAE(MAEConfig("spikformer_v2_8_384", dict(depth=2, dim=32, num_heads=2, img_size=64),
                                      decoder_dim=32, decoder_depth=1, decoder_heads=2))
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert ckpt.grad_checkpointing and ckpt.encoder.grad_checkpointing and ckpt.encoder.stem.grad_checkpointing
    calls = _count_block_calls(ckpt.encoder)
    decoder_calls = []
    ckpt.decoder_blocks[0].register_forward_pre_hook(lambda *_: decoder_calls.append(1))
    convs = {}  # each ConvBN by its BN: the tiled stem's 3x3 convs are functional calls (models.mae.tile_conv_bn)
    for name, m in ckpt.encoder.stem.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            convs[name] = 0
            m.register_forward_pre_hook(lambda *_, n=name: convs.__setitem__(n, convs[n] + 1))
    imgs = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, ckpt):
        loss = model.train()(imgs, generator=torch.Generator().manual_seed(1)).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                        {n: b.clone() for n, b in model.named_buffers()}))
    assert len(calls) == 2 * 2 and len(decoder_calls) == 2
    assert len(convs) == 12 and set(convs.values()) == {2}, convs
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for n, g in results[0][1].items():
        assert torch.equal(g, results[1][1][n]), n
    for n, b in results[0][2].items():
        assert torch.equal(b, results[1][2][n]), n


@pytest.fixture
def fresh_dynamo():
    # compiling the same model at other shapes later would otherwise be traced with dynamic shapes
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_checkpointed_step_equals_the_compiled_plain_one(fresh_dynamo, monkeypatch):
    """Under ``torch.compile`` checkpointing is the compiler's (its forward graph alone updates BatchNorm)."""
    monkeypatch.setitem(TINY, "depth", 1)  # one checkpointed block: compiling (per block) is the test's cost
    plain, ckpt, inputs, y = _plain_and_checkpointed()
    loss_a, grads_a, bufs_a = _train_step(torch.compile(plain.train()), inputs, y)
    torch._dynamo.reset()
    loss_b, grads_b, bufs_b = _train_step(torch.compile(ckpt.train()), inputs, y)
    assert torch.equal(loss_a, loss_b)
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-6, rtol=1e-5, msg=n)
    for n in bufs_a:
        torch.testing.assert_close(bufs_a[n], bufs_b[n], atol=1e-7, rtol=1e-6, msg=n)


def test_a_graph_backpropagated_twice_recomputes_twice():
    """``checkpoint`` enters its recomputation context at every recomputation: ``retain_graph=True`` (or
    ``torch.autograd.grad`` more than once) recomputes again, with the same gradients and statistics."""
    plain, ckpt, inputs, y = _plain_and_checkpointed()
    results = []
    for model in (plain.train(), ckpt.train()):
        loss = torch.nn.functional.cross_entropy(model(*inputs), y)
        loss.backward(retain_graph=True)
        loss.backward()
        results.append(({n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers())))
    for a, b in zip(*results):
        for n in a:
            assert torch.equal(a[n], b[n]), n
    assert all(m.momentum == 0.1 for m in ckpt.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_the_probe_counts_a_training_step_once():
    """``SynapticProbe`` around forward and backward: the recomputation is not another call of its layers."""
    plain, ckpt, inputs, y = _plain_and_checkpointed()
    seen = []
    for model in (plain.train(), ckpt.train()):
        with sf.SynapticProbe(model) as probe:
            torch.nn.functional.cross_entropy(model(*inputs), y).backward()
        seen.append({n: (r.calls, [s.macs for s in r.stages], [(s.numel, s.nonzero) for s in r.inputs])
                     for n, r in probe.layers.items()})
    assert seen[0] == seen[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_path_with_checkpointing_trains_as_without(fresh_dynamo, monkeypatch):
    """On CUDA the fast path compiles the Triton LIF kernels into checkpointed blocks: the same fp32 step."""
    from spikingformer.nn.fast import FastPath

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    plain = sf.create_model("spikingformer_4_256", **TINY).cuda()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x, y = torch.randn(4, 3, 32, 32, device="cuda"), torch.arange(4, device="cuda") % 5
    results = []
    for model in (plain, ckpt):
        torch._dynamo.reset()
        fast = FastPath(amp_dtype=None).prepare(model.train())
        loss = torch.nn.functional.cross_entropy(fast(x.contiguous(memory_format=torch.channels_last)), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()},
                        {n: b.clone() for n, b in model.named_buffers()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-6)
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, atol=1e-5, rtol=1e-4, msg=n)
    for n, b in results[0][2].items():
        torch.testing.assert_close(results[1][2][n], b, atol=1e-6, rtol=1e-5, msg=n)
