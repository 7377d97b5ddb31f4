"""The one residual block (models/_blocks.py) composed as each family's: the layout official weights load into
(state_dict keys), the modules hooks see in data-flow order, and the same numbers however it is composed."""
import pytest
import torch

from spikingformer.models._blocks import Block, _merge_heads, _split_heads
from spikingformer.models.spikformer import MLP, SSA, SEWBlock
from spikingformer.models.spikingformer import PSSA, SMLP, MSBlock
from spikingformer.models.text import TextBlock, TextPSSA, TextSMLP

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def keys(layer: str, prefix: str, bias: bool) -> list[str]:
    return [f"{prefix}.{layer}.weight"] + ([f"{prefix}.{layer}.bias"] if bias else []) + [f"{prefix}.bn.{b}" for b in BN]


def block_keys(layer: str) -> list[str]:
    """The official repositories' tensors (``attn.q_conv``, ``mlp.fc1_bn``, ...) as ``weights.official`` renames them."""
    attn = [k for n in "qkv" for k in keys(layer, f"attn.{n}", False)] + keys(layer, "attn.proj", True)
    return attn + [k for n in ("fc1", "fc2") for k in keys(layer, f"mlp.{n}", True)]


# neurons by where each branch puts them: MS (pre-activation) before each synaptic layer, SEW (post-) after
MS_MODULES = ["attn", "attn.sn_in", "attn.q", "attn.k", "attn.v", "attn.sn_q", "attn.sn_k", "attn.sn_v", "attn.qkv",
              "attn.sn_attn", "attn.proj", "mlp", "mlp.sn1", "mlp.fc1", "mlp.sn2", "mlp.fc2"]
SEW_MODULES = ["attn", "attn.q", "attn.k", "attn.v", "attn.sn_q", "attn.sn_k", "attn.sn_v", "attn.qkv", "attn.sn_attn",
               "attn.proj", "attn.sn_proj", "mlp", "mlp.fc1", "mlp.sn1", "mlp.fc2", "mlp.sn2"]


@pytest.mark.parametrize("block,layer,modules,attn,mlp", [
    (MSBlock, "conv", MS_MODULES, PSSA, SMLP), (SEWBlock, "linear", SEW_MODULES, SSA, MLP),
    (TextBlock, "linear", MS_MODULES, TextPSSA, TextSMLP)])
def test_each_family_block_has_the_official_layout(block, layer, modules, attn, mlp):
    blk = block(16, num_heads=4)
    assert list(blk.state_dict()) == block_keys(layer)
    named = [n for n, _ in blk.named_modules() if n and n.count(".") < 2]
    assert named == modules
    assert (type(blk.attn), type(blk.mlp)) == (attn, mlp)
    assert blk.mlp.fc1.bn.num_features == 64  # hidden 4D


@pytest.mark.parametrize("block,attn,mlp,shape", [
    (MSBlock, PSSA, SMLP, (2, 3, 16, 3, 5)), (SEWBlock, SSA, MLP, (2, 3, 15, 16)),
    (TextBlock, TextPSSA, TextSMLP, (2, 3, 15, 16))])
def test_a_block_composed_by_arguments_is_the_family_block(block, attn, mlp, shape):
    """timm's ``Block(attn_layer=, mlp_layer=)`` spelling builds the same module, weights and numbers."""
    x = torch.randn(*shape) * 2
    torch.manual_seed(0)
    named = block(16, 4, 2.0, attn_threshold=0.25).train()
    torch.manual_seed(0)
    composed = Block(16, 4, 2.0, attn_threshold=0.25, attn_layer=attn, mlp_layer=mlp).train()
    assert list(named.state_dict()) == list(composed.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(named.state_dict().values(), composed.state_dict().values()))
    out = named(x)
    assert torch.equal(out, composed(x)) and out.shape == x.shape and not torch.equal(out, x)


def test_text_block_masks_padding_and_without_padding_is_unmasked():
    """An all-real mask normalizes over every token, as no mask does; pad tokens' K and V add nothing."""
    torch.manual_seed(0)
    blk = TextBlock(16, num_heads=4).train()
    x = torch.randn(2, 3, 6, 16) * 2
    assert torch.allclose(blk(x), blk(x, torch.ones(3, 6, dtype=torch.bool)), atol=1e-5)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    real = mask.expand(2, 3, 6)
    out = blk.eval()(x, mask)
    x[:, 1, 4:] = 100.0  # whatever the pad positions hold
    assert torch.equal(out[real], blk(x, mask)[real])


@pytest.mark.parametrize("shape,channels_last", [((2, 3, 8, 4, 5), False), ((2, 3, 8, 4, 5), True),
                                                 ((2, 3, 20, 8), False)])  # token sequences: no channels-last
def test_heads_split_by_channel_and_merge_back(shape, channels_last):
    x = torch.randn(*shape)
    if channels_last:  # as the fast path lays out a [T, B, C, H, W] stream
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(shape)
    heads = _split_heads(x, 2)
    c = shape[2] if len(shape) == 5 else shape[-1]
    assert heads.shape == (2, 3, 2, 20, c // 2)
    first = x[:, :, : c // 2] if len(shape) == 5 else x[..., : c // 2]
    assert torch.equal(heads[:, :, 0].flatten(), (first.flatten(3).transpose(-2, -1) if len(shape) == 5
                                                  else first).flatten())
    merged = _merge_heads(heads, x)
    assert torch.equal(merged, x)
    assert merged.is_contiguous() or merged[0].is_contiguous(memory_format=torch.channels_last)
