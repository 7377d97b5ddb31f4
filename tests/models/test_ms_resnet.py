"""MS-ResNet-104 against the official structure (``Ariande1/MS-ResNet``, ``models/MS_ResNet.py``), restated below
in plain PyTorch with its attribute names: the same tensors, the same spikes and logits; which convs see spikes."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikingformer as sf
from spikingformer.analysis.verify import verify_model
from spikingformer.models.ms_resnet import MSResNet, ms_resnet_104
from spikingformer.nn.neuron import MultiStepLIF


# ---- the official module tree (names as there; time_window, widths and classes made arguments) ----

class OfficialSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        return u.gt(0.5).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class mem_update(nn.Module):  # noqa: N801
    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, x):
        out, mem, spike = torch.zeros_like(x), 0, 0
        for i in range(self.T):
            mem = mem * 0.25 * (1 - spike) + x[i] if i else x[i]
            spike = OfficialSpike.apply(mem)
            out[i] = spike
        return out


class Snn_Conv2d(nn.Conv2d):  # noqa: N801
    def forward(self, x):
        return torch.stack([super(Snn_Conv2d, self).forward(x_t) for x_t in x])


class batch_norm_2d(nn.Module):  # noqa: N801  (tdBN: BatchNorm3d over [B, C, T, H, W])
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm3d(c)

    def forward(self, x):
        y = self.bn(x.transpose(0, 2).contiguous().transpose(0, 1).contiguous())
        return y.contiguous().transpose(0, 1).contiguous().transpose(0, 2)


class BasicBlock_104(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, stride, T):
        super().__init__()
        self.residual_function = nn.Sequential(
            mem_update(T), Snn_Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), batch_norm_2d(cout),
            mem_update(T), Snn_Conv2d(cout, cout, 3, padding=1, bias=False), batch_norm_2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.AvgPool3d((1, 2, 2), stride=(1, 2, 2)),
                                          Snn_Conv2d(cin, cout, 1, stride=1, bias=False), batch_norm_2d(cout))

    def forward(self, x):
        return self.residual_function(x) + self.shortcut(x)


class ResNet_104(nn.Module):  # noqa: N801
    def __init__(self, num_block, width=64, num_classes=1000, T=6, in_chans=3):
        super().__init__()
        self.T, self.in_channels = T, width
        self.conv1 = nn.Sequential(Snn_Conv2d(in_chans, width, 3, padding=1, stride=2),
                                   Snn_Conv2d(width, width, 3, padding=1, stride=1),
                                   Snn_Conv2d(width, width, 3, padding=1, stride=1), batch_norm_2d(width))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # defined, never called
        self.mem_update = mem_update(T)
        self.conv2_x = self._make_layer(width, num_block[0])
        self.conv3_x = self._make_layer(width * 2, num_block[1])
        self.conv4_x = self._make_layer(width * 4, num_block[2])
        self.conv5_x = self._make_layer(width * 8, num_block[3])
        self.fc = nn.Linear(width * 8, num_classes)
        self.dropout = nn.Dropout(p=0.2)

    def _make_layer(self, cout, n):
        layers = []
        for stride in [2] + [1] * (n - 1):
            layers.append(BasicBlock_104(self.in_channels, cout, stride, self.T))
            self.in_channels = cout
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(torch.stack([x] * self.T))
        out = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(out))))
        out = F.adaptive_avg_pool3d(self.mem_update(out), (None, 1, 1))
        out = out.view(out.size()[0], out.size()[1], -1)
        return self.fc(self.dropout(out.sum(dim=0) / out.size()[0]))


_BLOCK = {"conv1.conv.": "residual_function.1.", "conv1.bn.": "residual_function.2.bn.",
          "conv2.conv.": "residual_function.4.", "conv2.bn.": "residual_function.5.bn.",
          "shortcut.proj.conv.": "shortcut.1.", "shortcut.proj.bn.": "shortcut.2.bn."}


def official_name(key: str, layers) -> str:
    """Our state_dict key -> the official one (stem ``conv1.{0,1,2}`` + ``conv1.3.bn``, ``conv{2..5}_x.j``, ``fc``)."""
    if key.startswith("stem."):
        return key.replace("stem.convs.", "conv1.").replace("stem.bn.", "conv1.3.bn.")
    if key.startswith("head.fc."):
        return key[len("head."):]
    i, rest = re.fullmatch(r"blocks\.(\d+)\.(.*)", key).groups()
    i, stage = int(i), 0
    while i >= layers[stage]:
        i, stage = i - layers[stage], stage + 1
    prefix = next(p for p in _BLOCK if rest.startswith(p))
    return f"conv{stage + 2}_x.{i}.{_BLOCK[prefix]}{rest[len(prefix):]}"


def test_parameters_are_the_official_resnet104s_tensor_for_tensor():
    with torch.device("meta"):
        ours, official = ms_resnet_104(), ResNet_104([3, 8, 32, 8], T=5)
    shapes = {k: v.shape for k, v in official.state_dict().items()}
    assert {official_name(k, ours.cfg.layers): v.shape for k, v in ours.state_dict().items()} == shapes
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in official.parameters()) == 77_350_504
    assert abs(n / 1e6 - 78.37) / 78.37 > 0.005  # why it is not registered: Table 2 says 78.37M
    assert ours.cfg.T == 5 and ours.patch_size == 32


def test_our_lif_spikes_as_the_official_mem_update():
    """decay 0.25, threshold 0.5 on ``u`` == LIF with tau 4/3, threshold 0.375 on our membrane ``0.75 u``."""
    x = torch.randn(6, 1000, dtype=torch.float64)
    assert torch.equal(MultiStepLIF(4 / 3, 0.375)(x), mem_update(6)(x))


def test_forward_matches_the_official_structure():
    torch.manual_seed(0)
    layers = (1, 2, 1, 1)
    ours = ms_resnet_104(layers=layers, width=4, T=3, num_classes=7).double().eval()
    for m in ours.modules():  # real BN statistics and scales: the zero-initialised last BNs would hide the branches
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    official = ResNet_104(list(layers), width=4, num_classes=7, T=3).double().eval()
    state = {official_name(k, layers): v for k, v in ours.state_dict().items()}
    official.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, official(x))
        assert out.std() > 0.01  # not a constant read-out: spikes reached the head
    assert isinstance(ours, MSResNet)


def test_branch_convs_see_spikes_stem_and_stage_shortcuts_see_reals():
    torch.manual_seed(0)
    model = ms_resnet_104(layers=(1, 2, 1, 1), width=8, T=2, num_classes=5).train()
    for blk in model.blocks:  # as trained: a branch that adds something, so the next neuron fires on it too
        nn.init.ones_(blk.conv2.bn.weight)
    with torch.no_grad():
        cert = verify_model(model, torch.randn(2, 3, 64, 64))
    assert [r.name for r in cert.violations] == [
        "stem.convs.1", "stem.convs.2", "blocks.0.shortcut.proj.conv", "blocks.1.shortcut.proj.conv",
        "blocks.3.shortcut.proj.conv", "blocks.4.shortcut.proj.conv"]
    assert [i.built_by for r in cert.violations for i in r.inputs] == ["conv2d"] * 2 + ["avg_pool2d"] * 4
    branch = [r for r in cert.layers if re.fullmatch(r"blocks\.\d+\.conv[12]\.conv", r.name)]
    assert len(branch) == 10 and all(r.ok and r.proven for r in branch)
    report = sf.estimate_energy(model, torch.randn(1, 3, 64, 64))
    rows = {r.name: r for r in report.layers}
    assert rows["blocks.0.shortcut.proj.conv"].kind == "real" and rows["blocks.0.conv1.conv"].kind == "spike"


def test_bad_config():
    with pytest.raises(ValueError, match="layers four counts >= 1"):
        ms_resnet_104(layers=(3, 8, 0, 8))
    with pytest.raises(TypeError, match="expects tuple"):
        ms_resnet_104(layers=(3, 8, 32))
