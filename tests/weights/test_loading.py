"""Weights that do not fit a model: the error names the file, the model and what differs, in a few lines."""
import pytest
import torch

import spikingformer
from spikingformer import cli, create_model
from spikingformer.weights import loading
from spikingformer.weights.checkpoint import save_checkpoint, state_mismatch
from spikingformer.weights.loading import load_weights_into

from ..data.helpers import write_class_tree

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(depth=1, dim=32, num_heads=4, num_classes=3, T=1)


def test_state_mismatch_summarises_every_kind_of_difference():
    own = {f"k{i}": torch.zeros(2) for i in range(8)}
    weights = {**{f"k{i}": torch.zeros(2) for i in range(1, 7)}, "k7": torch.zeros(3), "extra": torch.zeros(1)}
    assert state_mismatch(own, own) == ""
    assert state_mismatch(own, weights) == ("missing 1 ['k0']; unexpected 1 ['extra']; "
                                            "mis-shaped 1 ['k7: checkpoint (3,) vs model (2,)']")
    assert state_mismatch(own, {}).startswith("missing 8 ['k0', 'k1', 'k2', 'k3', 'k4', 'k5'] ...; unexpected 0 []")


def test_another_models_weights_are_reported_compactly(tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save(create_model("spikformer_4_384", depth=1, dim=32, num_heads=4).state_dict(), path)
    assert cli.main(["energy", "--checkpoint", str(path), "--model", "spikingformer_4_256"]) == 2
    err = capsys.readouterr().err
    # torch's own message lists all ~200 keys (about 20 KB); the summary names the first 6 of each kind
    assert f"checkpoint {path} does not fit spikingformer_4_256: wrong model" in err
    assert "missing 156 [" in err and "unexpected 39 [" in err and "mis-shaped 25 [" in err
    assert len(err) < 2000 and "size mismatch for" not in err


@pytest.fixture
def exported(tmp_path):
    """A run's checkpoint of a model trained with ``--set model_args.dim=32``, exported to .safetensors."""
    run = tmp_path / "best.pt"
    save_checkpoint({"model": create_model("spikingformer_4_256", **SMALL).state_dict(), "config": {},
                     "meta": {"model": "spikingformer_4_256", "model_args": SMALL}}, run)
    out = tmp_path / "m.safetensors"
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    return out


def test_eval_builds_the_options_a_file_records_and_load_names_those_that_differ(exported, tmp_path, capsys,
                                                                                 monkeypatch):
    data = write_class_tree(tmp_path / "data" / "train", per_class=4).parent
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: spikingformer_4_256\nmodel_args: {depth: 1, num_heads: 4, T: 1}\n"
                      "dataset: folder\nholdout: 6\nimg_size: 16\nval_batch_size: 4\nworkers: 0\n")
    args = ["eval", "--checkpoint", str(exported), "--config", str(recipe), "--data", str(data)]
    assert cli.main(args) == 0  # the options the file records win over the recipe's
    assert "(spikingformer_4_256)" in capsys.readouterr().out
    built = []
    real = spikingformer.create_model
    monkeypatch.setattr(loading, "create_model", lambda name, **kw: built.append(kw) or real(name, **kw))
    assert cli.main([*args, "--set", "model_args.T=2"]) == 0  # the command line wins over the file
    assert built[-1]["T"] == 2 and built[-1]["dim"] == 32
    assert cli.main([*args, "--set", "model=spikformer_4_384"]) == 2
    assert f"{exported} holds a spikingformer_4_256, not the recipe's spikformer_4_384" in capsys.readouterr().err
    # the library call reads what the file records by itself, and names the options that differ
    with pytest.raises(ValueError, match=r"with dim=32 \(this model: 256\), num_classes=3 \(this model: 10\); "):
        load_weights_into(create_model("spikingformer_4_256", depth=1, num_heads=4, T=1), str(exported))


def test_a_safetensors_file_without_a_recipe_is_named_as_such(exported, capsys):
    assert cli.main(["eval", "--checkpoint", str(exported)]) == 2
    err = capsys.readouterr().err
    assert f"{exported} does not record the run it came from" in err  # its run's config was empty
    assert "add --config RECIPE" in err


def test_load_model_rebuilds_what_a_file_records(exported, tmp_path):
    trained = create_model("spikingformer_4_256", **SMALL)
    run = tmp_path / "run.pt"
    save_checkpoint({"model": trained.state_dict(), "config": {},
                     "meta": {"model": "spikingformer_4_256", "model_args": SMALL}}, run)
    for path in (run, exported):
        model = spikingformer.load_model(str(path))
        assert not model.training and model.cfg.dim == 32 and model.cfg.num_classes == 3
    model = spikingformer.load_model(str(run), T=3)  # an option that leaves the weights as they are
    assert model.cfg.T == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    bare = tmp_path / "sd.pt"
    torch.save(trained.state_dict(), bare)
    with pytest.raises(ValueError, match=r"does not name its model: pass load_model\(path, model="):
        spikingformer.load_model(str(bare))
    assert spikingformer.load_model(str(bare), "spikingformer_4_256", depth=1, dim=32, num_heads=4).cfg.T == 4


def test_model_kwargs_size_a_bare_state_dict(tmp_path, capsys):
    """A state_dict records no size: ``--model-kwargs`` (timm's spelling) gives it to export, energy and verify."""
    import json

    from safetensors import safe_open

    bare = tmp_path / "bare.pt"
    torch.save(create_model("spikingformer_4_384", depth=1, dim=64, num_heads=4, num_classes=10).state_dict(), bare)
    out = tmp_path / "m.safetensors"
    base = ["export", "--checkpoint", str(bare), "--model", "spikingformer_4_384", "--out", str(out)]
    assert cli.main(base) == 2
    assert "does not fit" in capsys.readouterr().err
    assert cli.main(base + ["--model-kwargs", "depth=1", "dim=64", "num_heads=4"]) == 0
    with safe_open(out, "pt") as f:
        assert json.loads(f.metadata()["model_args"]) == {"depth": 1, "dim": 64, "num_classes": 10, "num_heads": 4}
    capsys.readouterr()
    # loaded and run: untrained weights in eval mode fire nowhere past the encoding layer, and are proven (0)
    assert cli.main(["verify", "--checkpoint", str(bare), "--model", "spikingformer_4_384", "--model-kwargs",
                     "depth=1", "dim=64", "num_heads=4"]) == 0
    report = tmp_path / "e.json"
    assert cli.main(["energy", "--checkpoint", str(out), "--json", str(report)]) == 0  # the file records its size
    config = json.loads(report.read_text())["model_config"]
    assert (config["depth"], config["dim"], config["num_heads"], config["T"]) == (1, 64, 4, 4)
    assert cli.main(["energy", "--model", "spikingformer_4_384", "--model-kwargs", "depht=1"]) == 2
    assert "unknown option(s) ['depht']" in capsys.readouterr().err
    assert cli.main(["energy", "--model", "spikingformer_4_384", "--model-kwargs", "depth"]) == 2
    assert "--model-kwargs expects KEY=VALUE, got 'depth'" in capsys.readouterr().err
