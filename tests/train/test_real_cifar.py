"""On real CIFAR-10 JPEGs: figures read off part of a split (energy, verify, a run's firing rate) come from a
seeded, class-balanced sample of it, named in every report (splits are stored class by class); the CPU recipe."""
import json
from collections import Counter

import pytest
import torch

from spikingformer import cli
from spikingformer.cli.inputs import prepare
from spikingformer.data import build_data
from spikingformer.data.split import split_sample
from spikingformer.train import evaluation
from spikingformer.train.config import load_config

from ..real_data import cifar_jpeg_tree

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model-kwargs", "depth=1", "dim=32", "num_heads=2", "--T", "1"]
HELD_OUT = "val (held-out 60 of 120 train images, class-balanced, seed 0)"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """12 real images of each of the 10 classes."""
    return cifar_jpeg_tree(tmp_path_factory.mktemp("cifar"), per_class=12)


def _labels(ds) -> Counter:
    return Counter(int(ds[i][1]) for i in range(len(ds)))


def test_split_sample_is_class_balanced_or_the_whole_split(cifar):
    data = build_data(load_config("cifar10_jpeg", ["holdout=60", f"data_dir={cifar}", "workers=0"]), 32)
    assert [data.val.base.targets[i] for i in (0, 5)] == [0, 0]  # stored class by class: the first are airplanes
    sample, named = split_sample(data.val, 20, seed=0)
    assert _labels(sample) == {c: 2 for c in range(10)} and named == "20 of 60 images, class-balanced, seed 0"
    assert split_sample(data.val, 20, seed=1)[0].indices != sample.indices  # seeded
    assert split_sample(data.val, 60, seed=0) == (data.val, "all 60 images")


def test_energy_and_verify_measure_a_balanced_sample_of_the_run_split_and_name_it(cifar, tmp_path, capsys):
    """`--batches 5 --batch-size 4` of a recipe's validation split: 2 images of each class, not 20 airplanes."""
    argv = ["--config", "cifar10_jpeg", "--data", str(cifar), "--set", "holdout=60", "--batches", "5",
            "--batch-size", "4", *TINY]
    expected = f"folder {HELD_OUT}: 20 of 60 images, class-balanced, seed 0"
    for command in ("energy", "verify"):
        assert cli.main([command, *argv, "--json", str(tmp_path / f"{command}.json")]) in (0, 3)
        assert json.loads((tmp_path / f"{command}.json").read_text())["sample"] == expected
        assert f"sample: {expected}" in capsys.readouterr().out

    prep = prepare(cli.build_parser().parse_args(["energy", *argv]))
    data = build_data(load_config("cifar10_jpeg", ["holdout=60", f"data_dir={cifar}", "workers=0"]), 32)
    sample, _ = split_sample(data.val, 20, seed=0)
    assert torch.equal(torch.cat(prep.batches), torch.stack([sample[i][0] for i in range(20)]))
    assert _labels(sample) == {c: 2 for c in range(10)}


def test_energy_on_a_class_folder_samples_every_class(cifar, tmp_path):
    from PIL import Image
    from torchvision.transforms.functional import normalize, to_tensor

    from spikingformer.data.sources import DATASET_STATS

    argv = ["energy", "--model", "spikingformer_4_256", "--data", str(cifar / "train"), "--batches", "5",
            "--batch-size", "2", *TINY]
    assert cli.main([*argv, "--json", str(tmp_path / "e.json")]) == 0
    named = json.loads((tmp_path / "e.json").read_text())["sample"]
    assert named == f"{cifar / 'train'}: 10 of 120 images, class-balanced, seed 0"
    images = {p: normalize(to_tensor(Image.open(p).convert("RGB")), *DATASET_STATS["folder"])
              for p in (cifar / "train").rglob("*.jpg")}
    fed = torch.cat(prepare(cli.build_parser().parse_args(argv)).batches)
    classes = [next(p.parent.name for p, x in images.items() if torch.allclose(x, image)) for image in fed]
    assert sorted(classes) == sorted(p.name for p in (cifar / "train").iterdir())  # one of each class


