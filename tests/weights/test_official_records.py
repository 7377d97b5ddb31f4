"""What official checkpoints record of their model beyond tensor shapes, and the layouts of every official model file.

Heads, T and CML leave the tensors' shapes as they are, so the training args a timm checkpoint stores are the
only record of them: a model built otherwise is refused, naming both values.  The layouts below are written from
the official model files (and, for "lifconvbn", the official 8-512 energy log's module list), with random values.
"""
import pytest
import torch

from spikingformer import cli, create_model, load_model
from spikingformer.weights.checkpoint import load_weights
from spikingformer.weights.official import convert_official

from ..data.helpers import write_class_tree
from .test_official import (
    SMALL,
    TINY,
    _timm_checkpoint,
    attention_rates,
    calibrated,
    official_spikformer,
    official_spikformer_forward,
    official_spikingformer,
    official_spikingformer_forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_8_768_checkpoint_builds_its_8_heads_and_other_heads_are_refused(tmp_path):
    """SPEC §6 (corrected): the official imagenet.yml's 8-768 has 8 heads; 12 would load and predict otherwise."""
    f = _timm_checkpoint(tmp_path / "official.pth.tar", official_spikingformer(768, 1, 10),
                         dim=768, num_heads=8, depths=1, layer=1, time_step=4)
    model = load_model(f, "spikingformer_8_768", depth=1, num_classes=10)
    assert model.blocks[0].attn.num_heads == 8
    said = (r"trained with num_heads=8 \(recorded in the checkpoint\), but spikingformer_8_768 has num_heads=12; "
            r"build it so: --model-kwargs num_heads=8")
    with pytest.raises(ValueError, match=said):
        load_model(f, "spikingformer_8_768", depth=1, num_classes=10, num_heads=12)


@pytest.mark.parametrize("recorded,said", [
    (dict(num_heads=2), "trained with num_heads=2 (recorded in the checkpoint), but spikingformer_4_256 has "
                        "num_heads=4"),
    (dict(time_step=2), "trained with T=2 (recorded in the checkpoint), but spikingformer_4_256 has T=1"),
    (dict(model="CML_Spikingformer"), "trained with cml=True (recorded in the checkpoint), but spikingformer_4_256 "
                                      "has cml=False; the CML variants are the *_dagger_* models"),
])
def test_recorded_options_that_contradict_the_model_are_refused_by_name(tmp_path, capsys, recorded, said):
    f = _timm_checkpoint(tmp_path / "official.pth.tar", official_spikingformer(32, 1, 3), **{**TINY, **recorded})
    command = ["verify", "--model", "spikingformer_4_256", "--checkpoint", str(f), "--t", "1",
               "--model-kwargs", "depth=1", "dim=32", "num_heads=4"]
    assert cli.main(command) == 2
    assert said in capsys.readouterr().err


def test_a_checkpoint_whose_args_give_its_size_needs_no_model_name(tmp_path, capsys):
    """Spikformer V1's names say "no CML" (its CML twin's stem is block1..4): the args' size names the model."""
    f = _timm_checkpoint(tmp_path / "official.pth.tar", official_spikformer(384, 4, 10), num_heads=6)
    assert cli.main(["energy", "--checkpoint", str(f), "--t", "1"]) == 2  # its run was T=4: --t 1 contradicts it
    assert "trained with T=4" in capsys.readouterr().err
    assert cli.main(["energy", "--checkpoint", str(f)]) == 0
    out = capsys.readouterr().out
    assert "model spikformer_4_384 {'num_heads': 6, 'T': 4, 'mlp_ratio': 4.0}, as the checkpoint's training args" in out
    # Spikingformer's and Spikingformer-CML's files have the same tensor names: which one is not guessed
    f = _timm_checkpoint(tmp_path / "spikingformer.pth.tar", official_spikingformer(32, 1, 3),
                         **{**TINY, "depths": 4, "dim": 384})
    assert cli.main(["verify", "--checkpoint", str(f)]) == 2
    assert ("its training args record a 4-384 spikingformer but not whether it downsamples with CML: give --model "
            "spikingformer_4_384 or spikingformer_dagger_4_384") in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# "lifconvbn": the module list of the official energy log of the trained Spikingformer-8-512
# (zhouchenlin2096/Spikingformer, energy_consumption_calculation/test_spikingformer-8-512_eg.log): Spikformer's
# names (SPS proj_conv..proj_conv3 + rpe_conv, SSA q/k/v/proj_conv, MLP fc1/fc2_conv) on Spikingformer's
# pre-activation modules (proj_lif before q_conv, fc1_lif before fc1_conv, no rpe_lif). The same tensor names and
# shapes as Spikformer V1's ImageNet model.py: the training args tell them apart.

LOG_ARGS = dict(model="spikformer", layer=2, dim=32, num_heads=4, time_step=2, mlp_ratio=4, patch_size=16)


def official_lifconvbn(dim: int, depth: int, classes: int, seed: int = 0) -> dict:
    stem = [("proj_conv", "proj_bn"), ("proj_conv1", "proj_bn1"), ("proj_conv2", "proj_bn2"),
            ("proj_conv3", "proj_bn3"), ("rpe_conv", "rpe_bn")]
    return official_spikingformer(dim, depth, classes, seed=seed, stem=stem, mlp=("fc1", "fc2"))


def _as_current_spikingformer_names(sd: dict) -> dict:
    """The same tensors under the current official Spikingformer names: rpe_conv is the fifth tokenizer ConvBN."""
    names = {"proj_conv1": "proj1_conv", "proj_bn1": "proj1_bn", "proj_conv2": "proj2_conv", "proj_bn2": "proj2_bn",
             "proj_conv3": "proj3_conv", "proj_bn3": "proj3_bn", "rpe_conv": "proj4_conv", "rpe_bn": "proj4_bn",
             "fc1_conv": "mlp1_conv", "fc1_bn": "mlp1_bn", "fc2_conv": "mlp2_conv", "fc2_bn": "mlp2_bn"}

    def rename(key):
        head, _, last = key.rpartition(".")
        parts = head.split(".")
        return ".".join(parts[:-1] + [names.get(parts[-1], parts[-1]), last])
    return {rename(k): v for k, v in sd.items()}


def test_the_lifconvbn_checkpoint_is_the_spikingformer_it_is_and_refused_as_spikformer(tmp_path, capsys):
    img = torch.randn(4, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward = lambda sd, x: official_spikingformer_forward(_as_current_spikingformer_names(sd), x, 2, 4, (True,) * 4)
    sd = calibrated(official_lifconvbn(32, 2, 5), forward, img, 1.5)
    f = _timm_checkpoint(tmp_path / "model_best.pth.tar", sd, **LOG_ARGS)
    model = load_model(f, "spikingformer_8_512", depth=2, dim=32, num_heads=4, num_classes=5, T=2).double()
    got, attn = attention_rates(model, img)
    as_loaded = {k: v.float().double() if v.is_floating_point() else v for k, v in sd.items()}  # a float32 model's
    torch.testing.assert_close(got, forward(as_loaded, img), rtol=0, atol=1e-12)
    assert all(0.02 < r < 0.98 for r in attn), attn
    # as Spikformer V1 (whose ImageNet model has these tensor names) it would load and compute something else
    assert cli.main(["verify", "--model", "spikformer_8_512", "--checkpoint", str(f)]) == 2
    assert ("holds official spikingformer weights, which fit spikingformer_* / spikingformer_dagger_*, not "
            "spikformer_8_512 (its tensor names: the older 'lifconvbn'") in capsys.readouterr().err


def test_a_bare_state_dict_in_the_shared_names_is_read_as_the_model_asked_for_and_says_so(tmp_path, capsys):
    torch.save(official_lifconvbn(32, 1, 3), tmp_path / "bare.pth")
    state, build = load_weights(tmp_path / "bare.pth", "spikingformer_8_512")
    assert build["official"] == "lifconvbn" and "tokenizer.convs.3.conv.weight" in state
    assert "read as Spikingformer in the older 'lifconvbn' names" in build["notes"][0]
    state, build = load_weights(tmp_path / "bare.pth", "spikformer_8_512")
    assert build["official"] == "spikformer" and "stem.rpe.conv.weight" in state
    assert "the official 8-512 energy log's Spikingformer ('lifconvbn') has the same tensor names" in build["notes"][0]
    create_model("spikformer_8_512", depth=1, dim=32, num_heads=4, num_classes=3).load_state_dict(state)
    # eval --config: the recipe's model is the one asked for
    data = write_class_tree(tmp_path / "data" / "train", per_class=4).parent
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: spikingformer_8_512\nmodel_args: {depth: 1, dim: 32, num_heads: 4, T: 1}\n"
                      "dataset: folder\nholdout: 6\nimg_size: 16\nval_batch_size: 6\nworkers: 0\n")
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "bare.pth"), "--config", str(recipe),
                     "--data", str(data)]) == 0
    assert "read as Spikingformer in the older 'lifconvbn' names" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Spikingformer-CML's own models: cifar10/CML_Spikformer.py (Spikformer V1 with conv-BN-MaxPool-LIF SPS stages
