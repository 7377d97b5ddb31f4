"""The layers of SPEC §2-4 against hand computation: max-pool, the attention product, the heads of Eq. 15-18."""
import pytest
import torch

import spikingformer as sf
from spikingformer.nn.layers import ClassifierHead, SeqMaxPool, SpikeQKV


def test_maxpool_is_3x3_stride_2_pad_1():
    # SPEC §4: MaxPool(3, stride 2, pad 1).  A spike at (1, 1) of a 4x4 map lies in all four 3x3 windows
    # (rows/cols -1..1 and 1..3); a 2x2 pool would only see it in the top-left output.
    x = torch.zeros(1, 1, 1, 4, 4)
    x[..., 1, 1] = 1
    assert SeqMaxPool()(x).flatten().tolist() == [1.0] * 4
    assert SeqMaxPool()(torch.zeros(2, 1, 3, 5, 5)).shape == (2, 1, 3, 3, 3)  # (5 + 2 - 3) // 2 + 1


@pytest.mark.parametrize("n,d", [(3, 2), (2, 3)])  # both orders of evaluation: N > d and N <= d
def test_attention_product_is_q_kt_v_times_one_eighth(n, d):
    # All-ones Q, K, V: Q K^T = d everywhere, (Q K^T) V = n d everywhere, times s = 0.125 -> 6 / 8.
    ones = torch.ones(1, n, d)
    assert torch.equal(SpikeQKV()(ones, ones, ones), torch.full((1, n, d), 0.75))
    q, k, v = ((torch.rand(2, 3, n, d) < 0.5).float() for _ in range(3))
    assert torch.equal(SpikeQKV()(q, k, v), torch.einsum("...ij,...kj,...kl->...il", q, k, v) / 8)


@pytest.mark.parametrize("kind,expected", [("avgpool_fc", [1.5, 2.8]), ("fc_avgpool", [1.5, 2.8]),
                                           ("sn_avgpool_fc", [0.5, 1.25]), ("sn_fc_avgpool", [0.5, 1.25])])


def test_heads_by_hand(kind, expected):
    # X [T=2, B=1, N=2, D=2]; FC y = W x + b with W = [[1, 0], [1, 1]], b = [0, 0.5].
    x = torch.tensor([[[[4.0, 1.6], [0.0, 0.0]]], [[[0.0, 1.6], [2.0, 0.0]]]])
    # (FC is linear, so Eq. 17 equals Eq. 15 and Eq. 18 equals Eq. 16 in value; they differ in cost only.)
    # Eq. 15/17: mean over T and tokens = [(4 + 0 + 0 + 2) / 4, (1.6 + 0 + 1.6 + 0) / 4] = [1.5, 0.8] -> [1.5, 2.8].
    # Eq. 16/18: SN (tau 2, V_th 1) per (token, channel) over T: [4, 0] -> H 2, 0 -> spikes 1, 0;
    # [1.6, 1.6] -> H 0.8, 1.2 -> 0, 1;  [0, 2] -> H 0, 1 -> 0, 1;  [0, 0] -> 0, 0.
    # Means [(1 + 0 + 0 + 1) / 4, (0 + 1 + 0 + 0) / 4] = [0.5, 0.25] -> [0.5, 1.25].
    head = ClassifierHead(2, 2, kind)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        head.fc.bias.copy_(torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(head(x), torch.tensor([expected]))


def test_dvs_head_neuron_uses_tau_1_5():
    # SPEC §2: the DVS models use tau 1.5, their SN heads too.  Constant 1.6: H = 1.6 / 1.5 >= 1 fires at
    # every step; with tau 2 the first step would be silent (H = 0.8).
    model = sf.create_model("spikingformer_dvs_2_256", depth=1, dim=32, num_heads=4, head="sn_avgpool_fc")
    assert model.head.sn(torch.full((3, 1), 1.6)).squeeze().tolist() == [1.0] * 3
    model.reset_classifier(4)
    assert model.head.sn(torch.full((3, 1), 1.6)).squeeze().tolist() == [1.0] * 3


@pytest.mark.parametrize("head", ["avgpool_fc", "sn_avgpool_fc", "fc_avgpool", "sn_fc_avgpool"])
def test_read_out_after_t_steps_is_the_model_run_for_t_steps(head):
    """``forward_steps``: neurons never look ahead, so step t's read-out is what the same weights give at T = t."""
    from ..helpers import calibrate_bn

    torch.manual_seed(0)
    kw = dict(depth=1, dim=32, num_heads=4, num_classes=5, head=head)
    model, x = sf.create_model("spikingformer_4_256", T=4, **kw), torch.randn(6, 3, 32, 32)
    calibrate_bn(model, x)
    with torch.no_grad():
        steps = model.forward_steps(x)
        assert steps.shape == (4, 6, 5)
        torch.testing.assert_close(steps[-1], model(x), atol=1e-6, rtol=1e-5)
        for t in (1, 2, 3):
            short = sf.create_model("spikingformer_4_256", T=t, **kw).eval()
            short.load_state_dict(model.state_dict())
            torch.testing.assert_close(steps[t - 1], short(x), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(steps[0], steps[-1])  # the read-out does change with time
