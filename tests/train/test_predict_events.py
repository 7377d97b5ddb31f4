"""`spikingformer predict` on event recordings: a run trained on event data classifies single-sample recordings
of its dataset with the frames, and so the probabilities, its evaluation gives them, and the top-1 after each step."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from spikingformer import cli, create_model
from spikingformer.data import build_data
from spikingformer.train.config import TrainConfig, from_dict
from spikingformer.train.predict import input_files, load_predictor
from spikingformer.weights.checkpoint import load_checkpoint, save_checkpoint

from ..data.test_event_cache import write_gesture
from ..data.test_events import (
    encode_cifar10_dvs,
    encode_nmnist,
    random_events,
    write_nmnist_subset,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def event_run(tmp_path_factory):
    """A tiny N-MNIST run at T = 2 on 12 recordings of 3 digits (3 held out), as tests/data/test_events.py trains
    one, but for 60 updates: after 1 epoch BN's running statistics leave the eval-mode neurons silent, and every
    recording would get the same output."""
    from spikingformer.train.classify import run

    root = tmp_path_factory.mktemp("predict_events")
    data = write_nmnist_subset(root / "nmnist", per_class=4)
    run(TrainConfig(model="spikingformer_dvs_2_256", dataset="nmnist", data_dir=str(data),
                    model_args=dict(depth=1, dim=32, num_heads=2, T=2, downsample=[False, False, True, True]),
                    img_size=32, val_split="holdout", holdout=3, batch_size=3, val_batch_size=3, workers=0,
                    lr=3e-3, epochs=20, warmup_epochs=0, cooldown_epochs=0, output=str(root / "run"), progress=False))
    return root / "run" / "last.pt", data


def _eval_probs(ckpt, T: int) -> dict:
    """Softmax of the run's model (at ``T``) over one batch of its validation split as `build_data` gives it, by
    recording: ``{path: (probabilities [classes], after each step [T, classes])}``."""
    from spikingformer.data.events import event_collate

    state = load_checkpoint(ckpt)
    meta = state["meta"]
    cfg = from_dict(TrainConfig, state["config"])
    cfg = dataclasses.replace(cfg, model_args={**cfg.model_args, "T": T})
    val = build_data(cfg, meta["img_size"]).val
    model = create_model(meta["model"], **{**meta["model_args"], "T": T})
    model.load_state_dict(state["model"])
    x, _ = event_collate([val[i] for i in range(len(val))])
    with torch.no_grad():
        probs, steps = model.eval()(x).softmax(-1), model.forward_steps(x).softmax(-1)
    recordings = [str(val.base.base.items[j][1]) for j in val.base.indices]  # Subset of the run's recordings
    return {path: (probs[b], steps[:, b]) for b, path in enumerate(recordings)}


def _predict(args, out) -> dict:
    assert cli.main(["predict", *map(str, args), "--json", str(out)]) == 0
    return {r["path"]: r for r in json.loads(out.read_text())["predictions"]}


def _same(record, probs, steps):
    """A prediction's top-k and per-step top-1 are those of ``probs`` / ``steps``."""
    top = probs.topk(len(record["top"]))
    assert [t["index"] for t in record["top"]] == top.indices.tolist()
    assert [t["prob"] for t in record["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    best = steps.max(-1)
    assert [c for c, _ in record["per_step"]] == [str(i) for i in best.indices.tolist()]  # N-MNIST: classes "0".."9"
    assert [p for _, p in record["per_step"]] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_recordings_get_the_probabilities_of_their_eval_frames(event_run, tmp_path, capsys):
    ckpt, data = event_run
    want = _eval_probs(ckpt, T=2)
    # a folder's .bs2 recordings, each predicted alone (batch 1), get the output they have in eval's batch of 3
    got = _predict([data, "--checkpoint", ckpt, "--batch-size", "1", "--topk", "3"], tmp_path / "all.json")
    assert sorted(got) == sorted(str(p) for p in data.glob("*.bs2"))  # train1K.txt is not a recording
    for path, (probs, steps) in want.items():
        _same(got[path], probs, steps)
        assert len(got[path]["per_step"]) == 2
        assert got[path]["per_step"][-1][0] == got[path]["top"][0]["class"]  # steps 1..T: the whole read-out
        assert got[path]["per_step"][-1][1] == pytest.approx(got[path]["top"][0]["prob"], abs=1e-5)
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 13 and "; after each step: " in shown[0]
    digits = {f"{i + 1}.bs2": str(i % 3) for i in range(12)}  # write_nmnist_subset's labels
    assert [got[p]["top"][0]["class"] for p in want] == [digits[p.split("/")[-1]] for p in want]
    # train1K.txt labels them all: the accuracy comes beside the predictions
    assert [got[p]["label"] for p in sorted(got)] == [digits[p.split("/")[-1]] for p in sorted(got)]
    top1, top5 = (sum(r[k] for r in got.values()) for k in ("correct", "in_top5"))
    assert shown[-1] == (f"accuracy on the 12 of 12 nmnist recordings whose class their folder or label list names: "
                         f"top-1 {100 * top1 / 12:.2f} %, top-5 {100 * top5 / 12:.2f} %")

    # a single .bin file (the release's suffix for the same format)
    held, (probs, steps) = next(iter(want.items()))
    one = tmp_path / "one.bin"
    shutil.copy(held, one)
    _same(_predict([one, "--checkpoint", ckpt, "--topk", "3"], tmp_path / "one.json")[str(one)], probs, steps)


def test_set_T_integrates_the_recordings_into_as_many_frames(event_run, tmp_path):
    ckpt, data = event_run
    want = _eval_probs(ckpt, T=3)
    got = _predict([data, "--checkpoint", ckpt, "--set", "model_args.T=3"], tmp_path / "t3.json")
    for path, (probs, steps) in want.items():
        assert len(got[path]["per_step"]) == 3
        _same(got[path], probs, steps)
    pred = load_predictor(str(ckpt), sets=["model_args.T=3"])
    assert pred.model.T == 3 and pred.transform.T == 3 and pred.transform.size == 32


def test_malformed_recordings_are_skipped_and_the_rest_classified(event_run, tmp_path, capsys):
    ckpt, data = event_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(data / "1.bs2", folder / "good.bin")
    (folder / "truncated.bin").write_bytes(encode_nmnist(random_events(3, 34))[:-2])
    (folder / "off_sensor.bin").write_bytes(encode_nmnist(random_events(20, 60)))  # a 60x60 sensor's events
    out = tmp_path / "mixed.json"
    assert cli.main(["predict", str(folder), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["path"] for r in result["predictions"]] == [str(folder / "good.bin")]
    assert sorted(r["path"] for r in result["skipped"]) == [str(folder / "off_sensor.bin"),
                                                            str(folder / "truncated.bin")]
    err = capsys.readouterr().err
    assert f"skipped: {folder / 'truncated.bin'}: truncated N-MNIST file" in err
    assert f"skipped: {folder / 'off_sensor.bin'}: event at x=" in err and "outside the 34x34 sensor" in err
    assert cli.main(["predict", str(folder / "truncated.bin"), "--checkpoint", str(ckpt)]) == 2
    assert "none of the 1 nmnist recording(s) could be read" in capsys.readouterr().err


def _save_run(path, cfg: TrainConfig, net=None):
    """A run's checkpoint of ``net`` (default: an untrained model) trained with ``cfg``: what the model was trained
    on matters here, not how well."""
    net = net or create_model(cfg.model, **cfg.model_args)
    save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(),
                     "meta": {"model": cfg.model, "model_args": cfg.model_args, "img_size": cfg.img_size}}, path)
    return path


def test_images_and_recordings_go_only_to_a_model_trained_on_them(event_run, tmp_path, capsys):
    from PIL import Image

    ckpt, data = event_run
    image = tmp_path / "cat.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(image)
    assert cli.main(["predict", str(image), "--checkpoint", str(ckpt)]) == 2
    assert f"error: {image}: nmnist samples are read from .bin, .bs2, .npz files" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--checkpoint", str(ckpt)]) == 2  # a folder of images only
    assert f"no nmnist recordings (.bin, .bs2, .npz) in {tmp_path}" in capsys.readouterr().err

    cifar = _save_run(tmp_path / "cifar.pt", TrainConfig(
        model="spikingformer_4_256", dataset="cifar10", img_size=16,
        model_args=dict(depth=1, dim=32, num_heads=2, T=1, num_classes=3, img_size=16)))
    recording = tmp_path / "one.bin"
    shutil.copy(data / "1.bs2", recording)
    assert cli.main(["predict", str(recording), "--checkpoint", str(cifar)]) == 2
    assert f"error: {recording} is an event recording: a model trained on cifar10 classifies images (.jpg, .jpeg" in \
        capsys.readouterr().err
    assert cli.main(["predict", str(image), "--checkpoint", str(cifar)]) == 0  # images still go the image way
    assert "after each step" not in capsys.readouterr().out


def test_a_gesture_model_takes_one_window_not_a_recording(tmp_path, monkeypatch, capsys):
    """A window as the event cache holds it (its .npz) or as SpikingJelly's events_np does gets the output of its
    eval frames; a raw recording of many gestures is refused."""
    from spikingformer.analysis.batches import calibrate_bn
    from spikingformer.data.events import time_major

    monkeypatch.setenv("SPIKINGFORMER_EVENT_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(model="spikingformer_dvs_2_256", dataset="dvs128_gesture", img_size=32,
                      data_dir=str(write_gesture(tmp_path / "gesture")),
                      model_args=dict(depth=1, dim=32, num_heads=2, T=2, num_classes=11, img_size=32,
                                      downsample=[False, False, True, True]))
    val = build_data(cfg, 32).val
    x = time_major([val[i][0] for i in range(len(val))])  # eval's frames of the test windows, which reading caches
    # BN statistics of these frames make the untrained model's neurons fire: each window gets its own output
    net = calibrate_bn(create_model(cfg.model, **cfg.model_args), [x])
    with torch.no_grad():
        want = net(x).softmax(-1)
    assert not torch.allclose(want[0], want[1], atol=1e-3)
    ckpt = _save_run(tmp_path / "gesture.pt", cfg, net)
    cached = [reader.file(recording, *window) for reader, recording, window in val.base.items]
    events = np.load(cached[0])["events"]
    sj = tmp_path / "sj.npz"  # the first window as SpikingJelly's events_np holds it
    np.savez(sj, t=events["t"], x=events["x"], y=events["y"], p=events["p"])
    got = _predict([*cached, sj, "--checkpoint", ckpt, "--topk", "11"], tmp_path / "g.json")
    for path, probs in zip([*cached, sj], [*want, want[0]]):
        record = got[str(path)]
        assert [t["prob"] for t in sorted(record["top"], key=lambda t: t["index"])] == pytest.approx(
            probs.tolist(), abs=1e-5)
        assert len(record["per_step"]) == 2
    capsys.readouterr()
    recording = val.base.items[0][1]
    assert cli.main(["predict", str(recording), "--checkpoint", str(ckpt)]) == 2
    assert (f"{recording}: dvs128_gesture samples are read from .npz files; a raw DVS128 Gesture recording (.aedat) "
            "holds many labelled gestures, not one sample") in capsys.readouterr().err


def test_each_event_dataset_reads_its_own_sample_files(tmp_path):
    from spikingformer.data.events import read_cifar10_dvs_aedat

    recording = tmp_path / "cat_0.aedat"
    recording.write_bytes(encode_cifar10_dvs(random_events(50, 128, seed=3)))
    files = input_files("cifar10_dvs")
    assert files.events and files.suffixes == (".aedat", ".npz") and files.refusal(recording) is None
    np.testing.assert_array_equal(files.load(str(recording)), read_cifar10_dvs_aedat(recording))
    assert input_files("dvs128_gesture").refusal(recording).startswith(
        f"{recording}: dvs128_gesture samples are read from .npz files; a raw DVS128 Gesture recording")
    assert input_files("nmnist").refusal(recording) == (
        f"{recording}: nmnist samples are read from .bin, .bs2, .npz files")


def test_early_exit_on_event_frames_is_priced(event_run, tmp_path):
    """Event batches come time-major ([T, B, 2, H, W]): every layer's spikes are still charged per sample
    and step, so stopping all recordings after the first frame costs less than reading both."""
    from spikingformer.train.scoring import evaluate_checkpoint

    ckpt, data = event_run
    r = evaluate_checkpoint(str(ckpt), str(data), device="cpu", exit_at=(1e-9, 1.0))
    first, last = r["early_exit"]
    assert first["mean_steps"] == 1.0 and last["mean_steps"] == 2.0
    assert 0 < first["backbone_uJ"] < last["backbone_uJ"] == pytest.approx(r["backbone_uJ"], rel=1e-9)