# block1..4) and the cifar10-dvs / dvs128-gesture models (Spikingformer-dagger 2-256, tau 1.75).

def test_cml_spikformer_loads_as_spikformer_dagger_and_computes_the_official_forward(tmp_path, capsys):
    img = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward = lambda sd, x: official_spikformer_forward(sd, x, 2, 4, cml=True)
    sd = calibrated(official_spikformer(32, 2, 5, cml=True), forward, img, 1.0)
    ours, layout, notes = convert_official(sd)
    assert layout == "spikformer_cml" and any("folded 6 Q/K/V" in n for n in notes)
    model = create_model("spikformer_dagger_4_384", num_classes=5, T=2, **SMALL).double().eval()
    model.load_state_dict(ours)
    got, attn = attention_rates(model, img)
    torch.testing.assert_close(got, forward(sd, img), rtol=0, atol=1e-10)  # folded biases: rounding of mu - b
    assert all(0.02 < r < 0.98 for r in attn), attn
    torch.save(sd, tmp_path / "cml_spikformer.pth")
    assert cli.main(["verify", "--model", "spikformer_4_384", "--checkpoint", str(tmp_path / "cml_spikformer.pth"),
                     "--model-kwargs", "depth=2", "dim=32", "num_heads=4"]) == 2
    assert "trained with cml=True (recorded in the checkpoint), but spikformer_4_384 has cml=False" in \
        capsys.readouterr().err