def test_a_runs_firing_rate_is_read_off_a_balanced_sample_and_named(cifar, tmp_path, capsys, monkeypatch):
    """The train summary's (and eval's) firing rate and verdict: 4 batches of 5 from the 60 held-out images."""
    seen = []
    real = evaluation.spike_stats

    def spy(model, loader, device):
        seen.append(Counter(int(y) for _, ys in loader for y in ys))
        return real(model, loader, device)

    monkeypatch.setattr(evaluation, "spike_stats", spy)
    out, js = tmp_path / "run", tmp_path / "new" / "summary.json"
    sets = ["holdout=60", f"data_dir={cifar}", "workers=0", "epochs=1", "warmup_epochs=0", "cooldown_epochs=0",
            "batch_size=20", "val_batch_size=5", "model_args={depth: 1, dim: 32, num_heads: 2, T: 1}",
            f"output={out}", "progress=false"]
    assert cli.main(["train", "--config", "cifar10_jpeg", *[a for s in sets for a in ("--set", s)],
                     "--json", str(js)]) == 0
    summary = json.loads(js.read_text())
    assert summary == json.loads((out / "summary.json").read_text())  # --json: the run's summary
    assert summary["probe_sample"] == "20 of 60 images, class-balanced, seed 0" and summary["probe_images"] == 20
    assert f"({summary['probe_sample']})" in capsys.readouterr().out
    assert cli.main(["eval", "--checkpoint", str(out / "last.pt"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["probe_sample"] == summary["probe_sample"]
    assert seen == [{c: 2 for c in range(10)}] * 2

    at_T2 = []  # eval's --model-kwargs is its --set model_args.
    for option in (["--model-kwargs", "T=2"], ["--set", "model_args.T=2"]):
        assert cli.main(["eval", "--checkpoint", str(out / "last.pt"), *option, "--json", str(tmp_path / "t.json")]) == 0
        at_T2.append(json.loads((tmp_path / "t.json").read_text()))
    assert len(at_T2[0]["val_acc_per_step"]) == 2 and at_T2[0]["val_acc_per_step"] == at_T2[1]["val_acc_per_step"]


def test_the_cpu_recipe_loads_and_reads_real_images(cifar):
    """configs/cifar10_cpu.yaml (the README's CPU figure): a train recipe of a 0.11M-parameter model at T = 2 that
    reads the JPEG copy with its own transforms; not a training run."""
    from spikingformer import create_model
    from spikingformer.cli.models import _recipe_command
    from spikingformer.train.config import recipe_dir
    from spikingformer.train.engine import resolve_img_size

    assert _recipe_command((recipe_dir() / "cifar10_cpu.yaml").read_text()) == "train"
    cfg = load_config("cifar10_cpu", [f"data_dir={cifar}", "holdout=20", "limit_train=40", "workers=0"])
    assert (cfg.fast, cfg.epochs, cfg.batch_size, resolve_img_size(cfg)) == ("on", 2, 128, 32)
    model = create_model(cfg.model, **cfg.model_args).eval()
    assert sum(p.numel() for p in model.parameters()) == 112_978 and model.T == 2
    data = build_data(cfg, 32)
    assert (len(data.train), len(data.val), data.classes[0]) == (40, 20, "airplane")
    x = torch.stack([data.train[(i, 0)][0] for i in range(4)])  # seeded training augmentation
    assert x.shape == (4, 3, 32, 32) and model(x).shape == (4, 10)
    assert load_config("cifar10_cpu").limit_train == 0 and load_config("cifar10_cpu").holdout == 5000


# The comparison models, tiny: each trains, evaluates and is verified and priced from its checkpoint
COMPARISON = {
    "sd_transformer_2_512": "{depth: 1, dim: 32, num_heads: 2, T: 1}",
    "qkformer_4_384": "{depth: 3, dim: 64, num_heads: 2, T: 1}",
    "transformer_4_384": "{depth: 1, dim: 32, num_heads: 2, T: 1}",  # an ANN: the recipe's T: 4 would be refused
}


@pytest.mark.parametrize("name", COMPARISON)
def test_a_comparison_model_trains_evaluates_and_is_audited_from_its_checkpoint(name, cifar, tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["holdout=60", f"data_dir={cifar}", "workers=0", "epochs=1", "warmup_epochs=0", "cooldown_epochs=0",
            "batch_size=20", "val_batch_size=20", f"model={name}", f"model_args={COMPARISON[name]}",
            f"output={out}", "progress=false"]
    assert cli.main(["train", "--config", "cifar10_jpeg", *[a for s in sets for a in ("--set", s)]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    sdt = name.startswith("sd_transformer_")  # of the three, the one built spike-driven
    assert summary["model"] == name and summary["proven"] == sdt
    assert cli.main(["eval", "--checkpoint", str(out / "last.pt"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["val_acc"] == summary["final_val_acc"]
    capsys.readouterr()
    for command in ("verify", "energy"):
        code = cli.main([command, "--checkpoint", str(out / "last.pt"), "--data", str(cifar), "--batches", "2",
                         "--batch-size", "5", "--json", str(tmp_path / f"{command}.json")])
        assert code in ((0,) if command == "energy" or sdt else (1, 3)), capsys.readouterr().out
    assert json.loads((tmp_path / "verify.json").read_text())["proven"] == sdt
