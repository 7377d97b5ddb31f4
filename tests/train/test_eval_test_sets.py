"""`eval --data DIR` scores every sample of a labelled test set and names it so; `predict` on labelled files reports
their accuracy. Tiny runs on real CIFAR-10 JPEGs and real N-MNIST recordings (../shared/data)."""
import csv
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from spikingformer import cli
from spikingformer.train.classify import run
from spikingformer.train.config import TrainConfig
from spikingformer.weights.checkpoint import load_checkpoint, save_checkpoint

from ..real_data import cifar_jpeg_tree
from .test_train import TINY, tiny_config

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CIFAR, NMNIST = DATA / "cifar10-train-jpeg.tar.gz", DATA / "nmnist-small-train.tar.gz"

pytestmark = pytest.mark.usefixtures("one_thread")


def _unpack(tarball: Path, dest: Path, keep) -> None:
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, members=[m for m in tar if keep(m.name)], filter="data")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A tiny run on 10 real CIFAR-10 JPEGs per class (2 held out), and a test set of 20 others per class."""
    if not CIFAR.exists():
        pytest.skip(f"{CIFAR} not present")
    root = tmp_path_factory.mktemp("cifar")
    cifar_jpeg_tree(root / "raw", per_class=30)  # the tarball's .jpg files numbered below 30, read once a session
    for folder in sorted((root / "raw" / "train").iterdir()):
        for f in sorted(folder.iterdir()):
            split = "data/train" if int(f.stem) < 10 else "test"
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            f.rename(root / split / folder.name / f.name)
    run(tiny_config(root / "data", root / "run", aa=None, reprob=0.0, mixup=0.0, cutmix=0.0, holdout=20, epochs=1,
                    warmup_epochs=0, cooldown_epochs=0))
    return root / "run" / "last.pt", root / "data", root / "test"


def _eval(capsys, ckpt, out: Path, *args) -> tuple[dict, str]:
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--json", str(out), *map(str, args)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_a_folder_of_class_folders_is_scored_whole_and_named_a_test_set(cifar, tmp_path, capsys):
    ckpt, data, test = cifar
    r, out = _eval(capsys, ckpt, tmp_path / "r.json", "--data", test, "--predictions", tmp_path / "p.csv")
    name = f"test ({test}, 200 images)"
    assert (r["split"], r["val_split"], r["data_dir"], r["val_images"]) == ("test", name, str(test), 200)
    assert f"on {name}: top-1 {100 * r['val_acc']:.2f} %" in out
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [row["path"] for row in rows] == sorted(str(p) for p in test.rglob("*.jpg"))  # each image once
    assert [row["label"] for row in rows] == [Path(row["path"]).parent.name for row in rows]
    assert sum(int(row["correct"]) for row in rows) / 200 == pytest.approx(r["val_acc"])
    assert sum(int(row["in_top5"]) for row in rows) / 200 == pytest.approx(r["val_acc5"])
    assert all(int(row["correct"]) == (row["class_1"] == row["label"]) for row in rows)
    calibrated, _ = _eval(capsys, ckpt, tmp_path / "c.json", "--data", test, "--early-exit", "0.5", "--calibrate",
                          "0.5", "--predictions", tmp_path / "c.csv")  # two passes, every sample once, in order
    assert list(csv.DictReader((tmp_path / "c.csv").open())) == rows and calibrated["val_images"] == 200

    # predict on the same folder: the same model and transform, so the same accuracy, beside the predictions
    assert cli.main(["predict", str(test), "--checkpoint", str(ckpt), "--json", str(tmp_path / "p.json")]) == 0
    acc = json.loads((tmp_path / "p.json").read_text())["accuracy"]
    assert acc == {"top1": pytest.approx(r["val_acc"]), "top5": pytest.approx(r["val_acc5"]), "count": 200}
    assert capsys.readouterr().out.splitlines()[-1].startswith("accuracy on the 200 of 200 images ")


def test_a_cifar_model_reads_a_folder_test_set_with_its_own_normalisation(cifar):
    from spikingformer.data import DATASET_STATS, build_test, sample_names

    _, _, test = cifar
    cfg = tiny_config(test, "unused", dataset="cifar10", img_size=32)  # class folders, not torchvision's batches
    data = build_test(cfg, 32, None)
    assert (data.val_name, len(data.val), data.train) == (f"test ({test}, 200 images)", 200, None)
    assert (data.mean, data.std) == DATASET_STATS["cifar10"] and data.classes[:2] == ["airplane", "automobile"]
    assert sample_names(data.val) == sorted(str(p) for p in test.rglob("*.jpg"))


def test_the_runs_own_data_gives_its_val_split_and_split_forces_either_reading(cifar, tmp_path, capsys):
    ckpt, data, test = cifar
    held = "val (held-out 20 of 100 train images, class-balanced, seed 0)"
    own, out = _eval(capsys, ckpt, tmp_path / "own.json")
    assert (own["split"], own["val_split"], own["data_dir"], own["val_images"]) == ("val", held, str(data), 20)
    assert f"on {held} of {data}: top-1" in out
    for given in (data, data / "train"):  # the run's data, named: the same split
        again, _ = _eval(capsys, ckpt, tmp_path / "again.json", "--data", given)
        assert (again["val_split"], again["val_acc"]) == (held, own["val_acc"])
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--split", "test"]) == 2  # trained on: never a test set
    assert f"{data}, which this run was trained from, has no test split of its own" in capsys.readouterr().err
    val, _ = _eval(capsys, ckpt, tmp_path / "val.json", "--data", test, "--split", "val")
    assert (val["split"], val["val_images"], val["data_dir"]) == ("val", 20, str(test))
    assert val["val_split"] == "val (held-out 20 of 200 train images, class-balanced, seed 0)"  # the config's 20

    root = tmp_path / "root"  # a dataset root holding train/ only: its samples are training images, not a test set
    root.mkdir()
    (root / "train").symlink_to(test)
    fallback, _ = _eval(capsys, ckpt, tmp_path / "root.json", "--data", root)
    assert fallback["split"] == "val" and "holds training images only" in fallback["notes"][0]
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--split", "test"]) == 2
    assert f"--data {root}/train scores all of them as a test set" in capsys.readouterr().err


def test_a_run_trained_on_a_relative_data_dir_knows_its_data_from_any_folder(cifar, tmp_path, monkeypatch, capsys):
    """The run records the folder it read, so its own images, named from elsewhere by their absolute path, give
    its held-out split (scored as a test set they would include the images it trained on)."""
    ckpt, data, _ = cifar
    state = load_checkpoint(ckpt)
    assert state["meta"]["data_root"] == str(data.resolve())
    state["config"]["data_dir"] = "data"  # as `--set data_dir=data`, trained from data's parent
    relative = tmp_path / "relative.pt"
    save_checkpoint(state, relative)
    monkeypatch.chdir(tmp_path)  # elsewhere: ./data is not there
    for given in ((), ("--data", data)):
        r, _ = _eval(capsys, relative, tmp_path / "r.json", *given)
        assert (r["split"], r["val_images"], r["data_dir"]) == ("val", 20, str(data.resolve()))


def test_class_folders_are_matched_to_the_models_classes_by_name(cifar, tmp_path, capsys):
    ckpt, data, test = cifar
    full, _ = _eval(capsys, ckpt, tmp_path / "full.json", "--data", test, "--predictions", tmp_path / "full.p.json")
    by_path = {p["path"]: p for p in json.loads((tmp_path / "full.p.json").read_text())["predictions"]}

    # a checkpoint whose classes are in another order (head rows permuted alike): the same answers by name
    state = load_checkpoint(ckpt)
    order = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]
    state["meta"]["classes"] = [state["meta"]["classes"][i] for i in order]
    for k in ("head.fc.weight", "head.fc.bias"):
        state["model"][k] = state["model"][k][order]
    save_checkpoint(state, tmp_path / "permuted.pt")
    permuted, _ = _eval(capsys, tmp_path / "permuted.pt", tmp_path / "perm.json", "--data", test,
                        "--predictions", tmp_path / "perm.p.json")
    assert (permuted["val_acc"], permuted["val_acc5"], permuted["val_images"]) == pytest.approx(
        (full["val_acc"], full["val_acc5"], 200))
    for p in json.loads((tmp_path / "perm.p.json").read_text())["predictions"]:
        want = by_path[p["path"]]
        assert (p["label"], p["top"][0]["class"]) == (want["label"], want["top"][0]["class"])

    # a test set with some of the classes: their folders sort to other indices than the model's
    part = tmp_path / "part"
    for c in ("bird", "frog", "truck"):
        shutil.copytree(test / c, part / c)
    some, _ = _eval(capsys, ckpt, tmp_path / "part.json", "--data", part, "--predictions", tmp_path / "part.p.json")
    records = json.loads((tmp_path / "part.p.json").read_text())["predictions"]
    assert some["val_images"] == 60 and [p["label"] for p in records] == ["bird"] * 20 + ["frog"] * 20 + ["truck"] * 20
    hits = [by_path[str(test / Path(p["path"]).relative_to(part))]["correct"] for p in records]
    assert [p["correct"] for p in records] == hits and some["val_acc"] == pytest.approx(sum(hits) / 60)

    (part / "truck").rename(part / "lorry")  # a class the model was not trained on: refused, both named
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--data", str(part)]) == 2
    err = capsys.readouterr().err
    assert f"{part} has classes ['bird', 'frog', 'lorry'] (3), of which ['lorry'] are none of the model's" in err
    assert "'airplane', 'automobile'" in err


@pytest.fixture(scope="module")
def nmnist(tmp_path_factory):
    """A tiny event run on 40 real N-MNIST recordings (10 held out), and 20 others with their own label list."""
    if not NMNIST.exists():
        pytest.skip(f"{NMNIST} not present")
    root = tmp_path_factory.mktemp("nmnist")
    _unpack(NMNIST, root, lambda name: name.endswith(".txt") or name.endswith(tuple(f"/{i}.bs2" for i in range(1, 61))))
    labels = [line.split() for line in (root / "nmnist-small" / "train1K.txt").read_text().splitlines()[1:61]]
    train, test = root / "nmnist-small", root / "test"
    test.mkdir()
    for sample, _ in labels[40:]:
        (train / f"{sample}.bs2").rename(test / f"{sample}.bs2")
    (train / "train1K.txt").write_text("#sample\t#class\n" + "".join(f"{s}\t{c}\n" for s, c in labels[:40]))
    (test / "test.txt").write_text("#sample\t#class\n" + "".join(f"{s}\t{c}\n" for s, c in labels[40:]))
    run(TrainConfig(model="spikingformer_dvs_2_256", dataset="nmnist", data_dir=str(train), img_size=32,
                    model_args=dict(TINY, T=2), val_split="holdout", holdout=10, batch_size=5, val_batch_size=10,
                    workers=0, epochs=1, warmup_epochs=0, cooldown_epochs=0, output=str(root / "run"),
                    progress=False))
    return root / "run" / "last.pt", test, {f"{s}.bs2": c for s, c in labels[40:]}


def test_recordings_with_a_label_list_are_scored_whole(nmnist, tmp_path, capsys):
    ckpt, test, digits = nmnist
    r, out = _eval(capsys, ckpt, tmp_path / "r.json", "--data", test, "--predictions", tmp_path / "p.json")
    name = f"test ({test}, 20 recordings)"
    assert (r["split"], r["val_split"], r["val_images"]) == ("test", name, 20) and f"on {name}: top-1" in out
    records = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert {Path(p["path"]).name: p["label"] for p in records} == digits
    assert sum(p["correct"] for p in records) / 20 == pytest.approx(r["val_acc"])

    assert cli.main(["predict", str(test), "--checkpoint", str(ckpt), "--csv", str(tmp_path / "p.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"accuracy on the 20 of 20 nmnist recordings whose class their folder or label list names: "
        f"top-1 {100 * r['val_acc']:.2f} %, top-5 {100 * r['val_acc5']:.2f} %")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert {Path(row["path"]).name: row["label"] for row in rows} == digits

    # the release's layout (Test/<digit>/*.bin beside Train/): its official test split, whole
    official = tmp_path / "official"
    for split in ("Train", "Test"):
        for digit in map(str, range(10)):
            (official / split / digit).mkdir(parents=True)
        for f, digit in digits.items():
            shutil.copy(test / f, official / split / digit / f"{Path(f).stem}.bin")
    r, _ = _eval(capsys, ckpt, tmp_path / "o.json", "--data", official)
    assert (r["split"], r["val_images"]) == ("test", 20)
    assert r["val_split"] == f"test (official N-MNIST test split of {official}, 20 recordings)"
    assert r["val_acc"] == pytest.approx(sum(p["correct"] for p in records) / 20)
