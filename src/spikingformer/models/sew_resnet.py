"""SEW ResNet (Fang et al., "Deep Residual Learning in Spiking Neural Networks", NeurIPS 2021): the convolutional
SEW-residual baselines of the Spikingformer paper's Table 2, built from SpikingJelly.

A light adapter: the network is SpikingJelly's own (``spikingjelly.activation_based.model.sew_resnet``), run in
multi-step mode, so it is the reference implementation rather than a restatement.  SpikingJelly is an optional
dependency: this module imports without it (the names stay registered) and building a model then says what to
install.

As the official ImageNet recipe (``fangwei123456/Spike-Element-Wise-ResNet``, ``imagenet/sew_resnet.py`` and the
``origin_logs/imagenet/sew_resnet/*/args.txt`` of its runs: ``connect_f='add'``, ``T=4``): IF neurons
(``MultiStepIFNode(detach_reset=True)``, threshold 1, hard reset to 0, the ATan surrogate of SpikingJelly's C++
neurons), the ADD connect function, a 1x1 ConvBN + IF neuron on the shortcut where a stage changes shape.
Where ours differs:

- the official stem runs ``conv1``/``bn1`` once on the image and repeats the result ``T`` times; we repeat the
  image first (direct encoding, ``SpikingVisionModel.check_input``): the same values (BatchNorm sees ``T``
  identical copies, so the same batch statistics), ``T`` times the first conv's work in the energy count;
- the read-out is our ``ClassifierHead("avgpool_fc")`` (Eq. 15): ``FC`` of the spatial and temporal average,
  what the official ``fc(avgpool(x).mean(0))`` computes; its weights are ``head.fc`` rather than ``fc``.

The ADD residual sums spikes into integers ``{0, 1, 2, ...}`` that the next block's first conv (and the next
stage's shortcut conv) multiply with weights: SEW ResNet is not spike-driven, the property the Spikingformer
paper's Fig. 1(a) discusses; ``spikingformer verify`` names those layers.

Energy: Table 2's figures for these rows (4.04, 4.89, 8.91, 12.89 mJ) come from Spikformer V2's Table 2 (4.035 mJ
at 3.88 G OPs for ResNet-34, ...), which prices the stem conv once, 118.0M MACs x 4.6 pJ = 0.543 mJ, and every other
operation as an accumulate, 3.88 G x 0.9 pJ = 3.492 mJ: integer inputs as ``k`` spikes, our
``estimate_energy(..., integer_inputs="ac")``, where our default (``"mac"``, Spikingformer's own reading) makes each
integer-fed conv ``T * FLOPs`` multiply-accumulates.  Our stem conv runs on each of the ``T`` copies (see above), so
it counts ``T`` times.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import Tensor, nn

from ..nn.layers import ClassifierHead, run_blocks
from ..utils.errors import InputError, MissingDependency
from ._base import SpikingVisionModel, build_config
from ._registry import Reported, register_model

try:  # optional: the rest of the package works without it
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import layer as sj_layer
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate
    from spikingjelly.activation_based.model import sew_resnet as sj_sew_resnet
    _MISSING = None
except ImportError as exc:  # not installed, or a dependency of its model zoo missing (h5py for SpikingJelly 2.0)
    sj_functional = sj_layer = sj_neuron = sj_surrogate = sj_sew_resnet = None
    _MISSING = exc

__all__ = ["SEWResNetConfig", "SEWResNet", "STAGES", "require_spikingjelly"]

# depth -> (SpikingJelly factory, blocks' channel expansion): torchvision's ResNet layouts
STAGES = {18: ("sew_resnet18", 1), 34: ("sew_resnet34", 1), 50: ("sew_resnet50", 4),
          101: ("sew_resnet101", 4), 152: ("sew_resnet152", 4)}
NEURONS = ("if", "lif")
CONNECT = ("ADD", "AND", "IAND")


def require_spikingjelly():
    """SpikingJelly's ``sew_resnet`` module, or an ``ImportError`` that says how to install it."""
    if _MISSING is not None:
        raise MissingDependency(f"SEW ResNet models are built from SpikingJelly, which does not import here ({_MISSING}): "
                          f"pip install spikingjelly h5py") from _MISSING
    return sj_sew_resnet


@dataclass(frozen=True)
class SEWResNetConfig:
    depth: int = 34
    in_chans: int = 3
    num_classes: int = 1000
    img_size: int = 224
    T: int = 4
    neuron: str = "if"          # "if" (the paper's ImageNet models) or "lif" (SpikingJelly LIFNode, ``tau``)
    tau: float = 2.0            # LIF neurons and the head's SN (``sn_*`` heads) only
    cnf: str = "ADD"            # the connect function g(S, A) of SEW: ADD, AND or IAND
    head: str = "avgpool_fc"
    zero_init_residual: bool = False  # official flag: zero the last BN of each block (and bias 1 for AND)

    def __post_init__(self):
        if self.depth not in STAGES:
            raise InputError(f"depth must be one of {sorted(STAGES)}, got {self.depth}")
        if self.neuron not in NEURONS:
            raise InputError(f"unknown neuron {self.neuron!r}; valid neurons: {', '.join(NEURONS)}")
        if self.cnf not in CONNECT:
            raise InputError(f"unknown connect function {self.cnf!r}; valid: {', '.join(CONNECT)}")
        if self.in_chans < 1 or self.num_classes < 0:
            raise InputError(f"in_chans must be >= 1 and num_classes >= 0 (0: no classifier), got in_chans="
                             f"{self.in_chans}, num_classes={self.num_classes}")
        if self.T < 1 or not 1.0 < self.tau < float("inf"):
            raise InputError(f"T must be >= 1 and tau > 1, got T={self.T}, tau={self.tau}")

    @property
    def dim(self) -> int:
        """Channels of the last stage: what the head reads."""
        return 512 * STAGES[self.depth][1]


