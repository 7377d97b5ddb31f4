"""The training engine end to end on tiny fixtures: outputs, eval, and exact resume after SIGKILL."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikingformer import cli
from spikingformer.analysis.early_exit import calibration_split
from spikingformer.train.classify import run
from spikingformer.train.config import TrainConfig, from_dict
from spikingformer.weights.checkpoint import CheckpointError, load_checkpoint

from ..data.helpers import write_class_tree

TINY = dict(depth=1, dim=32, num_heads=2, T=1, downsample=[False, False, True, True])


pytestmark = pytest.mark.usefixtures("one_thread")


def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_config(data_dir, out, **kw) -> TrainConfig:
    """Every augmentation path of the recipes (RandAugment, erasing, Mixup/CutMix) on 16x16 images."""
    base = dict(model="spikingformer_4_256", model_args=TINY, dataset="folder", data_dir=str(data_dir),
                holdout=6, img_size=16, scale=(0.5, 1.0), aa="rand-m9-n1-mstd0.4-inc1", reprob=0.25,
                mixup=0.5, cutmix=1.0, mixup_off_epoch=2, batch_size=4, val_batch_size=8, workers=0, lr=2e-3,
                epochs=2, warmup_epochs=1, cooldown_epochs=1, clip_grad=1.0, output=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_class_tree(tmp_path_factory.mktemp("data") / "train", per_class=10).parent


def test_train_writes_metrics_plot_summary_and_checkpoints(tree, tmp_path, capsys):
    out = tmp_path / "run"
    summary = run(tiny_config(tree, out))
    first = capsys.readouterr().out.splitlines()[0]  # names the model's size and how it computes
    assert first.startswith("spikingformer_4_256 (depth=1, dim=32, num_heads=2, T=1, downsample=[False, False, "
                            "True, True]): 0.")
    assert ", eager, fp32; starting" in first
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_acc", "val_acc5", "lr", "epoch_seconds", "val_split"} <= set(lines[0])
    assert lines[0]["val_split"] == "val (held-out 6 of 30 train images, class-balanced, seed 0)"
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["final_val_acc"] == lines[-1]["val_acc"] and summary["spike_driven"] is True
    assert 0.0 < summary["firing_rate"] < 1.0
    assert summary["best_val_acc"] == max(r["val_acc"] for r in lines)
    best = load_checkpoint(out / "best.pt")
    assert best["progress"]["epoch"] == summary["best_epoch"]
    assert from_dict(TrainConfig, best["config"]) == tiny_config(tree, out)

    # eval rebuilds the model and finds the same held-out split: the same accuracy as during training
    assert cli.main(["eval", "--checkpoint", str(out / "best.pt"), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["val_acc"] == summary["best_val_acc"] and result["val_split"] == lines[0]["val_split"]
    assert result["checkpoint"] == str(out / "best.pt")
    assert "top-1" in capsys.readouterr().out

    # a second run into the same folder must not clobber it; resuming with another config must not either
    assert cli.main(["train", "--config", _yaml(tmp_path, tiny_config(tree, out))]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--config", _yaml(tmp_path, tiny_config(tree, out)), "--resume", "--set", "lr=0.1"]) == 2
    assert "differs from the checkpoint's in ['lr']" in capsys.readouterr().err


def test_eval_rejects_foreign_checkpoint(tmp_path, capsys):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "x.pt")
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "x.pt")]) == 2
    assert "not a spikingformer checkpoint" in capsys.readouterr().err


def test_eval_names_a_bad_device(tmp_path, capsys):
    cases = [("bogus", "device must be auto or a torch device")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "device 'cuda' requested but CUDA is not available"))
    for device, msg in cases:  # refused before the checkpoint (which does not exist) is read
        assert cli.main(["eval", "--checkpoint", str(tmp_path / "x.pt"), "--device", device]) == 2
        assert msg in capsys.readouterr().err


def _eval(ckpt, out: Path, *args) -> dict:
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def test_eval_on_data_with_its_own_val_split_holds_out_as_the_run_did_and_says_so(tree, tmp_path, capsys):
    """A `val_split: holdout` run (the cifar10_jpeg recipe's) evaluated with `--data DIR`, DIR having a val/."""
    data = write_class_tree(tmp_path / "data" / "train", per_class=10).parent
    write_class_tree(data / "val", per_class=3, seed=7)
    run(tiny_config(data, tmp_path / "run", val_split="holdout", epochs=1, warmup_epochs=0, cooldown_epochs=0))
    ckpt, held_out = tmp_path / "run" / "last.pt", "val (held-out 6 of 30 train images, class-balanced, seed 0)"
    own = _eval(ckpt, tmp_path / "own.json")
    assert own["val_split"] == held_out and own["notes"] == []
    capsys.readouterr()

    given = _eval(ckpt, tmp_path / "given.json", "--data", str(data))
    assert (given["val_split"], given["val_acc"], given["val_images"]) == (held_out, own["val_acc"], 6)
    (note,) = given["notes"]
    assert f"{data} has a split of its own (val ({data / 'val'}, 9 images))" in note
    assert f"--split test scores {data}'s own instead" in note and f"note: {note}" in capsys.readouterr().out

    auto = _eval(ckpt, tmp_path / "auto.json", "--data", str(data), "--set", "val_split=auto")
    assert (auto["val_split"], auto["val_images"], auto["notes"]) == (f"val ({data / 'val'}, 9 images)", 9, [])
    own_split = _eval(ckpt, tmp_path / "test.json", "--data", str(data), "--split", "test")
    assert (own_split["val_split"], own_split["val_images"], own_split["notes"]) == (auto["val_split"], 9, [])
    # another root without a val/ of its own holds training images only: its held-out split, said so
    (note,) = _eval(ckpt, tmp_path / "tree.json", "--data", str(tree))["notes"]
    assert f"{tree} holds training images only ({tree}/train/), no test split: scored the held-out val split" in note


def test_eval_reports_accuracy_after_each_time_step(tree, tmp_path, capsys):
    """Step t's top-1 is what evaluating at T = t gives (static images, causal neurons); the last is the top-1."""
    run(tiny_config(tree, tmp_path / "run", model_args={**TINY, "T": 3}, epochs=1, warmup_epochs=0,
                    cooldown_epochs=0))
    ckpt = tmp_path / "run" / "last.pt"
    full = _eval(ckpt, tmp_path / "full.json", "--plot", str(tmp_path / "steps.png"), "--early-exit", "1e-9", "1")
    steps = full["val_acc_per_step"]
    assert len(steps) == 3 and steps[-1] == full["val_acc"]
    out = capsys.readouterr().out
    assert "top-1 after each time step: 1 " in out
    # any read-out is sure enough at 1e-9 (the first step answers); none at 1 short of a softmax of exactly 1
    first, last = full["early_exit"]
    assert (first["confidence"], first["val_acc"], first["mean_steps"]) == (1e-9, steps[0], 1.0)
    assert last["confidence"] == 1.0 and last["val_acc"] == steps[-1] and last["mean_steps"] <= 3.0
    assert 0 < first["backbone_uJ"] < last["backbone_uJ"] <= full["backbone_uJ"]
    assert (f"early exit at confidence 1e-09: top-1 {100 * steps[0]:.2f} % in 1.00 of 3 time steps on average, "
            f"{first['backbone_uJ']:.4g} uJ per image") in out
    assert f"read-out excluded; {full['backbone_uJ']:.4g} uJ per image for all 3 steps" in out
    assert full["proven"] and "spike-driven: yes, proven" in out  # silent layers or not: built of spikes
    assert (tmp_path / "steps.png").read_bytes().startswith(b"\x89PNG")
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--early-exit", "0"]) == 2
    assert "early-exit confidences are softmax probabilities in (0, 1], got [0.0]" in capsys.readouterr().err

    # --calibrate: two passes over disjoint parts, which add up to the single pass above
    exits = ["--early-exit", "1e-9", "0.6", "1"]
    cal = _eval(ckpt, tmp_path / "cal.json", *exits, "--calibrate", "0.4", "--max-drop", "100",
                "--plot", str(tmp_path / "cal.png"))
    c = cal["early_exit_calibration"]
    n_cal, n_scored = c["calibration_images"], c["scored_images"]
    assert (n_cal, n_scored) == tuple(map(len, calibration_split(full["val_images"], 0.4, 0)))
    for key in ("val_acc", "val_loss", "backbone_uJ"):
        assert cal[key] == pytest.approx(full[key], rel=1e-9)
    assert cal["val_acc_per_step"] == pytest.approx(steps, rel=1e-9)
    whole = _eval(ckpt, tmp_path / "one.json", *exits)["early_exit"]
    assert len(whole) == len(c["calibration"]["early_exit"]) == len(cal["early_exit"]) == 3
    for w, a, b in zip(whole, c["calibration"]["early_exit"], cal["early_exit"]):
        for key in ("val_acc", "mean_steps", "backbone_uJ"):  # each policy: the two parts weighted by images
            assert (a[key] * n_cal + b[key] * n_scored) / (n_cal + n_scored) == pytest.approx(w[key], rel=1e-9)
    # any top-1 is within 100 points: the cheapest policy is chosen, the first step's, and scored where not chosen
    assert c["chosen"] == cal["early_exit"][0] and c["chosen"]["mean_steps"] == 1.0
    out = capsys.readouterr().out
    assert f"scored on {n_scored} of the {n_cal + n_scored} images" in out and "chosen: confidence 1e-09" in out
    assert (tmp_path / "cal.png").read_bytes().startswith(b"\x89PNG")
    for bad, msg in [(["--calibrate", "0.5"], "--calibrate chooses among early-exit confidences"),
                     ([*exits, "--calibrate", "1"], "fraction of the split to choose the threshold on, in (0, 1)"),
                     ([*exits, "--calibrate", "0"], "in (0, 1); got 0"),  # not "off"
                     (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                     ([*exits, "--calibrate", "0.5", "--max-drop", "-1"], "--max-drop is the top-1")]:
        assert cli.main(["eval", "--checkpoint", str(ckpt), *bad]) == 2
        assert msg in capsys.readouterr().err
    for t in (1, 2):
        assert _eval(ckpt, tmp_path / f"t{t}.json", "--set", f"model_args.T={t}")["val_acc"] == steps[t - 1]


def test_spike_stats_name_the_layers_nothing_fired_into():
    from spikingformer import create_model
    from spikingformer.train.evaluation import spike_stats

    from ..helpers import calibrate_bn

    torch.manual_seed(0)
    model, x = create_model("spikingformer_4_256", depth=1, dim=32, num_heads=4, num_classes=5), torch.randn(4, 3, 32, 32)
    batches = [(x, torch.zeros(4, dtype=torch.long))]
    s = spike_stats(model, batches, torch.device("cpu"))  # eval mode, BN at its initial statistics
    assert s["spike_driven"] and "blocks.0.mlp.fc1.conv" in s["silent_layers"]
    assert s["proven"] and s["unproven_layers"] == []  # what the run cannot show, the construction proves
    calibrate_bn(model, x)
    assert spike_stats(model, batches, torch.device("cpu"))["silent_layers"] == []


def test_per_step_accuracy_counts_each_steps_read_out():
    from spikingformer import create_model
    from spikingformer.analysis.energy import estimate_energy
    from spikingformer.train.evaluation import evaluate

    from ..helpers import calibrate_bn

    torch.manual_seed(0)
    kw = dict(depth=1, dim=32, num_heads=4, num_classes=5)
    model, x = create_model("spikingformer_4_256", T=3, **kw), torch.randn(16, 3, 32, 32)
    calibrate_bn(model, x)
    one = create_model("spikingformer_4_256", T=1, **kw).eval()
    one.load_state_dict(model.state_dict())
    with torch.no_grad():
        y = one(x).argmax(1)  # labels the first step's read-out gets all right
        last = (model(x).argmax(1) == y).float().mean().item()
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    r = evaluate(model, batches, torch.device("cpu"), per_step=True)
    assert r["val_acc_per_step"][0] == 1.0 and r["val_acc_per_step"][-1] == pytest.approx(last) == r["val_acc"]
    assert last < 1.0 and len(r["val_acc_per_step"]) == 3
    assert "val_acc_per_step" not in evaluate(model, batches, torch.device("cpu"))
    # early exits are priced from the sample-steps they ran: all at step 1 is the energy of T = 1
    r = evaluate(model, batches, torch.device("cpu"), per_step=True, exit_at=(1e-9,))
    assert r["early_exit"][0]["backbone_uJ"] == pytest.approx(estimate_energy(one, batches).backbone_mJ * 1e3,
                                                              rel=1e-9)
    assert r["backbone_uJ"] == pytest.approx(estimate_energy(model, batches).backbone_mJ * 1e3, rel=1e-9)


def test_eval_set_of_bad_model_options_is_one_error_line(tree, tmp_path, capsys):
    run(tiny_config(tree, tmp_path / "run", epochs=1, warmup_epochs=0, cooldown_epochs=0))
    ckpt = str(tmp_path / "run" / "last.pt")
    for item, said in [("model_args.bogus=1", "unknown option(s) ['bogus']"),
                       ("model_args.T=abc", "option 'T' expects int, got 'abc'"),
                       ("model_args=5", "model options are set one by one"),
                       ("model_args.tau=1.0", "tau must be > 1")]:
        assert cli.main(["eval", "--checkpoint", ckpt, "--set", item]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and "Traceback" not in err, item
        assert "may change the weights' shapes" not in err  # not a question of shapes


def test_eval_runs_the_neurons_the_config_trains_with(cuda_capability):
    """``spikingformer eval`` compiles nothing, keeps the config's precision, and on CUDA runs the neurons
    that the run's fast path trained and validated with."""
    import dataclasses
    import importlib.util

    from spikingformer.nn.fast import FastPath
    from spikingformer.train.runs import eval_path

    cuda = eval_path(TrainConfig(), "cuda")
    assert not cuda.compile and cuda.amp_dtype == torch.bfloat16
    assert cuda.lif_backend == ("triton" if importlib.util.find_spec("triton") else "torch")
    assert eval_path(TrainConfig(fast="off"), "cuda").lif_backend == "torch"  # trained with the PyTorch loop
    assert eval_path(TrainConfig(lif_backend="torch"), "cuda").lif_backend == "torch"
    assert eval_path(TrainConfig(), "cpu") == dataclasses.replace(FastPath.off(), lif_backend="torch")


def test_cli_reports_bad_config_without_traceback(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("model: spikingformer_4_256\nmodel_args: {depht: 1}\n")
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "unknown option(s) ['depht']" in capsys.readouterr().err
    # with img_size set (as every recipe does) and no data at all: the model options still fail first
    (tmp_path / "r.yaml").write_text(f"model: spikingformer_4_256\nimg_size: 32\ndata_dir: {tmp_path / 'none'}\n")
    for item, msg in (("model_args.depht=1", "unknown option(s) ['depht']"),
                      ("model_args.depth=abc", "option 'depth' expects int, got 'abc'")):
        assert cli.main(["train", "--config", str(tmp_path / "r.yaml"), "--set", item]) == 2
        assert msg in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval", "export", "demo"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0 and "usage: spikingformer " + command in capsys.readouterr().out


def _yaml(tmp_path: Path, cfg: TrainConfig) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return str(path)


def assert_same_run(ref_ckpt, ckpt):
    """Two runs' checkpoints hold identical weights, optimizer state and per-epoch metrics (timings aside)."""
    ref, got = load_checkpoint(ref_ckpt), load_checkpoint(ckpt)
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
    for i, state in ref["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(got["optimizer"]["state"][i][k], v), (i, k)
    timing = {"epoch_seconds", "elapsed_seconds"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in got["progress"]["history"]] == \
           [{k: v for k, v in h.items() if k not in timing} for h in ref["progress"]["history"]]


LONG = dict(holdout=12, epochs=2, cooldown_epochs=1)  # 78 train images: 19 steps an epoch, 3 epochs


@pytest.fixture(scope="module")
def long_tree(tmp_path_factory):
    return write_class_tree(tmp_path_factory.mktemp("long") / "train", per_class=30).parent


@pytest.fixture(scope="module")
def long_reference(long_tree, tmp_path_factory):
    """The last.pt of an uninterrupted run on ``long_tree``, which stopped and resumed runs must end with."""
    out = tmp_path_factory.mktemp("ref")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    run(tiny_config(long_tree, out, workers=2, **LONG))  # worker count must not matter
    torch.set_num_threads(n)
    return out / "last.pt"


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(long_tree, long_reference, tmp_path):
    """Kill a run right after a mid-epoch checkpoint of its second epoch, resume it, and compare with a run
    never interrupted: weights, optimizer moments and per-epoch metrics must be identical (CPU, same threads).
    Mixup, RandAugment and random erasing are on, so RNG restoration and seeded augmentation matter."""
    data, cfg = long_tree, dict(LONG, ckpt_every=3)
    killed = tiny_config(data, tmp_path / "killed", **cfg)
    config = _yaml(tmp_path, killed)
    last = tmp_path / "killed" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "spikingformer.cli", "train", "--config", config],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, deadline = None, time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp is not None and stamp != seen:
                # frozen while its checkpoint is read, so the one read is the one it is killed at
                os.kill(proc.pid, signal.SIGSTOP)
                seen = last.stat().st_mtime_ns
                progress = load_checkpoint(last)["progress"]
                if progress["epoch"] == 1 and progress["step"] > 0:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.002)
    finally:
        if proc.poll() is None and seen is None:
            proc.kill()
        elif proc.poll() is None:  # the deadline passed, or it was stopped: do not leave it frozen
            os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.stderr.close()
    at_kill = load_checkpoint(last)["progress"]
    assert at_kill["epoch"] == 1 and at_kill["step"] > 0  # resuming from inside an epoch

    assert cli.main(["train", "--config", config, "--resume"]) == 0
    assert_same_run(long_reference, last)
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 3


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"no {path}: {proc.communicate(timeout=60)[1].decode()[-2000:]}"


def test_ctrl_c_mid_epoch_saves_the_run_and_resume_needs_no_set_again(long_tree, long_reference, tmp_path, capsys):
    """The README's commands: `train --config FILE --set data_dir=DIR`, Ctrl-C (SIGINT to the terminal's whole
    process group, DataLoader workers included) once it is in its second epoch, then `train --config FILE
    --resume` without the --set: the run stops with one line naming what it saved, mid-epoch (nothing else
    checkpoints inside an epoch here), and the resumed run ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    config = _yaml(tmp_path, tiny_config("data/nowhere", out, workers=2, **LONG))
    proc = subprocess.Popen([sys.executable, "-m", "spikingformer.cli", "train", "--config", config, "--set",
                             f"data_dir={long_tree}"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(out / "last.pt", proc)  # the end of epoch 1: the handlers are in place
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=300)[1].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    progress = load_checkpoint(out / "last.pt")["progress"]
    assert proc.returncode == 130 and progress["epoch"] == 1 and progress["step"] >= 1, err
    step = progress["step"]
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"interrupted: SIGINT in epoch 2 after step {step}/19; saved {out / 'last.pt'} at epoch 2 step {step}: "
        "--resume continues there")

    # a changed key is refused by name, whether --set or the config file changes it
    assert cli.main(["train", "--config", config, "--resume", "--set", "lr=0.1"]) == 2
    assert "differs from the checkpoint's in ['lr'] (lr is 0.002 in the run, 0.1 by --set)" in capsys.readouterr().err
    edited = tmp_path / "edited.yaml"
    edited.write_text(Path(config).read_text().replace("epochs: 2", "epochs: 3"))
    assert cli.main(["train", "--config", str(edited), "--resume"]) == 2
    assert "in ['epochs'] (epochs is 2 in the run, 3 by the config)" in capsys.readouterr().err

    assert cli.main(["train", "--config", config, "--resume", "--set", "workers=0"]) == 0
    assert f"resuming at epoch 2 step {step}" in capsys.readouterr().out
    assert_same_run(long_reference, out / "last.pt")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_corrupt_image_stops_the_run_with_one_line_and_a_checkpoint_resume_finishes(long_tree, long_reference,
                                                                                       tmp_path, capfd):
    """One unreadable image among the training images, another in the held-out validation split, loaded by
    DataLoader workers: each stops `spikingformer train` with one line naming the file and where the run
    was, after saving it (the validation failure with the epoch trained); once each file is repaired,
    `--resume` goes on, and the run ends as if nothing had happened."""
    from torchvision.datasets import ImageFolder

    from spikingformer.data import balanced_split

    data = tmp_path / "data"
    shutil.copytree(long_tree, data)
    samples = ImageFolder(str(data / "train")).samples
    rest, held = balanced_split([t for _, t in samples], LONG["holdout"], 0)
    bad_train, bad_val = (Path(samples[max(part)][0]) for part in (rest, held))  # not the first: probed early
    intact = {f: f.read_bytes() for f in (bad_train, bad_val)}
    for f in intact:
        f.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "run"
    config = _yaml(tmp_path, tiny_config(data, out, workers=2, **LONG))
    last = out / "last.pt"

    def train(*args) -> str:
        assert cli.main(["train", "--config", config, *args]) == 2
        err = capfd.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err.strip()

    err = train()
    progress = load_checkpoint(last)["progress"]
    step = progress["step"]
    assert progress["epoch"] == 0 and err.startswith(f"error: epoch 1 step {step + 1}/19: cannot decode image "
                                                     f"{bad_train}: Truncated File Read (expected a readable image")
    assert err.endswith(f"; saved {last} at epoch 1 step {step}: repair or replace that sample (deleting it would "
                        "renumber the dataset), then --resume continues there")
    assert train("--resume") == err  # the same sample, with the same augmentation: the same failure
    bad_train.write_bytes(intact[bad_train])

    err = train("--resume")
    assert (load_checkpoint(last)["progress"]["epoch"], load_checkpoint(last)["progress"]["step"]) == (0, 19)
    assert err.startswith(f"error: validation after epoch 1: cannot decode image {bad_val}: ")
    assert err.endswith(f"; saved {last} at epoch 1 step 19 (trained, not validated): repair or replace that "
                        "sample, then --resume validates the epoch")
    bad_val.write_bytes(intact[bad_val])

    assert cli.main(["train", "--config", config, "--resume"]) == 0
    assert_same_run(long_reference, last)


def test_stopped_between_updates_saves_the_last_update(tree, tmp_path, monkeypatch):
    """accum_steps=4 over 6 batches an epoch: SIGTERM during the second update's group (batch 5 of epoch 2)
    saves the run as the first update of that epoch left it (its gradients only are lost, and recomputed),
    and the resumed run ends with the uninterrupted run's weights."""
    import spikingformer.train.classify as train_module
    from spikingformer.train.safe_stop import RunInterrupted

    cfg = dict(accum_steps=4, sched_on_updates=True, epochs=2, cooldown_epochs=0)
    run(tiny_config(tree, tmp_path / "ref", **cfg))
    make_loss, calls = train_module.classification_loss, []

    def signalled(mixup, criterion):
        step_loss = make_loss(mixup, criterion)

        def loss(*args):
            calls.append(1)
            if len(calls) == 11:  # epoch 2, batch 5
                os.kill(os.getpid(), signal.SIGTERM)
            return step_loss(*args)
        return loss

    monkeypatch.setattr(train_module, "classification_loss", signalled)
    with pytest.raises(RunInterrupted) as stopped:
        run(tiny_config(tree, tmp_path / "run", **cfg))
    assert stopped.value.exit_code == 143 and str(stopped.value).startswith("SIGTERM in epoch 2 after step 5/6; ")
    assert str(stopped.value).endswith(" at epoch 2 step 4: --resume continues there")
    progress = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (1, 4, 10)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are gone with the run
    monkeypatch.setattr(train_module, "classification_loss", make_loss)
    run(tiny_config(tree, tmp_path / "run", **cfg), resume=True)
    assert_same_run(tmp_path / "ref" / "last.pt", tmp_path / "run" / "last.pt")


def test_resume_config_keeps_the_runs_own_set_options_and_refuses_changes_by_name(tree, tmp_path):
    """What `--resume` continues with: the run's recorded config; --set options of its first start need not
    be repeated; a key the config file or --set gives another value is refused, a mutable one is taken."""
    from spikingformer.train.config import apply_overrides, parse_overrides
    from spikingformer.train.run import resume_config
    from spikingformer.weights import checkpoint as ckpt

    out = tmp_path / "run"
    file_cfg = tiny_config("data", out, model_args={**TINY, "T": 1})
    first = parse_overrides([f"data_dir={tree}", "lr=0.01", "model_args.T=2", "workers=3"])
    run_cfg = from_dict(TrainConfig, apply_overrides(file_cfg.to_dict(), first))
    assert resume_config(file_cfg, {}) is file_cfg  # no run yet: a fresh start
    out.mkdir()
    ckpt.save_checkpoint({"config": run_cfg.to_dict(), "overrides": first}, out / "last.pt")

    def resumed(overrides=(), **file_changes):
        cfg = from_dict(TrainConfig, apply_overrides(dataclasses.replace(file_cfg, **file_changes).to_dict(),
                                                     parse_overrides(list(overrides))))
        return resume_config(cfg, parse_overrides(list(overrides)))

    assert resumed() == run_cfg
    assert resumed(["lr=0.01", "workers=0", "progress=true"]) == dataclasses.replace(run_cfg, workers=0, progress=True)
    assert resumed(device="cpu").device == "cpu"  # the file may change what resume allows to change
    with pytest.raises(ValueError, match=r"in \['model_args.T'\] \(model_args.T is 2 in the run, 4 by --set\)"):
        resumed(["model_args.T=4"])
    with pytest.raises(ValueError, match=r"in \['epochs', 'model_args.depth'\] \(epochs is 2 in the run, 5 by the "
                                         r"config; model_args.depth is 1 in the run, 2 by the config\)"):
        resumed(epochs=5, model_args={**TINY, "depth": 2})
    # a checkpoint from before --set options were recorded: the config file must agree with the run, as ever
    ckpt.save_checkpoint({"config": run_cfg.to_dict()}, out / "last.pt")
    with pytest.raises(ValueError, match=r"in \['data_dir', 'lr', 'model_args.T'\]"):
        resumed(["workers=3"])
    assert resumed([f"data_dir={tree}", "lr=0.01", "model_args.T=2"]) == dataclasses.replace(run_cfg, workers=0)


def test_a_run_from_before_a_new_config_key_still_resumes(tree, tmp_path):
    """A checkpoint whose config lacks keys added since (accum_steps, event_policy, holdout_pick) resumes when
    the run asks for their defaults, and is refused when it asks for something else."""
    from spikingformer.train.run import open_run
    from spikingformer.weights import checkpoint as ckpt

    cfg = tiny_config(tree, tmp_path / "old")
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("accum_steps", "event_policy", "holdout_pick")}
    (tmp_path / "old").mkdir()
    ckpt.save_checkpoint({"config": saved}, tmp_path / "old" / "last.pt")
    assert open_run(cfg, resume=True)["config"] == saved
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['accum_steps'\]"):
        open_run(tiny_config(tree, tmp_path / "old", accum_steps=2), resume=True)


def test_truncated_last_checkpoint_stops_resume_with_a_clear_error(tree, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    assert cli.main(["train", "--config", _yaml(tmp_path, tiny_config(tree, out)), "--resume"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_checkpoint(out / "last.pt")


def test_fast_path_trains_like_the_eager_path(tree, tmp_path):
    """``fast: on`` (compile + channels-last + fused AdamW; inductor's CPU backend stands in for CUDA)
    runs the whole engine and lands where the eager path lands, up to float rounding."""
    kw = dict(epochs=1, cooldown_epochs=0, mixup=0.0, cutmix=0.0, aa=None, reprob=0.0, opt="adamw")
    eager = run(tiny_config(tree, tmp_path / "eager", fast="off", **kw))
    fast = run(tiny_config(tree, tmp_path / "fast", fast="on", **kw))
    assert fast["spike_driven"]
    a = load_checkpoint(tmp_path / "eager" / "last.pt")["model"]
    ckpt = load_checkpoint(tmp_path / "fast" / "last.pt")
    b = ckpt["model"]
    assert ckpt["progress"]["global_step"] > 0 and ckpt["optimizer"]["state"]  # it did train
    assert a.keys() == b.keys()  # the compiled wrapper does not leak into the state_dict
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-3, rtol=2e-3, msg=k)
    assert abs(fast["final_val_loss"] - eager["final_val_loss"]) < 1e-2


def test_accumulating_run_resumes_mid_epoch_to_the_same_weights(tree, tmp_path, monkeypatch):
    """accum_steps=4 over 6 batches an epoch (groups of 4 and 2), per-update schedule: a run that stops
    right after its mid-epoch checkpoint in epoch 2 and resumes ends with the weights, optimizer state
    and metrics of the run never stopped."""
    import spikingformer.weights.checkpoint as ckpt_module

    cfg = dict(accum_steps=4, ckpt_every=4, sched_on_updates=True, epochs=2, cooldown_epochs=0)
    reference = run(tiny_config(tree, tmp_path / "ref", **cfg))

    class Stop(Exception):
        pass

    save = ckpt_module.save_checkpoint

    def save_then_stop(state, path):
        save(state, path)
        if state["progress"]["epoch"] == 1 and state["progress"]["step"] > 0:
            raise Stop

    monkeypatch.setattr(ckpt_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        run(tiny_config(tree, tmp_path / "stopped", **cfg))
    stopped = load_checkpoint(tmp_path / "stopped" / "last.pt")["progress"]
    assert (stopped["epoch"], stopped["step"]) == (1, 4)
    monkeypatch.setattr(ckpt_module, "save_checkpoint", save)
    resumed = run(tiny_config(tree, tmp_path / "stopped", **cfg), resume=True)
    assert_same_run(tmp_path / "ref" / "last.pt", tmp_path / "stopped" / "last.pt")
    assert resumed["final_val_acc"] == reference["final_val_acc"]
    assert load_checkpoint(tmp_path / "ref" / "last.pt")["optimizer"]["state"][0]["step"] == 4  # 2 updates an epoch


def test_best_is_the_first_epoch_of_the_highest_val_acc_and_mixup_stops_at_mixup_off_epoch(tree, tmp_path,
                                                                                         monkeypatch):
    """best.pt: strictly higher val_acc (a tie keeps the earlier epoch, as timm's CheckpointSaver), whatever the
    loss does; Mixup runs in epochs 0 .. mixup_off_epoch - 1 (0-based, timm's ``epoch >= mixup_off_epoch``)."""
    import spikingformer.train.classify as train_module

    accs, losses = iter([0.5, 0.5, 0.25]), iter([2.0, 1.0, 0.5])  # the loss keeps falling: not the criterion

    def scripted_evaluate(*args, **kwargs):
        return {"val_loss": next(losses), "val_acc": next(accs), "val_acc5": 1.0, "val_images": 6}

    mixing = []
    make_loss = train_module.classification_loss

    def recording(mixup, criterion):
        mixing.append(mixup.mixup_enabled)
        return make_loss(mixup, criterion)

    monkeypatch.setattr(train_module, "evaluate", scripted_evaluate)
    monkeypatch.setattr(train_module, "classification_loss", recording)
    out = tmp_path / "run"
    summary = run(tiny_config(tree, out, aa=None, reprob=0.0))  # epochs=2 + cooldown 1, mixup_off_epoch=2
    assert mixing == [True, True, False]
    assert (summary["best_val_acc"], summary["best_epoch"]) == (0.5, 1)
    assert load_checkpoint(out / "best.pt")["progress"]["epoch"] == 1


def test_grad_checkpointing_trains_to_the_same_weights(tree, tmp_path, monkeypatch):
    """``grad_checkpointing: true`` recomputes the blocks (the spy counts them) and changes nothing else;
    a run may switch it on when it resumes (after running out of memory, say)."""
    import spikingformer.nn.layers as layers

    calls = []
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(
        *a, **k))
    kw = dict(epochs=1, cooldown_epochs=0)
    run(tiny_config(tree, tmp_path / "plain", **kw))
    assert not calls
    run(tiny_config(tree, tmp_path / "ckpt", grad_checkpointing=True, **kw))
    assert calls
    assert_same_run(tmp_path / "plain" / "last.pt", tmp_path / "ckpt" / "last.pt")
    from spikingformer.train.run import open_run

    assert open_run(tiny_config(tree, tmp_path / "plain", grad_checkpointing=True, **kw), resume=True)


def test_per_step_accuracy_follows_the_time_steps_of_sequence_inputs():
    """Sequences ``[T, B, C, H, W]`` of another T than the model's (event frames of a recipe's T, the weights
    exported at another): one figure per step the inputs have; batches that disagree are an error."""
    from spikingformer import create_model
    from spikingformer.train.evaluation import evaluate

    torch.manual_seed(0)
    model = create_model("spikingformer_4_256", T=4, depth=1, dim=32, num_heads=4, num_classes=5).eval()
    for T in (2, 6):
        batches = [(torch.rand(T, 3, 3, 32, 32).round(), torch.arange(3)) for _ in range(2)]
        r = evaluate(model, batches, torch.device("cpu"), per_step=True)
        assert len(r["val_acc_per_step"]) == T and r["val_acc_per_step"][-1] == r["val_acc"]
    mixed = [(torch.rand(t, 3, 3, 32, 32).round(), torch.arange(3)) for t in (2, 3)]
    with pytest.raises(ValueError, match="a batch of 3 time steps after one of 2"):
        evaluate(model, mixed, torch.device("cpu"), per_step=True)
