"""SEW ResNet (SpikingJelly's, adapted): parameter counts, shapes, state between calls, the spike-driven verdict
with the layers named, energy, the optional dependency, timm."""
import subprocess
import sys

import pytest
import torch

import spikingformer as sf
from spikingformer.analysis.verify import verify_model
from spikingformer.models import paper_facts, sew_resnet

pytest.importorskip("spikingjelly")

# SpikingJelly's SEW ResNets have torchvision's ResNet parameters: conv1/bn1, the stages, a 512*expansion -> 1000 fc
SEW_PARAMS = {"sew_resnet34": 21_797_672, "sew_resnet50": 25_557_032, "sew_resnet101": 44_549_160,
              "sew_resnet152": 60_192_808}


@pytest.mark.parametrize("name", sorted(SEW_PARAMS))
def test_parameter_count_is_torchvisions_and_the_papers(name):
    with torch.device("meta"):
        model = sf.create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert n == SEW_PARAMS[name]
    assert abs(n / 1e6 - paper_facts(name).params_M) / paper_facts(name).params_M < 0.005
    assert paper_facts(name).reported[0].T == 4 and paper_facts(name).reported[0].table == "Spikingformer Table 2"


def test_neurons_are_the_official_recipes():
    """IF neurons with detached reset and SpikingJelly's ATan surrogate, ADD connect function, multi-step mode."""
    from spikingjelly.activation_based import neuron, surrogate

    model = sf.create_model("sew_resnet34", num_classes=10)
    nodes = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
    assert len(nodes) == 1 + 2 * 16 + 3  # stem, two per block, one per shortcut projection
    assert all(type(m) is neuron.IFNode and m.detach_reset and m.step_mode == "m" and m.v_threshold == 1.0
               and m.v_reset == 0.0 and isinstance(m.surrogate_function, surrogate.ATan) for m in nodes)
    assert model.layer1[0].cnf == "ADD"
    lif = sf.create_model("sew_resnet34", neuron="lif", tau=1.5, num_classes=10)
    assert {type(m) for m in lif.modules() if isinstance(m, neuron.BaseNode)} == {neuron.LIFNode}
    assert lif.sn1.tau == 1.5


@pytest.fixture(scope="module")
def sew34():
    torch.manual_seed(0)
    return sf.create_model("sew_resnet34", T=2, num_classes=10).eval()


def test_forward_shapes_and_every_call_starts_from_rest(sew34):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = sew34(x)
        assert out.shape == (1, 10)
        assert torch.equal(sew34(x), out)  # no membrane carried over from the call before
        steps = sew34.forward_steps(x)
        assert steps.shape == (2, 1, 10)
        torch.testing.assert_close(steps[-1], out)
        torch.testing.assert_close(sew34(torch.stack([x, x])), out)  # [T, B, C, H, W] as the repeated image
    assert all(not isinstance(m.v, torch.Tensor) for m in sew34.modules() if hasattr(m, "v_threshold"))
    with pytest.raises(ValueError, match="multiple of the tokenizer's patch size 32"):
        sew34(torch.randn(1, 3, 48, 48))


def test_other_input_channels_and_timm_groups():
    model = sf.create_model("sew_resnet34", in_chans=2, T=1, num_classes=3).eval()
    assert model.conv1.weight.shape == (64, 2, 7, 7) and model.conv1.step_mode == "m"
    assert model(torch.rand(1, 1, 2, 32, 32)).shape == (1, 3)
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.named_parameters()))
    assert len(groups) == 1 + 16 + 1  # stem, each block, the head


def test_grad_checkpointing_gives_the_same_gradients():
    """A checkpointed block runs twice; SpikingJelly neurons keep their membrane between calls, so the second run
    must start from rest too, or it would spike differently."""
    torch.manual_seed(0)
    model = sf.create_model("sew_resnet34", depth=18, T=2, num_classes=4).train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["sew_resnet34", "sew_resnet50"])  # basic blocks, bottlenecks
