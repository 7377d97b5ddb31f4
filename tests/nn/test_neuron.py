import importlib.util

import pytest
import torch

from spikingformer.nn.neuron import MultiStepLIF, multistep_lif


def reference_lif(x, tau=2.0, v_th=1.0, v_reset=0.0, alpha=4.0):
    """Plain step-by-step LIF with an explicit surrogate, written independently of the library."""
    v = torch.full_like(x[0], v_reset)
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) / tau
        sg = torch.sigmoid(alpha * (h - v_th))
        hard = (h >= v_th).to(x.dtype)
        s = hard + (sg - sg.detach())  # forward: exactly the hard spike; backward: sigmoid
        v = h * (1 - hard) + v_reset * hard   # detach_reset: the reset uses the constant spike
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(4, 3), (6, 2, 5, 7), (3, 2, 4, 5, 5)])
@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (1.5, 1.0), (2.0, 0.5)])
def test_matches_step_by_step_reference(shape, tau, v_th):
    x = (torch.randn(shape, dtype=torch.float64) * 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    s = multistep_lif(x, tau, v_th)
    s_ref = reference_lif(x_ref, tau, v_th)
    assert torch.equal(s, s_ref.detach())
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert 0 < s.mean() < 1  # the input drives a non-trivial mix of spikes
    g = torch.randn_like(s)
    (s * g).sum().backward()
    (s_ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=0)


def test_no_state_between_calls_and_shape_kept():
    lif = MultiStepLIF()
    x = torch.rand(5, 2, 3, 4) * 3
    first = lif(x)
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(lif(x), first)
    # a silent call in between must not leave charge behind
    lif(torch.full_like(x, 0.9))
    assert torch.equal(lif(x), first)


def test_attention_threshold_and_hard_reset():
    # Constant input 1.0 with tau 2: H = 0.5, 0.75, 0.875, ... never reaches 1.0 -> silent.
    x = torch.ones(6, 1)
    assert multistep_lif(x).sum() == 0
    # With V_th = 0.5 it fires at t=0, resets to 0, and fires again every step.
    assert multistep_lif(x, v_threshold=0.5).squeeze().tolist() == [1.0] * 6


def test_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        MultiStepLIF(tau=1.0)


def test_traces_into_one_graph():
    # fullgraph=True fails on any graph break; aot_eager also traces the surrogate's backward.
    fn = torch.compile(multistep_lif, fullgraph=True, backend="aot_eager")
    x = (torch.randn(4, 3, 8) * 2).requires_grad_()
    s = fn(x)
    s.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    s2 = multistep_lif(x2)
    s2.sum().backward()
    assert torch.equal(s, s2)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.skipif(importlib.util.find_spec("spikingjelly") is None, reason="spikingjelly not installed")
@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (1.5, 1.0), (2.0, 0.5)])
def test_matches_spikingjelly_lifnode(tau, v_th):
    from spikingjelly.activation_based import neuron

    sj = neuron.LIFNode(tau=tau, v_threshold=v_th, detach_reset=True, step_mode="m")
    x = (torch.randn(8, 4, 16) * 2).requires_grad_()
    x_sj = x.detach().clone().requires_grad_()
    s = MultiStepLIF(tau, v_threshold=v_th)(x)
    s_sj = sj(x_sj)
    assert torch.equal(s, s_sj)
    g = torch.randn_like(s)
    (s * g).sum().backward()
    (s_sj * g).sum().backward()
    torch.testing.assert_close(x.grad, x_sj.grad, atol=1e-6, rtol=1e-5)


def test_layer_defaults_are_tau_2_threshold_1():
    # SPEC §2 defaults, by hand: constant 1.6 with tau 2, V_th 1 charges H = 0.8 (silent), then
    # 0.8 + (1.6 - 0.8) / 2 = 1.2 (spike, reset to 0), and so on: 0, 1, 0, 1.  (tau 1.5 would fire at once.)
    x = torch.full((4, 1), 1.6)
    assert MultiStepLIF()(x).squeeze().tolist() == [0.0, 1.0, 0.0, 1.0]
    # The layer passes its own threshold on: at V_th = 0.5, constant 1.0 fires every step (H = 0.5 each time).
    assert MultiStepLIF(v_threshold=0.5)(torch.ones(3, 1)).squeeze().tolist() == [1.0] * 3
    # and its tau: 1.6 / 1.5 >= 1 fires at the first step, and again after each reset.
    assert MultiStepLIF(tau=1.5)(x).squeeze().tolist() == [1.0] * 4


def test_membrane_starts_at_and_resets_to_v_reset():
    # V[-1] = V_reset and the hard reset goes back to V_reset (SPEC §2).  V_reset = -0.5, tau 2, V_th 1,
    # constant input 2.6: H0 = -0.5 + (2.6 - 0) / 2 = 0.8 (silent); H1 = 0.8 + (2.6 - 1.3) / 2 = 1.45 (spike,
    # V = -0.5); then the same again.  Starting from V = 0 would give H0 = 0 + (2.6 + 0.5) / 2 = 1.05 (spike
    # at once); resetting to 0 would give H2 = 1.05 (spike again).
    x = torch.full((4, 1), 2.6)
    assert multistep_lif(x, v_reset=-0.5).squeeze().tolist() == [0.0, 1.0, 0.0, 1.0]
    y = torch.randn(5, 4, 6, dtype=torch.float64) * 2
    assert torch.equal(multistep_lif(y, 1.5, 1.0, -0.3), reference_lif(y, 1.5, 1.0, -0.3))
