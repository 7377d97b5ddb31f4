"""Official SEW ResNet weights (fangwei123456/Spike-Element-Wise-ResNet, ``imagenet/sew_resnet.py``) on our
``sew_resnet*``: the official module tree restated below in plain PyTorch with its attribute names, its
state_dict converted, loaded strictly, the same logits."""
import pytest
import torch
from torch import nn

import spikingformer as sf
from spikingformer.weights import official, official_sew

pytest.importorskip("spikingjelly")


# ---- the official module tree (names as there; T and the class count made arguments) ----

class SeqToANNContainer(nn.Module):
    def __init__(self, *modules):
        super().__init__()
        self.module = nn.Sequential(*modules)

    def forward(self, x):
        y = self.module(x.flatten(0, 1))
        return y.view(*x.shape[:2], *y.shape[1:])


class MultiStepIFNode(nn.Module):  # threshold 1, hard reset to 0 (detach_reset only changes gradients)
    def forward(self, x):
        v, out = torch.zeros_like(x[0]), []
        for x_t in x:
            v = v + x_t
            s = (v >= 1.0).to(x.dtype)
            v = v * (1 - s)
            out.append(s)
        return torch.stack(out)


def conv_bn(cin, cout, k, stride=1):
    return SeqToANNContainer(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1, self.sn1 = conv_bn(cin, planes, 3, stride), MultiStepIFNode()
        self.conv2, self.sn2 = conv_bn(planes, planes, 3), MultiStepIFNode()
        self.downsample = downsample

    def forward(self, x):
        out = self.sn2(self.conv2(self.sn1(self.conv1(x))))
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1, self.sn1 = conv_bn(cin, planes, 1), MultiStepIFNode()
        self.conv2, self.sn2 = conv_bn(planes, planes, 3, stride), MultiStepIFNode()
        self.conv3, self.sn3 = conv_bn(planes, planes * 4, 1), MultiStepIFNode()
        self.downsample = downsample

    def forward(self, x):
        out = self.sn3(self.conv3(self.sn2(self.conv2(self.sn1(self.conv1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class SEWResNet(nn.Module):
    def __init__(self, block, layers, num_classes, T):
        super().__init__()
        self.T, self.inplanes = T, 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.sn1 = MultiStepIFNode()
        self.maxpool = SeqToANNContainer(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, 1 if i == 0 else 2))
        self.avgpool = SeqToANNContainer(nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, n, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv_bn(self.inplanes, planes * block.expansion, 1, stride), MultiStepIFNode())
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, None) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # the stem runs once, then T copies
        x = self.maxpool(self.sn1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 2).mean(dim=0))


@pytest.mark.parametrize("depth,block,layers", [(18, BasicBlock, (2, 2, 2, 2)), (50, Bottleneck, (3, 4, 6, 3))])
def test_official_weights_load_strictly_and_give_the_same_logits(depth, block, layers):
    torch.manual_seed(0)
    ref = SEWResNet(block, layers, num_classes=7, T=2).double().eval()
    for m in ref.modules():  # trained-like BatchNorms: the random statistics make every layer count
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(0.0, 0.5)
    state = ref.state_dict()
    assert official_sew.is_layout(state)
    ours_state, notes = official_sew.convert(state)
    assert notes == []
    model = sf.create_model("sew_resnet34", depth=depth, T=2, num_classes=7).double().eval()
    assert not official_sew.is_layout(model.state_dict())
    model.load_state_dict(ours_state, strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, ref(x))
    assert out.std() > 0.01


def test_layout_is_disjoint_from_the_other_official_layouts_and_unknown_keys_are_named():
    spikformer_like = {"patch_embed.proj_conv.weight": torch.zeros(1), "block.0.attn.q_conv.weight": torch.zeros(1)}
    assert not official_sew.is_layout(spikformer_like)
    assert official.official_layout(SEWResNet(BasicBlock, (1, 1, 1, 1), 3, 1).state_dict()) == "sew_resnet"
    with pytest.raises(official.OfficialWeightsError, match="layer1.0.extra.weight"):
        official_sew.convert({"layer1.0.conv1.module.0.weight": torch.zeros(1),
                              "layer1.0.extra.weight": torch.zeros(1)})
    assert all(name.startswith(official_sew.FAMILY) for name in sf.list_models("sew*"))


def test_official_weights_load_through_the_users_route_and_only_into_sew_resnet(tmp_path):
    """``torch.save`` of the official state_dict, read by ``load_model`` (eval, energy, verify, export): the
    official logits, and a clear refusal for a model of another family."""
    torch.manual_seed(0)
    ref = SEWResNet(BasicBlock, (2, 2, 2, 2), num_classes=7, T=2).double().eval()
    torch.save(ref.state_dict(), tmp_path / "official.pth")
    model = sf.load_model(str(tmp_path / "official.pth"), "sew_resnet34", depth=18, T=2, num_classes=7).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    with pytest.raises(official.OfficialWeightsError, match="official sew_resnet weights, which fit sew_resnet\\*"):
        sf.load_model(str(tmp_path / "official.pth"), "spikingformer_4_384", num_classes=7)
