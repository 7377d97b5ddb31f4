"""`spikingformer predict`: a run's checkpoint classifies image files as its own evaluation would."""
import csv
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from spikingformer import cli, create_model
from spikingformer.train.classify import run
from spikingformer.train.predict import find_inputs, input_files, load_predictor
from spikingformer.weights.checkpoint import load_checkpoint

from ..data.helpers import CLASSES, write_class_tree
from .test_train import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on class-coloured images (cat: red, dog: green, frog: blue), trained until it separates them."""
    root = tmp_path_factory.mktemp("predict")
    tree = write_class_tree(root / "data" / "train", per_class=12).parent
    # enough updates (90) for BN's running statistics to settle: eval mode separates the classes too
    cfg = tiny_config(tree, root / "run", aa=None, reprob=0.0, mixup=0.0, cutmix=0.0, scale=(1.0, 1.0),
                      model_args=dict(depth=1, dim=32, num_heads=2, T=2, downsample=[False, False, True, True]),
                      batch_size=4, lr=3e-3, epochs=12, warmup_epochs=0, cooldown_epochs=0, clip_grad=0.0,
                      mean=(0.3, 0.3, 0.3), std=(0.4, 0.4, 0.4))
    run(cfg)
    fresh = write_class_tree(root / "fresh", per_class=3, seed=7)  # images the run never saw
    return root / "run" / "last.pt", fresh


def _by_hand(ckpt_path, images):
    """The run's model and its evaluation transform rebuilt without predict: softmax over its logits."""
    from torchvision import transforms

    state = load_checkpoint(ckpt_path)
    meta = state["meta"]
    model = create_model(meta["model"], **meta["model_args"])
    model.load_state_dict(state["model"])
    tf = transforms.Compose([transforms.Resize(16, transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(16),
                             transforms.ToTensor(), transforms.Normalize(meta["mean"], meta["std"])])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        return model.eval()(x).softmax(-1)


def test_predict_names_the_classes_of_unseen_images(trained, tmp_path, capsys):
    ckpt, fresh = trained
    out_json, out_csv = tmp_path / "p" / "pred.json", tmp_path / "p" / "pred.csv"
    assert cli.main(["predict", str(fresh), "--checkpoint", str(ckpt), "--topk", "2", "--batch-size", "4",
                     "--json", str(out_json), "--csv", str(out_csv)]) == 0
    records = json.loads(out_json.read_text())["predictions"]
    paths = sorted(str(p) for p in fresh.rglob("*.png"))
    assert [r["path"] for r in records] == paths  # folders searched recursively, in sorted order
    truth = [p.split("/")[-2] for p in paths]
    hits = sum(r["top"][0]["class"] == t for r, t in zip(records, truth))
    assert hits >= 6, f"{hits} of 9 unseen images classified right (chance: 3)"

    # the same probabilities as the run's own model with the run's mean/std (0.3/0.4, not ImageNet's)
    probs = _by_hand(ckpt, paths)
    for r, p in zip(records, probs):
        assert [t["index"] for t in r["top"]] == p.topk(2).indices.tolist()
        assert [t["class"] for t in r["top"]] == [CLASSES[i] for i in p.topk(2).indices]
        assert [t["prob"] for t in r["top"]] == pytest.approx(p.topk(2).values.tolist(), abs=1e-5)

    # the images lie in class folders: their true classes and the accuracy come beside the predictions
    assert [r["label"] for r in records] == truth and [r["correct"] for r in records] == [
        r["top"][0]["class"] == t for r, t in zip(records, truth)]
    assert json.loads(out_json.read_text())["accuracy"] == {"top1": hits / 9, "top5": 1.0, "count": 9}
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["path", "label", "correct", "in_top5", "class_1", "prob_1", "class_2", "prob_2"]
    assert [row[0] for row in rows[1:]] == paths and [row[4] for row in rows[1:]] == [
        r["top"][0]["class"] for r in records]
    assert [row[1:4] for row in rows[1:]] == [[t, str(int(r["correct"])), "1"] for r, t in zip(records, truth)]
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith(f"{paths[0]}: {records[0]['top'][0]['class']} ")
    assert shown[-1] == (f"accuracy on the 9 of 9 images whose class their folder or label list names: "
                         f"top-1 {100 * hits / 9:.2f} %, top-5 100.00 %")


def test_an_exported_file_predicts_alone_and_a_state_dict_needs_a_recipe(trained, tmp_path, capsys):
    ckpt, fresh = trained
    images = sorted(fresh.rglob("*.png"))[::4]  # cat, dog, frog

    def top(pred):
        return pred(torch.stack([pred.transform(Image.open(p).convert("RGB")) for p in images]))

    want = top(load_predictor(str(ckpt)))
    exported = tmp_path / "m.safetensors"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(exported), "--fold-bn"]) == 0
    got = top(load_predictor(str(exported)))  # class names and normalisation travel in the metadata
    assert [[c for c, _, _ in row] for row in got] == [[c for c, _, _ in row] for row in want]
    assert [p for row in got for _, _, p in row] == pytest.approx([p for row in want for _, _, p in row], abs=1e-4)

    # eval too: the exported file names the run's split, and scores it as the run's checkpoint does
    for source, out in ((ckpt, "run.json"), (exported, "exported.json")):
        assert cli.main(["eval", "--checkpoint", str(source), "--json", str(tmp_path / out)]) == 0
    run_eval, exp_eval = (json.loads((tmp_path / out).read_text()) for out in ("run.json", "exported.json"))
    assert exp_eval["val_split"] == run_eval["val_split"] and exp_eval["val_images"] == 6
    assert exp_eval["val_acc"] == run_eval["val_acc"] and exp_eval["val_loss"] == pytest.approx(run_eval["val_loss"], abs=1e-4)

    # with a recipe and other data: classes that differ from those the file records are refused, not
    # scored as shifted labels
    other = write_class_tree(tmp_path / "other" / "train", per_class=4, classes=("cat", "frog", "owl")).parent
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: spikingformer_4_256\ndataset: folder\nholdout: 3\nimg_size: 16\nworkers: 0\n")
    for source in (ckpt, exported):
        assert cli.main(["eval", "--checkpoint", str(source), "--config", str(recipe), "--data", str(other)]) == 2
        assert "has classes ['cat', 'frog', 'owl']... (3) but" in capsys.readouterr().err

    bare = tmp_path / "sd.pt"
    torch.save(load_checkpoint(ckpt)["model"], bare)
    from_bare = tmp_path / "bare.safetensors"  # as `export` writes a state_dict: model and options, no run
    margs = load_checkpoint(ckpt)["meta"]["model_args"]
    save_file(load_checkpoint(ckpt)["model"], str(from_bare), metadata={
        "format": "spikingformer.weights", "model": "spikingformer_4_256", "model_args": json.dumps(margs)})
    assert cli.main(["eval", "--checkpoint", str(from_bare)]) == 2
    assert "does not record the run it came from" in capsys.readouterr().err
    assert cli.main(["predict", str(images[0]), "--checkpoint", str(from_bare)]) == 2
    assert "does not record how its images were read" in capsys.readouterr().err
    assert cli.main(["predict", str(images[0]), "--checkpoint", str(bare)]) == 2
    assert "names neither its model nor how its images were read: add --config" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("rouge\nvert\nbleu\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: spikingformer_4_256\nmodel_args: {depth: 1, dim: 32, num_heads: 2, T: 2, "
                      "downsample: [false, false, true, true]}\ndataset: folder\nimg_size: 16\n")
    pred = load_predictor(str(bare), str(recipe), str(names))
    assert pred.classes == ["rouge", "vert", "bleu"] and pred.model.cfg.num_classes == 3
    assert load_predictor(str(bare), str(recipe)).classes == ["0", "1", "2"]
    assert load_predictor(str(bare), str(recipe), sets=["model_args.T=1"]).model.T == 1  # --set reaches a recipe too
    names.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="names 2 classes; the model has 3"):
        load_predictor(str(bare), str(recipe), str(names))