def test_the_cml_dvs_model_is_spikingformer_dagger_dvs_with_its_tau():
    frames = (torch.rand(3, 4, 2, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.3).double()  # [T, B, 2, H, W]
    forward = lambda sd, x: official_spikingformer_forward(sd, x, 3, 4, (True,) * 4, cml=True, tau=1.75)
    sd = calibrated(official_spikingformer(32, 2, 10, in_ch=2), forward, frames, 1.5)
    model = create_model("spikingformer_dagger_dvs_2_256", img_size=32, T=3, **SMALL).double().eval()
    model.load_state_dict(convert_official(sd)[0])
    got, attn = attention_rates(model, frames)
    torch.testing.assert_close(got, forward(sd, frames), rtol=0, atol=1e-12)
    assert all(0.02 < r < 0.98 for r in attn), attn
    # tau is no tensor either: the plain DVS model (tau 1.5, no CML) computes something else from the same weights
    other = create_model("spikingformer_dvs_2_256", img_size=32, T=3, **SMALL).double().eval()
    other.load_state_dict(convert_official(sd)[0])
    assert not torch.allclose(attention_rates(other, frames)[0], got)


def test_every_official_model_file_has_a_name():
    """Parameter counts are pinned with the rest (paper_params_M, where each model is registered); here: the names exist, with CML where it belongs."""
    for name, cml in (("spikformer_dagger_4_384", True), ("spikingformer_dagger_dvs_2_256", True),
                      ("spikingformer_dagger_4_384", True), ("spikformer_4_384", False)):
        with torch.device("meta"):
            assert create_model(name).cfg.cml is cml, name
