"""A small spiking transformer on SpikingJelly neurons, as a user of another repository writes one.

Nothing here imports spikingformer: it is the kind of file ``spikingformer verify`` and ``energy``
take with ``--model examples/sj_spikformer.py:build --model-kwargs dim=64``.  The shape follows
Spikformer / Spike-Driven Transformer: a conv stem that encodes the image, then blocks of
spike-form self-attention (``Q K^T V`` of spikes, no softmax) and an MLP, every Linear fed by a LIF.
The head is applied to the spikes of every token and step, and its logits averaged, so it too is fed 0/1.
"""
import torch
from spikingjelly.activation_based import functional, neuron
from torch import nn


def lif() -> nn.Module:
    return neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m")


class LinearBN(nn.Sequential):
    """Linear then BatchNorm over the features of ``[T, B, N, D]`` tokens."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out))

    def forward(self, x):
        return self[1](self[0](x).flatten(0, 2)).reshape(*x.shape[:3], -1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, 0.125
        self.qkv, self.qkv_lif = LinearBN(dim, 3 * dim), lif()
        self.attn_lif, self.proj = lif(), LinearBN(dim, dim)

    def forward(self, x):  # x: [T, B, N, D] spikes
        T, B, N, D = x.shape
        qkv = self.qkv(x)
        q, k, v = self.qkv_lif(qkv).reshape(T, B, N, 3, self.heads, D // self.heads).permute(3, 0, 1, 4, 2, 5)
        attn = q @ k.transpose(-2, -1) @ v * self.scale  # spikes in, integers out: a LIF turns them back
        return self.proj(self.attn_lif(attn.transpose(2, 3).reshape(T, B, N, D)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.lif1, self.attn = lif(), Attention(dim, heads)
        self.lif2, self.fc1, self.lif3, self.fc2 = lif(), LinearBN(dim, 2 * dim), lif(), LinearBN(2 * dim, dim)

    def forward(self, x):  # pre-activation residual (Spikingformer): every Linear is fed spikes
        x = x + self.attn(self.lif1(x))
        return x + self.fc2(self.lif3(self.fc1(self.lif2(x))))


class SJSpikformer(nn.Module):
    default_input_size = (3, 32, 32)  # (C, H, W): spikingformer reads it when --input-size is not given

    def __init__(self, dim: int = 128, depth: int = 2, heads: int = 4, num_classes: int = 10, T: int = 4):
        super().__init__()
        self.T = T  # spikingformer reads the time steps of a static input from here
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.head_lif, self.head = lif(), nn.Linear(dim, num_classes)

    def forward(self, img):  # img: [B, 3, H, W], shown to the network at each of T steps
        functional.reset_net(self)  # SpikingJelly neurons keep their membrane between calls
        x = self.stem(img).flatten(2).transpose(1, 2)  # [B, N, D]
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.head_lif(x)).mean((0, 2))  # [B, classes]: logits averaged over T and tokens


def build(dim: int = 128, depth: int = 2, heads: int = 4, num_classes: int = 10, T: int = 4) -> nn.Module:
    """The factory ``--model examples/sj_spikformer.py:build`` calls with ``--model-kwargs``."""
    return SJSpikformer(dim, depth, heads, num_classes, T)


if __name__ == "__main__":
    print(build(dim=64)(torch.randn(2, 3, 32, 32)).shape)