def test_eval_sets_keys_of_the_runs_own_config(trained, tmp_path):
    """`--set` without `--config`: a subset of the run's split, and the model at another T (trained at T = 2)."""
    ckpt, _ = trained
    results = []
    for T in (2, 1):
        out = tmp_path / f"T{T}.json"
        assert cli.main(["eval", "--checkpoint", str(ckpt), "--set", "limit_val=3", "--set", f"model_args.T={T}",
                         "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert [r["val_images"] for r in results] == [3, 3] and "limited to 3 val images" in results[0]["val_split"]
    assert results[0]["val_loss"] != results[1]["val_loss"]  # T = 1 is another model's output
    full = tmp_path / "full.json"
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--json", str(full)]) == 0
    assert json.loads(full.read_text())["val_images"] == 6


def test_eval_refuses_what_the_weights_cannot_be(trained, tmp_path, capsys):
    from spikingformer.weights.checkpoint import save_checkpoint

    ckpt, _ = trained
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--set", "model=spikformer_4_384"]) == 2
    assert "--set model=spikformer_4_384: " in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--set", "model_args.dim=64"]) == 2
    assert "--set {'dim': 64} may change the weights' shapes (T does not)" in capsys.readouterr().err
    text = tmp_path / "text.pt"  # an mlm/glue run's checkpoint
    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": {},
                     "meta": {"model": "spikingformer_text_2_128", "task": "mlm"}}, text)
    assert cli.main(["eval", "--checkpoint", str(text)]) == 2
    assert ("holds the text model spikingformer_text_2_128 but no glue run's config (an mlm run's masked-LM scores "
            "are in its summary.json)" in capsys.readouterr().err)


