"""Online inference (``streaming.Stream``): the same read-out as the whole sequence at once, step by step."""
import pytest
import torch

import spikingformer as sf
from spikingformer.deploy.streaming import Stream
from spikingformer.nn.neuron import MultiStepLIF

from ..helpers import calibrate_bn

KW = dict(depth=1, dim=32, num_heads=4, num_classes=5)


def _model(x, name="spikingformer_4_256", **kw):
    """A model whose BatchNorm statistics come from ``x``, so that its neurons fire on it."""
    torch.manual_seed(0)
    model = sf.create_model(name, **{**KW, **kw})
    calibrate_bn(model, x)
    return model.eval()


@pytest.mark.parametrize("name,head", [("spikingformer_4_256", "avgpool_fc"), ("spikingformer_4_256", "sn_fc_avgpool"),
                                       ("spikformer_4_384", "sn_avgpool_fc"), ("spikformer_v2_8_384", "fc_avgpool")])
def test_a_stream_of_steps_reads_out_as_the_whole_sequence(name, head):
    size = 64 if name.startswith("spikformer_v2") else 32  # V2's stem halves the size four times
    x = torch.randn(4, 3, 3, size, size)  # a sequence [T, B, C, H, W]: every step differs
    model = _model(x, name, T=4, head=head, img_size=size)
    with torch.no_grad():
        whole = model.forward_steps(x)
    with Stream(model) as stream:
        got = [stream(x[0]), stream(x[1:3]), stream(x[3])]  # a step, a chunk of two, a step
        assert stream.steps == 4
    for logits, t in zip(got, (1, 3, 4)):
        torch.testing.assert_close(logits, whole[t - 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[-1])
    assert all(not m.streaming and m.membrane is None for m in model.modules() if isinstance(m, MultiStepLIF))


def test_a_repeated_image_streams_to_the_models_output_and_reset_starts_over():
    image = torch.randn(3, 3, 32, 32)
    model = _model(image, T=4)
    with torch.no_grad():
        expected = model(image)
    with Stream(model) as stream:
        outs = [stream(image) for _ in range(4)]
        torch.testing.assert_close(outs[-1], expected, atol=1e-5, rtol=1e-5)
        stream.reset()
        torch.testing.assert_close(stream(image), outs[0])  # from rest again
        assert stream.steps == 1


def test_without_memory_each_step_would_start_from_rest():
    """The membranes are what carries the stream: cleared after every call, the steps' read-outs differ."""
    x = torch.randn(4, 2, 3, 32, 32)
    model = _model(x, T=4)
    with torch.no_grad():
        whole = model.forward_steps(x)
    with Stream(model) as stream:
        for t in range(4):
            logits = stream(x[t])
            if t < 3:
                stream.reset()
    assert not torch.allclose(logits, whole[-1], atol=1e-4)


def test_misuse_is_named():
    model = _model(torch.randn(2, 3, 32, 32), T=2)
    stream = Stream(model)
    with pytest.raises(RuntimeError, match="inside `with Stream"):
        stream(torch.randn(1, 3, 32, 32))
    with stream:
        stream(torch.randn(2, 3, 32, 32))
        with pytest.raises(ValueError, match=r"this stream's steps are \[B, C, H, W\] = \(2, 3, 32, 32\), got \(3, "):
            stream(torch.randn(3, 3, 32, 32))
        with pytest.raises(RuntimeError, match="already streaming"), Stream(model):
            pass
    with pytest.raises(TypeError, match="vision models"):
        Stream(torch.nn.Linear(2, 2))
    assert Stream(torch.compile(model)).model is model  # the fast path's compiled model streams its module


def test_the_model_outside_the_streams_calls_is_untouched():
    """``model(x)`` inside the block neither reads nor moves the stream's membranes; the mode is restored."""
    x = torch.randn(4, 2, 3, 32, 32)
    model = _model(x, T=4).train()
    with torch.no_grad():
        whole, plain = model.eval().forward_steps(x), model(x)
    model.train()
    with Stream(model) as stream:
        stream(x[0])
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain)
        torch.testing.assert_close(stream(x[1]), whole[1], atol=1e-5, rtol=1e-5)
    assert model.training
