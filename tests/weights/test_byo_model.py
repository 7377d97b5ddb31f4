"""Bring your own model: ``--model FILE.py:FACTORY`` / ``MODULE:CALLABLE`` through ``verify`` and ``energy``."""
import json
import sys
from pathlib import Path

import pytest
import torch

from spikingformer.cli import main
from spikingformer.weights.loading import load_model

from ..real_data import cifar_jpeg_tree

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sj_spikformer.py"

# A third-party file: SpikingJelly neurons, its own names (``patch_embed.``/``block.``, as the official
# repositories' keys start), no declared input size, T as an attribute.
USER_FILE = '''
import torch
from spikingjelly.activation_based import functional, neuron
from torch import nn

from helper_layers import width_of  # a sibling module, as a repository's model file imports its own


class Net(nn.Module):
    def __init__(self, width, T):
        super().__init__()
        self.T = T
        self.patch_embed = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width))
        self.block = nn.ModuleList(nn.Sequential(neuron.IFNode(step_mode="m"), nn.Linear(width, width))
                                   for _ in range(2))
        self.head = nn.Sequential(neuron.IFNode(step_mode="m"), nn.Linear(width, 3))

    def forward(self, x):
        functional.reset_net(self)
        x = self.patch_embed(x).flatten(2).transpose(1, 2).unsqueeze(0).repeat(self.T, 1, 1, 1)
        for blk in self.block:
            x = x + blk(x)
        return self.head(x).mean((0, 2))


def make(width=8, T=2, fail=False):
    from helper_lazy import checked  # imported when called, as some repositories' factories do

    if fail:
        raise RuntimeError("width must be a power of two")
    return Net(checked(width_of(width)), T)


def stepless():  # single-step neurons, and no T to say so
    return nn.Sequential(nn.Conv2d(3, 4, 3), neuron.IFNode(), nn.Conv2d(4, 2, 3))


def not_a_model(**kw):
    return {"weights": 1}

CONSTANT = 3
'''


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    """``my_net.py`` and its sibling modules; importing it puts their folder on sys.path, which is undone."""
    monkeypatch.setattr(sys, "path", [*sys.path])
    (tmp_path / "helper_layers.py").write_text("def width_of(w):\n    return w\n")
    (tmp_path / "helper_lazy.py").write_text("def checked(w):\n    return w\n")
    path = tmp_path / "my_net.py"
    path.write_text(USER_FILE)
    yield path
    for name in ("helper_layers", "helper_lazy"):
        sys.modules.pop(name, None)


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_and_energy_of_a_users_file(user_file, tmp_path, capsys):
    spec = f"{user_file}:make"
    code, out, _ = run(capsys, "verify", "--model", spec, "--model-kwargs", "width=8", "--input-size", "8",
                       "--plot", tmp_path / "figs", "--json", tmp_path / "cert.json")
    assert code == 0, out  # every Linear is fed the IF neurons' spikes: proven
    assert f"verdict: {spec} is spike-driven" in out
    assert (tmp_path / "figs" / "fig3.png").stat().st_size > 0  # its last numbered block: block.1.
    cert = json.loads((tmp_path / "cert.json").read_text())
    assert [r["name"] for r in cert["layers"]] == ["patch_embed.0", "block.0.1", "block.1.1", "head.1"]
    code, _, err = run(capsys, "verify", "--model", spec, "--input-size", "8", "--plot", tmp_path / "b0",
                       "--block", "block.0")  # a prefix of the user's own names
    assert code == 0 and (tmp_path / "b0" / "fig3.png").exists()
    code, _, err = run(capsys, "verify", "--model", spec, "--input-size", "8", "--plot", tmp_path,
                       "--block", "stages.2")
    assert code == 2 and "has no conv/linear layer named stages.2.*" in err
    code, out, _ = run(capsys, "energy", "--model", spec, "--model-kwargs", "width=8", "T=3", "--input-size", "8")
    assert code == 0 and f"{spec}: images (3, 8, 8), T=3, 2 image(s)" in out
    assert "block.1.1" in out and "spike-driven: yes, proven" in out


def test_a_users_checkpoint_loads_by_its_own_keys_and_a_misfit_is_named(user_file, tmp_path, capsys):
    from spikingformer.weights.user_model import build_user_model

    weights = tmp_path / "w.pth"
    spec = f"{user_file}:make"
    # its keys start patch_embed./block., as the official layouts' do: loaded as they are, never renamed
    torch.save(build_user_model(spec, width=8).state_dict(), weights)
    code, out, err = run(capsys, "energy", "--model", spec, "--input-size", "8", "--checkpoint", weights)
    assert code == 0, err
    assert "random weights" not in out
    net = load_model(weights, model=spec, width=8)  # the Python route is the same one
    assert torch.equal(net.patch_embed[0].weight, torch.load(weights)["patch_embed.0.weight"]) and not net.training
    code, _, err = run(capsys, "energy", "--model", spec, "--model-kwargs", "width=16", "--input-size", "8",
                       "--checkpoint", weights)
    assert code == 2 and f"checkpoint {weights} does not fit {spec}" in err and "mis-shaped" in err
    assert len(err.strip().splitlines()) == 1