def test_predict_sets_keys_of_the_runs_config_as_eval_does(trained, tmp_path, capsys):
    """`--set model_args.T=1` predicts with the model at T = 1 (trained at 2); the transform follows img_size,
    mean and std; what the weights cannot be is refused as eval refuses it."""
    ckpt, fresh = trained
    probs = {}
    for T in (2, 1):
        out = tmp_path / f"T{T}.json"
        assert cli.main(["predict", str(fresh), "--checkpoint", str(ckpt), "--set", f"model_args.T={T}",
                         "--json", str(out)]) == 0
        probs[T] = [t["prob"] for r in json.loads(out.read_text())["predictions"] for t in r["top"]]
    assert len(probs[1]) == 9 * 3 and probs[1] != probs[2]  # every image, by another model's output
    pred = load_predictor(str(ckpt), sets=["model_args.T=1", "img_size=24", "mean=[0.5, 0.5, 0.5]"])
    assert pred.model.T == 1 and pred.model.cfg.img_size == 24
    image = Image.new("RGB", (30, 30), (255, 0, 0))
    assert pred.transform(image).shape == (3, 24, 24)
    assert pred.transform(image)[:, 0, 0].tolist() == pytest.approx([(1 - 0.5) / 0.4, -0.5 / 0.4, -0.5 / 0.4])
    assert len(pred(pred.transform(image)[None])[0]) == 3
    # the model's own size option resizes the images too, as eval reads its data at it
    pred = load_predictor(str(ckpt), sets=["model_args.img_size=24"])
    assert pred.model.cfg.img_size == 24 and pred.transform(image).shape == (3, 24, 24)

    capsys.readouterr()
    for setting, message in (
            ("nope=1", f"unknown config key(s) ['nope'] in {ckpt} config + --set nope=1; valid keys: "),
            ("model=spikformer_4_384", f"--set model=spikformer_4_384: {ckpt} holds a spikingformer_4_256"),
            ("model_args.dim=64", "--set {'dim': 64} may change the weights' shapes (T does not)")):
        assert cli.main(["predict", str(fresh), "--checkpoint", str(ckpt), "--set", setting]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err


def test_bad_inputs_are_named(trained, tmp_path, capsys):
    ckpt, fresh = trained
    assert cli.main(["predict", str(tmp_path / "nope.png"), "--checkpoint", str(ckpt)]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(tmp_path / "empty"), "--checkpoint", str(ckpt)]) == 2
    assert "no images (.jpg" in capsys.readouterr().err
    broken = tmp_path / "mixed" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG not really")
    assert cli.main(["predict", str(broken), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"skipped: cannot decode image {broken}" in err and "none of the 1 image(s) could be read" in err
    # an unreadable file among readable ones is reported, and the others are still classified
    good = fresh / "cat" / "000.png"
    (broken.parent / "good.png").write_bytes(good.read_bytes())
    out = tmp_path / "mixed.json"
    assert cli.main(["predict", str(broken.parent), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["path"] for r in result["predictions"]] == [str(broken.parent / "good.png")]
    assert [r["path"] for r in result["skipped"]] == [str(broken)]
    assert f"skipped: cannot decode image {broken}" in capsys.readouterr().err
    assert cli.main(["predict", str(fresh), "--checkpoint", str(ckpt), "--topk", "0"]) == 2
    assert "--topk and --batch-size must be >= 1" in capsys.readouterr().err
    assert cli.main(["predict", str(fresh), "--checkpoint", str(ckpt), "--device", "gpu"]) == 2
    assert "device must be auto or a torch device" in capsys.readouterr().err
    images = input_files("folder")
    assert find_inputs([str(fresh / "cat" / "000.png"), str(fresh / "dog")], images)[1:] == sorted(
        (fresh / "dog").glob("*"))
    # a file given twice, or given and found in its folder, is classified once
    assert find_inputs([str(fresh / "cat" / "001.png"), str(fresh / "cat")], images) == [
        fresh / "cat" / "001.png", fresh / "cat" / "000.png", fresh / "cat" / "002.png"]


def test_the_transform_takes_any_image_mode(trained):
    pred = load_predictor(str(trained[0]))
    for mode in ("L", "RGBA", "P", "RGB"):
        assert pred.transform(Image.new(mode, (20, 24))).shape == (3, 16, 16)


def test_checkpoints_of_other_inputs_are_refused(tmp_path):
    """Digits' 8x8 tensors are no files to classify (event runs classify recordings: test_predict_events.py)."""
    from spikingformer.weights.checkpoint import save_checkpoint

    model = create_model("spikingformer_4_256", depth=1, dim=32, num_heads=2, T=1, num_classes=3, img_size=16)
    path = tmp_path / "digits.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": "spikingformer_4_256", "dataset": "digits"},
                     "meta": {"model": "spikingformer_4_256", "model_args": dict(
                         depth=1, dim=32, num_heads=2, T=1, num_classes=3, img_size=16)}}, path)
    with pytest.raises(ValueError, match="trained on digits, not on image files or event recordings"):
        load_predictor(str(path))