class SEWResNet(SpikingVisionModel):
    """SpikingJelly's SEW ResNet in multi-step mode: ``conv1 -> bn1 -> sn1 -> maxpool -> layer1..4``, then our
    head.  The modules keep SpikingJelly's names, so its ``sew_resnet`` state_dicts load as they are but for ``fc``
    -> ``head.fc`` (the official repository's, SpikingJelly 0.0.0.0.x ``SeqToANNContainer`` s, name a block's conv and
    BN ``conv1.module.0`` / ``conv1.module.1`` where we have ``conv1`` / ``bn1``)."""

    patch_size = 32  # the stride of the whole network: inputs must be multiples of it

    def __init__(self, cfg: SEWResNetConfig):
        super().__init__()
        sew = require_spikingjelly()
        self.cfg = cfg
        factory, _ = STAGES[cfg.depth]
        node = sj_neuron.IFNode if cfg.neuron == "if" else functools.partial(sj_neuron.LIFNode, tau=cfg.tau)
        net = getattr(sew, factory)(cnf=cfg.cnf, spiking_neuron=node, surrogate_function=sj_surrogate.ATan(),
                                    detach_reset=True, num_classes=1, zero_init_residual=cfg.zero_init_residual)
        if cfg.in_chans != 3:
            net.conv1 = sj_layer.Conv2d(cfg.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        sj_functional.set_step_mode(net, "m")
        for name in ("conv1", "bn1", "sn1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))
        self.head = ClassifierHead(cfg.dim, cfg.num_classes, cfg.head, cfg.tau)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        sj_functional.reset_net(self)  # every forward starts from rest, as our own neurons do
        x = self.maxpool(self.sn1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = run_blocks(stage, x, checkpointing=self.grad_checkpointing)
        # No membrane (nor the graph it holds) outlives the forward; and a checkpointed block, run again in the
        # backward pass, starts from rest as the first time, not from where its last step left the membrane.
        sj_functional.reset_net(self)
        return x.flatten(3).transpose(2, 3)  # [T, B, H*W, C]: the head averages the positions

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^(?:conv1|bn1)\.", blocks=r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)")

    def bn_pairs(self) -> list[tuple[str, str]]:
        """Each BatchNorm with the conv its forward applies it to, for ``deploy.fold_bn``: SpikingJelly's
        blocks apply ``bn{k}`` to ``conv{k}``'s output and ``downsample`` is ``(conv, bn)``."""
        names = dict(self.named_modules())
        pairs = [("conv1", "bn1")]
        for block in (f"{s}.{i}" for s in ("layer1", "layer2", "layer3", "layer4") for i in range(len(names[s]))):
            pairs += [(f"{block}.conv{k}", f"{block}.bn{k}") for k in (1, 2, 3) if f"{block}.conv{k}" in names]
            if f"{block}.downsample" in names:
                pairs.append((f"{block}.downsample.0", f"{block}.downsample.1"))
        return pairs


def _create(depth: int, overrides: dict) -> SEWResNet:
    return SEWResNet(build_config(SEWResNetConfig, dict(depth=depth), overrides))


def _table2(top1: float, energy_mJ: float) -> tuple[Reported, ...]:
    return (Reported("Spikingformer Table 2", "ImageNet", 4, top1, energy_mJ),)


@register_model(paper_params_M=21.79, reported=_table2(67.04, 4.04))
def sew_resnet34(**kw):
    """SEW ResNet-34 (ADD, IF neurons), ImageNet, T=4, 21.79M parameters."""
    return _create(34, kw)


@register_model(paper_params_M=25.56, reported=_table2(67.78, 4.89))
def sew_resnet50(**kw):
    """SEW ResNet-50 (ADD, IF neurons), ImageNet, T=4, 25.56M parameters."""
    return _create(50, kw)


@register_model(paper_params_M=44.55, reported=_table2(68.76, 8.91))
def sew_resnet101(**kw):
    """SEW ResNet-101 (ADD, IF neurons), ImageNet, T=4, 44.55M parameters."""
    return _create(101, kw)


@register_model(paper_params_M=60.19, reported=_table2(69.26, 12.89))
def sew_resnet152(**kw):
    """SEW ResNet-152 (ADD, IF neurons), ImageNet, T=4, 60.19M parameters."""
    return _create(152, kw)
