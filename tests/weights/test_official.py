"""Weights in the official repositories' layout load into our models, through every command.

The state_dicts below are written from the official model files' module names and shapes
(zhouchenlin2096/Spikingformer, Spikingformer-CML, ZK-Zhou/spikformer), independently of our
own names, with random values: a mapping that put a tensor in the wrong place fails the
value checks, and one that missed a tensor fails the strict load.
"""
import argparse
import functools
import json
import re

import pytest
import torch
from torch import nn

from spikingformer import cli, create_model
from spikingformer.weights.checkpoint import CheckpointError, load_weights
from spikingformer.weights.official import (
    OfficialWeightsError,
    convert_official,
    official_layout,
)

from ..data.helpers import write_class_tree

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(prefix: str, c: int, g: torch.Generator) -> dict:
    # statistics on the scale of the random weights' outputs, so that neurons fire depending on the input
    return {f"{prefix}.weight": torch.rand(c, generator=g) + 0.5, f"{prefix}.bias": 0.5 * torch.randn(c, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_var": 0.1 * torch.rand(c, generator=g) + 0.1,
            f"{prefix}.num_batches_tracked": torch.tensor(100)}


def _w(*shape, g):
    return torch.randn(*shape, generator=g) * 0.1


def official_spikingformer(dim: int, depth: int, classes: int, in_ch: int = 3, cifar_names: bool = False,
                           seed: int = 0, stem: list[tuple[str, str]] | None = None,
                           mlp: tuple[str, str] = ("mlp1", "mlp2")) -> dict:
    """Spikingformer's official layout: ImageNet/DVS tokenizer ``proj{i}_conv`` (CIFAR: ``block{i}_conv``),
    Conv1d Q/K/V/proj, Conv2d MLP ``mlp1``/``mlp2``, unused LayerNorms ``norm1``/``norm2``, ``head``; ``stem``
    and ``mlp`` name the tokenizer's five (conv, bn) pairs and the MLP's convs otherwise (older layouts)."""
    g = torch.Generator().manual_seed(seed)
    sd, ch = {}, [in_ch, dim // 8, dim // 4, dim // 2, dim, dim]
    names = [f"block{i}" if cifar_names else ("proj" if i == 0 else f"proj{i}") for i in range(5)]
    for i, (conv, bn) in enumerate(stem or [(f"{n}_conv", f"{n}_bn") for n in names]):
        sd[f"patch_embed.{conv}.weight"] = _w(ch[i + 1], ch[i], 3, 3, g=g)
        sd.update(_bn(f"patch_embed.{bn}", ch[i + 1], g))
    for j in range(depth):
        b = f"block.{j}"
        for n in ("norm1", "norm2"):
            sd[f"{b}.{n}.weight"], sd[f"{b}.{n}.bias"] = torch.ones(dim), torch.zeros(dim)
        for n in ("q", "k", "v", "proj"):
            sd[f"{b}.attn.{n}_conv.weight"] = _w(dim, dim, 1, g=g)
            if n == "proj":
                sd[f"{b}.attn.proj_conv.bias"] = _w(dim, g=g)
            sd.update(_bn(f"{b}.attn.{n}_bn", dim, g))
        for n, (o, i) in zip(mlp, ((4 * dim, dim), (dim, 4 * dim))):
            sd[f"{b}.mlp.{n}_conv.weight"], sd[f"{b}.mlp.{n}_conv.bias"] = _w(o, i, 1, 1, g=g), _w(o, g=g)
            sd.update(_bn(f"{b}.mlp.{n}_bn", o, g))
    sd["head.weight"], sd["head.bias"] = _w(classes, dim, g=g), _w(classes, g=g)
    return sd


def official_spikformer(dim: int, depth: int, classes: int, seed: int = 0, cml: bool = False) -> dict:
    """Spikformer V1's official CIFAR layout: SPS ``proj_conv``, ``proj_conv1..3``, ``rpe_conv``; Linear
    Q/K/V with biases (``nn.Linear`` defaults), ``fc1_linear``/``fc2_linear``, unused LayerNorms.  ``cml``:
    Spikingformer-CML's cifar10/CML_Spikformer.py, whose SPS stages are ``block1..4`` (same blocks and head)."""
    g = torch.Generator().manual_seed(seed)
    sd, ch = {}, [3, dim // 8, dim // 4, dim // 2, dim]
    for i in range(4):
        sfx = "" if i == 0 else str(i)
        conv, bn = (f"block{i + 1}_conv", f"block{i + 1}_bn") if cml else (f"proj_conv{sfx}", f"proj_bn{sfx}")
        sd[f"patch_embed.{conv}.weight"] = _w(ch[i + 1], ch[i], 3, 3, g=g)
        sd.update(_bn(f"patch_embed.{bn}", ch[i + 1], g))
    sd["patch_embed.rpe_conv.weight"] = _w(dim, dim, 3, 3, g=g)
    sd.update(_bn("patch_embed.rpe_bn", dim, g))
    for j in range(depth):
        b = f"block.{j}"
        for n in ("norm1", "norm2"):
            sd[f"{b}.{n}.weight"], sd[f"{b}.{n}.bias"] = torch.ones(dim), torch.zeros(dim)
        for n in ("q", "k", "v", "proj"):
            sd[f"{b}.attn.{n}_linear.weight"], sd[f"{b}.attn.{n}_linear.bias"] = _w(dim, dim, g=g), _w(dim, g=g)
            sd.update(_bn(f"{b}.attn.{n}_bn", dim, g))
        for n, (o, i) in (("fc1", (4 * dim, dim)), ("fc2", (dim, 4 * dim))):
            sd[f"{b}.mlp.{n}_linear.weight"], sd[f"{b}.mlp.{n}_linear.bias"] = _w(o, i, g=g), _w(o, g=g)
            sd.update(_bn(f"{b}.mlp.{n}_bn", o, g))
    sd["head.weight"], sd["head.bias"] = _w(classes, dim, g=g), _w(classes, g=g)
    return sd


SMALL = dict(depth=2, dim=32, num_heads=4)


@pytest.mark.parametrize("name", ["spikingformer_8_512", "spikingformer_dagger_8_512", "spikingformer_4_384"])
@pytest.mark.parametrize("cifar_names", [False, True])
def test_spikingformer_weights_land_where_the_official_model_uses_them(name, cifar_names):
    official = official_spikingformer(32, 2, 7, cifar_names=cifar_names)
    ours, family, notes = convert_official(official)
    model = create_model(name, num_classes=7, **SMALL)
    model.load_state_dict(ours)  # strict: every tensor of ours is given, nothing left over
    assert family == "spikingformer" and "dropped 8 LayerNorm tensors" in notes[0]
    tok = "block" if cifar_names else "proj"
    stem = "block0" if cifar_names else "proj"
    assert torch.equal(model.tokenizer.encode.conv.weight, official[f"patch_embed.{stem}_conv.weight"])
    assert torch.equal(model.tokenizer.convs[2].bn.running_var, official[f"patch_embed.{tok}3_bn.running_var"])
    attn = model.blocks[1].attn
    assert torch.equal(attn.k.conv.weight[..., 0, 0], official["block.1.attn.k_conv.weight"][..., 0])
    assert torch.equal(attn.proj.conv.bias, official["block.1.attn.proj_conv.bias"])
    assert torch.equal(model.blocks[0].mlp.fc2.conv.weight, official["block.0.mlp.mlp2_conv.weight"])
    assert torch.equal(model.head.fc.weight, official["head.weight"])


def test_spikformer_qkv_biases_fold_into_batchnorm_exactly():
    official = official_spikformer(32, 2, 5)
    ours, family, notes = convert_official(official)
    model = create_model("spikformer_4_384", num_classes=5, **SMALL).eval()
    model.load_state_dict(ours)
    assert family == "spikformer" and any("folded 6 Q/K/V" in n for n in notes)
    # The official q branch: Linear with its bias, then eval-mode BatchNorm1d over channels.
    ref_lin, ref_bn = nn.Linear(32, 32), nn.BatchNorm1d(32).eval()
    ref_lin.load_state_dict({"weight": official["block.1.attn.q_linear.weight"],
                             "bias": official["block.1.attn.q_linear.bias"]})
    ref_bn.load_state_dict({k.split(".")[-1]: v for k, v in official.items() if k.startswith("block.1.attn.q_bn.")})
    x = torch.randn(2, 3, 16, 32)  # [T, B, N, D]
    want = ref_bn(ref_lin(x.flatten(0, 1)).transpose(1, 2)).transpose(1, 2).reshape(2, 3, 16, 32)
    torch.testing.assert_close(model.blocks[1].attn.q(x), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.stem.rpe.conv.weight, official["patch_embed.rpe_conv.weight"])
    assert torch.equal(model.stem.convs[3].bn.weight, official["patch_embed.proj_bn3.weight"])


def test_unknown_official_keys_and_foreign_layouts_are_named():
    sd = official_spikingformer(32, 1, 3)
    sd["block.0.attn.extra_gate.weight"] = torch.zeros(1)
    with pytest.raises(OfficialWeightsError, match="extra_gate"):
        convert_official(sd)
    assert official_layout({"tokenizer.encode.conv.weight": torch.zeros(1)}) is None


# The model options of the official cifar10.yml (Spikingformer-4-384), as its train.py's argparse spells them
CIFAR10_YML = dict(dim=384, num_heads=12, depths=4, layer=4, time_step=4, mlp_ratio=4)


def _timm_checkpoint(path, state, **options):
    """What timm's CheckpointSaver (the official train.py) writes: the command line as an argparse.Namespace."""
    args = argparse.Namespace(**{"model": "vitsnn", "lr": 5e-4, "mean": [0.4914, 0.4822, 0.4465], **CIFAR10_YML,
                                 **options})
    torch.save({"epoch": 399, "arch": "Spikingformer", "state_dict": state, "optimizer": {"state": {}},
                "version": 2, "args": args, "metric": 95.81}, path)
    return path


TINY = dict(dim=32, num_heads=4, depths=1, layer=1, time_step=1)  # the recorded options of a 1-32 state_dict


class Payload:  # any other class must still be refused by the weights-only loader
    pass


def test_timm_checkpoints_load_and_other_objects_stay_refused(tmp_path):
    f = _timm_checkpoint(tmp_path / "model_best.pth.tar", official_spikingformer(32, 1, 3), **TINY)
    state, build = load_weights(f)
    assert build["official"] == "spikingformer" and "tokenizer.convs.3.conv.weight" in state
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="arbitrary Python objects"):
        load_weights(tmp_path / "evil.pt")


def test_energy_and_verify_take_official_weights(tmp_path, capsys):
    f = _timm_checkpoint(tmp_path / "official.pth.tar", official_spikingformer(384, 4, 100))
    # --num-classes is read from the classifier (CIFAR-100 weights in a model whose default is 10)
    assert cli.main(["verify", "--model", "spikingformer_4_384", "--checkpoint", str(f)]) == 0
    assert "dropped 16 LayerNorm tensors" in capsys.readouterr().out
    assert cli.main(["energy", "--model", "spikingformer_4_384", "--checkpoint", str(f),
                     "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["total_mJ"] > 0
    assert cli.main(["energy", "--model", "spikformer_4_384", "--checkpoint", str(f)]) != 0
    assert "official spikingformer weights, which fit spikingformer_*" in capsys.readouterr().err


def test_eval_scores_official_weights_with_a_recipe(tmp_path, capsys):
    data = write_class_tree(tmp_path / "data" / "train", per_class=4).parent
    f = _timm_checkpoint(tmp_path / "official.pth.tar", official_spikingformer(32, 1, 3), **TINY)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: spikingformer_4_256\nmodel_args: {depth: 1, dim: 32, num_heads: 4, T: 1}\n"
                      "dataset: folder\nholdout: 6\nimg_size: 16\nval_batch_size: 4\nworkers: 0\n")
    assert cli.main(["eval", "--checkpoint", str(f), "--config", str(recipe), "--data", str(data),
                     "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["val_images"] == 6 and r["epoch"] is None and r["spike_driven"] is True
    assert "dropped 4 LayerNorm tensors" in capsys.readouterr().out
    # energy reads --data the way the recipe does: its held-out split and evaluation transform
    assert cli.main(["energy", "--checkpoint", str(f), "--model", "spikingformer_4_256", "--config", str(recipe),
                     "--data", str(data), "--t", "1", "--json", str(tmp_path / "e.json")]) == 0
    notes = json.loads((tmp_path / "e.json").read_text())["notes"]
    assert "input: folder val (held-out 6 of 12 train images, class-balanced, seed 0)" in notes
    # Without a recipe the file is not a run's checkpoint: the error says what to add.
    assert cli.main(["eval", "--checkpoint", str(f)]) == 2
    assert "add --config RECIPE, e.g. --config cifar10" in capsys.readouterr().err
    # A recipe whose model the weights do not fit: the mismatch is named, no traceback.
    assert cli.main(["eval", "--checkpoint", str(f), "--config", str(recipe), "--data", str(data),
                     "--set", "model_args.dim=64"]) == 2
    assert "does not fit spikingformer_4_256" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# The official forward passes, written from the official model files as plain functions over their
# state_dicts (eval mode), with a LIF neuron straight from SPEC §2. Our converted models must give the
# same logits: in float64 every spike product is exact, so any difference is a structural one
# (head split, pool placement, CML order, which tensors feed which layer).

def _lif(x, tau=2.0, th=1.0):
    v, out = torch.zeros_like(x[0]), []
    for xt in x:
        h = v + (xt - v) / tau
        s = (h >= th).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


_CALIBRATING = [False]


def _bn_eval(sd, p, x):
    """Eval-mode BN; while calibrating, batch statistics that overwrite the running ones (momentum 1)."""
    return nn.functional.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                                    sd[f"{p}.bias"], _CALIBRATING[0], 1.0, 1e-5)


def calibrated(sd, forward, img, qkv_beta):
    """Give ``sd`` (float64) running statistics of ``img`` and Q/K/V BN biases ``qkv_beta``, so that Q, K, V
    fire often enough for the attention neuron to fire at some positions and not at others."""
    sd = {k: v.double() if v.is_floating_point() else v.clone() for k, v in sd.items()}
    for k in sd:
        if re.search(r"attn\.[qkv]_bn\.bias$", k):
            sd[k] = sd[k] * 0.1 + qkv_beta
    _CALIBRATING[0] = True
    try:
        forward(sd, img)
    finally:
        _CALIBRATING[0] = False
    return sd


def attention_rates(model, img):
    out = []
    hooks = [m.register_forward_hook(lambda m, i, o: out.append(o.mean().item()))
             for n, m in model.named_modules() if n.endswith("sn_attn")]
    with torch.no_grad():
        logits = model(img)
    for h in hooks:
        h.remove()
    return logits, out


def _seq(fn, x):
    t, b = x.shape[:2]
    y = fn(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def _heads(x, t, b, n, h):  # [T, B, C, N] -> [T, B, h, N, C/h], as the official reshape
    return x.transpose(-1, -2).reshape(t, b, n, h, -1).permute(0, 1, 3, 2, 4)


def official_spikingformer_forward(sd, img, T, heads, pools, cml=False, tau=2.0):
    """``img``: images, repeated T times, or event frames ``[T, B, C, H, W]`` (the DVS models' input)."""
    F = nn.functional
    lif = functools.partial(_lif, tau=tau)
    x = img if img.dim() == 5 else img.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    def conv(p):
        return lambda z: _bn_eval(sd, f"patch_embed.{p}_bn", F.conv2d(z, sd[f"patch_embed.{p}_conv.weight"], padding=1))

    pool = lambda z: F.max_pool2d(z, 3, 2, 1)
    x = _seq(conv("proj"), x)
    for i in range(1, 5):
        if cml:  # ConvBN-MaxPool-LIF: the pool of stage i follows the previous ConvBN
            x = _seq(pool, x) if pools[i - 1] else x
            x = lif(x)
        else:
            x = lif(x)
            x = _seq(pool, x) if pools[i - 1] else x
        x = _seq(conv(f"proj{i}"), x)
    for j in range(sum(k.startswith("block.") and k.endswith("attn.q_conv.weight") for k in sd)):
        p = f"block.{j}"
        t, b, c, hh, ww = x.shape
        xs = lif(x).flatten(3)
        qkv = []
        for n in "qkv":
            y = _seq(lambda z: _bn_eval(sd, f"{p}.attn.{n}_bn", F.conv1d(z, sd[f"{p}.attn.{n}_conv.weight"])), xs)
            qkv.append(_heads(lif(y), t, b, hh * ww, heads))
        q, k, v = qkv
        a = (q @ (k.transpose(-2, -1) @ v)) * 0.125
        a = lif(a.transpose(3, 4).reshape(t, b, c, hh * ww), th=0.5)
        y = _seq(lambda z: _bn_eval(sd, f"{p}.attn.proj_bn", F.conv1d(z, sd[f"{p}.attn.proj_conv.weight"],
                                                                 sd[f"{p}.attn.proj_conv.bias"])), a)
        x = x + y.reshape(t, b, c, hh, ww)
        for n in ("mlp1", "mlp2"):
            x_in = x if n == "mlp1" else y
            y = _seq(lambda z: _bn_eval(sd, f"{p}.mlp.{n}_bn", F.conv2d(z, sd[f"{p}.mlp.{n}_conv.weight"],
                                                                   sd[f"{p}.mlp.{n}_conv.bias"])), lif(x_in))
        x = x + y
    return F.linear(x.flatten(3).mean(3).mean(0), sd["head.weight"], sd["head.bias"])


def official_spikformer_forward(sd, img, T, heads, cml=False):
    """Spikformer V1 on CIFAR: SPS conv-BN-LIF (pools after stages 2, 3), RPE, SEW blocks ending in LIF.
    ``cml``: Spikingformer-CML's CML_Spikformer.py, whose SPS stages ``block1..4`` are conv-BN-[pool]-LIF."""
    F = nn.functional
    x = img.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    pool = lambda z: _seq(lambda u: F.max_pool2d(u, 3, 2, 1), z)
    for i, sfx in enumerate(("", "1", "2", "3")):
        conv, bn = (f"patch_embed.block{i + 1}_conv", f"patch_embed.block{i + 1}_bn") if cml else \
            (f"patch_embed.proj_conv{sfx}", f"patch_embed.proj_bn{sfx}")
        x = _seq(lambda z: _bn_eval(sd, bn, F.conv2d(z, sd[f"{conv}.weight"], padding=1)), x)
        if cml:
            x = _lif(pool(x) if i >= 2 else x)
        else:
            x = _lif(x)
            x = pool(x) if i >= 2 else x
    x = x + _lif(_seq(lambda z: _bn_eval(sd, "patch_embed.rpe_bn", F.conv2d(z, sd["patch_embed.rpe_conv.weight"],
                                                                       padding=1)), x))
    x = x.flatten(3).transpose(-1, -2)  # [T, B, N, C]

    def lin_bn_lif(p, z, th=1.0):
        y = F.linear(z, sd[f"{p}_linear.weight"], sd[f"{p}_linear.bias"])
        return _lif(_bn_eval(sd, f"{p}_bn", y.flatten(0, 1).transpose(1, 2)).transpose(1, 2).reshape(y.shape), th=th)

    for j in range(sum(k.startswith("block.") and k.endswith("attn.q_linear.weight") for k in sd)):
        p = f"block.{j}"
        t, b, n, c = x.shape
        q, k, v = (lin_bn_lif(f"{p}.attn.{m}", x).reshape(t, b, n, heads, -1).permute(0, 1, 3, 2, 4) for m in "qkv")
        a = ((q @ k.transpose(-2, -1)) * 0.125) @ v
        a = _lif(a.transpose(2, 3).reshape(t, b, n, c), th=0.5)
        x = x + lin_bn_lif(f"{p}.attn.proj", a)
        x = x + lin_bn_lif(f"{p}.mlp.fc2", lin_bn_lif(f"{p}.mlp.fc1", x))
    return F.linear(x.mean(2).mean(0), sd["head.weight"], sd["head.bias"])


QKV_BETA = {"spikingformer_4_384": 1.0, "spikingformer_8_512": 1.5, "spikingformer_dagger_8_512": 1.5,
            "spikformer_4_384": 1.0}  # attention fires at 5-50 % of positions with these


@pytest.mark.parametrize("name,size,pools,cml", [
    ("spikingformer_4_384", 32, (False, False, True, True), False),
    ("spikingformer_8_512", 64, (True, True, True, True), False),
    ("spikingformer_dagger_8_512", 64, (True, True, True, True), True),
])
def test_converted_spikingformer_computes_the_official_forward(name, size, pools, cml):
    img = torch.randn(4, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward = lambda sd, x: official_spikingformer_forward(sd, x, 2, 4, pools, cml)
    sd = calibrated(official_spikingformer(32, 2, 5), forward, img, QKV_BETA[name])
    model = create_model(name, num_classes=5, T=2, **SMALL).double().eval()
    model.load_state_dict(convert_official(sd)[0])
    got, attn = attention_rates(model, img)
    torch.testing.assert_close(got, forward(sd, img), rtol=0, atol=1e-12)
    assert all(0.02 < r < 0.98 for r in attn), attn  # the attention neuron's output depends on Q, K and V


def test_converted_spikformer_computes_the_official_forward():
    img = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward = lambda sd, x: official_spikformer_forward(sd, x, 2, 4)
    sd = calibrated(official_spikformer(32, 2, 5), forward, img, QKV_BETA["spikformer_4_384"])
    model = create_model("spikformer_4_384", num_classes=5, T=2, **SMALL).double().eval()
    model.load_state_dict(convert_official(sd)[0])
    got, attn = attention_rates(model, img)
    torch.testing.assert_close(got, forward(sd, img), rtol=0, atol=1e-10)  # folded biases: rounding of mu - b
    assert all(0.02 < r < 0.98 for r in attn), attn


def test_export_writes_safetensors_that_name_their_model(tmp_path, capsys):
    from safetensors import safe_open

    f = _timm_checkpoint(tmp_path / "official.pth.tar", official_spikingformer(384, 4, 100))
    plain, folded = tmp_path / "m.safetensors", tmp_path / "deployed.safetensors"
    assert cli.main(["export", "--checkpoint", str(f), "--model", "spikingformer_4_384", "--out", str(plain)]) == 0
    assert cli.main(["export", "--checkpoint", str(plain), "--out", str(folded), "--fold-bn"]) == 0
    assert "BatchNorm folded" in capsys.readouterr().out
    with safe_open(str(folded), "pt") as s:
        meta, keys = s.metadata(), set(s.keys())
    assert meta["model"] == "spikingformer_4_384" and json.loads(meta["model_args"]) == {"num_classes": 100}
    assert meta["bn_folded"] == "true" and not any(".bn." in k for k in keys)
    # No --model needed any more; the deployed form measures the same energy as the trained form.
    reports = []
    for source in (f, plain, folded):
        model = [] if source != f else ["--model", "spikingformer_4_384"]
        assert cli.main(["energy", "--checkpoint", str(source), *model, "--json", str(tmp_path / "e.json")]) == 0
        reports.append(json.loads((tmp_path / "e.json").read_text()))
    assert reports[0]["total_mJ"] == reports[1]["total_mJ"]
    assert reports[2]["total_mJ"] == pytest.approx(reports[0]["total_mJ"], rel=1e-4)
    assert cli.main(["verify", "--checkpoint", str(folded)]) == 0
    # a bare state_dict does not name its model: it still needs --model, and says so
    torch.save(official_spikingformer(384, 4, 100), tmp_path / "bare.pth")
    bare = ["export", "--checkpoint", str(tmp_path / "bare.pth"), "--out", str(tmp_path / "x.safetensors")]
    assert cli.main(bare) == 2
    assert "give --model" in capsys.readouterr().err