def test_not_spike_driven_the_add_residual_feeds_integers(name):
    torch.manual_seed(0)
    model = sf.create_model(name, T=2, num_classes=10).train()  # batch statistics: an untrained model fires
    with torch.no_grad():
        cert = verify_model(model, torch.randn(2, 3, 32, 32))
    layers = {r.name: r for r in cert.layers}
    assert layers["conv1"].role == "encoding"
    assert layers["layer1.0.conv1"].ok and layers["layer1.0.conv1"].proven  # max-pooled spikes of the stem
    bad = [r.name for r in cert.violations]
    assert bad[0] == "layer1.1.conv1"  # the first conv after an ADD residual
    assert "layer2.0.downsample.0" in bad and "layer4.2.conv1" in bad
    assert all(name.endswith(("conv1", "downsample.0")) for name in bad)  # a block's later convs see spikes
    assert all(i.kind == i.built == "integer" and i.built_by == "add" for r in cert.violations for i in r.inputs)
    assert max(max(i.counts) for r in cert.violations for i in r.inputs) >= 2
    assert cert.exit_code == 1


def test_energy_counts_the_integer_fed_convs_as_macs(sew34):
    report = sf.estimate_energy(sew34, torch.randn(1, 3, 64, 64))
    rows = {r.name: r for r in report.layers}
    assert not report.spike_driven and report.T == 2
    assert rows["conv1"].kind == "real" and rows["layer1.0.conv2"].kind == "spike" and rows["layer1.0.conv2"].mac == 0
    assert rows["layer1.1.conv1"].kind == "integer" and rows["layer1.1.conv1"].ac == 0
    assert rows["layer1.1.conv1"].mac == 2 * rows["layer1.1.conv1"].flops
    assert report.model_config["depth"] == 34 and report.backbone_mJ > 0


def test_without_spikingjelly_the_names_stay_and_building_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sew_resnet, "_MISSING", ImportError("No module named 'spikingjelly'"))
    assert "sew_resnet34" in sf.list_models()
    with pytest.raises(ImportError, match="pip install spikingjelly"):
        sf.create_model("sew_resnet34")


def test_the_package_imports_without_spikingjelly():
    code = ("import sys; sys.modules['spikingjelly'] = None\n"
            "import spikingformer as sf\n"
            "assert 'sew_resnet50' in sf.list_models()\n"
            "try:\n    sf.create_model('sew_resnet50')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install spikingjelly" in out.stdout


def test_registered_with_timm():
    import timm

    assert sf.register_with_timm()
    model = timm.create_model("sew_resnet34", num_classes=5, T=1).eval()
    assert isinstance(model, sew_resnet.SEWResNet) and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_table2_energy_is_the_stem_conv_once_plus_accumulates():
    """The Table 2 energies (from Spikformer V2's Table 2, with its G OPs) are 4.6 pJ x the stem conv's MACs, run
    once, plus 0.9 pJ x every other operation: integer inputs as accumulates (``integer_inputs="ac"``)."""
    model = sf.create_model("sew_resnet34", T=1, num_classes=10).eval()
    report = sf.estimate_energy(model, torch.randn(1, 3, 224, 224))
    stem = next(r for r in report.layers if r.name == "conv1")
    assert stem.flops == 64 * 3 * 7 * 7 * 112 * 112
    for name, giga_ops in (("sew_resnet34", 3.88), ("sew_resnet50", 4.83), ("sew_resnet101", 9.30),
                           ("sew_resnet152", 13.72)):
        mj = (4.6 * stem.flops + 0.9 * giga_ops * 1e9) * 1e-9
        assert mj == pytest.approx(paper_facts(name).reported[0].energy_mJ, abs=0.006)


def test_listings_leave_out_what_cannot_be_built_and_say_why(monkeypatch, capsys):
    """Without SpikingJelly, `spikingformer models` lists the SEW ResNets with the install line instead of
    crashing, and `compare` leaves their rows out with a note."""
    from spikingformer import cli
    from spikingformer.analysis.compare import buildable

    monkeypatch.setattr(sew_resnet, "_MISSING", ImportError("No module named 'spikingjelly'"))
    assert not buildable("sew_resnet34") and buildable("spikingformer_4_256")
    assert cli.main(["models", "sew_resnet3*"]) == 0
    assert "pip install spikingjelly h5py" in capsys.readouterr().out
    assert cli.main(["compare", "sew_resnet3*"]) == 2
    assert "sew_resnet34 left out: its optional package is not installed" in capsys.readouterr().err