def test_a_module_callable(tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "their_repo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(USER_FILE.replace("from helper_layers import width_of", "width_of = int")
                                   .replace("from helper_lazy import checked", "checked = int"))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run(capsys, "verify", "--model", "their_repo.models:make", "--input-size", "8")
    assert code == 0, err
    assert "verdict: their_repo.models:make is spike-driven" in out


@pytest.mark.parametrize("spec, kwargs, message", [
    ("{dir}/missing.py:make", [], "model {dir}/missing.py:make: no such file: {dir}/missing.py"),
    ("{file}:nope", [], "{file} has no attribute 'nope' (its callables: Net, make, not_a_model, stepless"),
    ("{file}:CONSTANT", [], "CONSTANT is a int, not a callable that builds a model"),
    ("{file}:not_a_model", [], "not_a_model() returned a dict, not a torch.nn.Module"),
    ("{file}:make", ["fail=true"], "make(fail=True) raised RuntimeError: width must be a power of two"),
    ("{file}:make", ["depth=2"], "make(depth=2) raised TypeError: make() got an unexpected keyword argument 'depth'"),
    ("no_such_pkg.models:make", [], "importing no_such_pkg.models raised ModuleNotFoundError: No module named"),
    ("{dir}/broken.py:make", [], "importing {dir}/broken.py raised ZeroDivisionError: division by zero"),
    ("{dir}/script.py:make", [], "importing {dir}/script.py raised SystemExit: 3"),
    (":make", [], "expected FILE.py:FACTORY or MODULE:CALLABLE"),
])
def test_errors_name_the_spec_and_the_problem_in_one_line(user_file, capsys, spec, kwargs, message):
    (user_file.parent / "broken.py").write_text("x = 1 / 0\n")
    (user_file.parent / "script.py").write_text("raise SystemExit(3)\n")
    fill = dict(dir=user_file.parent, file=user_file)
    argv = ["--model", spec.format(**fill), "--input-size", "8", *(["--model-kwargs", *kwargs] if kwargs else [])]
    for command in ("verify", "energy"):
        code, _, err = run(capsys, command, *argv)
        assert code == 2 and message.format(**fill) in err, err
        assert len(err.strip().splitlines()) == 1


def test_what_the_model_does_not_declare_is_asked_for(user_file, capsys):
    code, _, err = run(capsys, "verify", "--model", f"{user_file}:make")
    assert code == 2 and "does not declare its input size" in err and "--input-size H" in err
    code, _, err = run(capsys, "energy", "--model", f"{user_file}:stepless", "--input-size", "8")
    assert code == 2 and f"{user_file}:stepless has no T attribute" in err
    code, _, err = run(capsys, "verify", "--model", EXAMPLE.as_posix() + ":build", "--in-chans", "2")
    assert code == 2 and "--in-chans 2: " in err and "takes 3-channel images" in err


def test_the_readme_example_is_proven_spike_driven_and_priced_on_real_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path])  # examples/ goes on it
    spec = f"{EXAMPLE}:build"
    small = ["--model-kwargs", "dim=32", "depth=1"]
    code, out, _ = run(capsys, "verify", "--model", spec, *small, "--plot", tmp_path)
    assert code == 0 and f"verdict: {spec} is spike-driven" in out
    assert (tmp_path / "fig3.png").exists()
    images = cifar_jpeg_tree(tmp_path / "cifar", per_class=1) / "train"  # one real CIFAR-10 JPEG of each class
    code, out, _ = run(capsys, "energy", "--model", spec, *small, "--data", images, "--batches", "2",
                       "--batch-size", "4", "--json", tmp_path / "e.json")
    assert code == 0 and f"{spec}: images (3, 32, 32), T=4, 8 image(s)" in out
    assert f"sample: {images}: 8 of 10 images, class-balanced, seed 0" in out
    report = json.loads((tmp_path / "e.json").read_text())
    names = [r["name"] for r in report["layers"]]
    assert {"stem.0", "blocks.0.attn.qkv.0", "blocks.0.attn.proj.0", "blocks.0.fc1.0", "blocks.0.fc2.0",
            "head"} <= set(names)
    assert report["total_mJ"] > 0
