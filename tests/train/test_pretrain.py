"""MAE pre-training engine end to end on tiny class-folder images: outputs, exact resume, CLI, fine-tune loading."""
import dataclasses
import json
import os
import signal

import pytest
import torch

from spikingformer import create_model
from spikingformer.cli import main
from spikingformer.data.sources import DATASETS
from spikingformer.train import pretrain
from spikingformer.train.config import ConfigError, load_config
from spikingformer.train.pretrain import (
    IMAGE_DATASETS,
    PretrainConfig,
    load_pretrained_encoder,
    run,
)
from spikingformer.weights import checkpoint as ckpt
from spikingformer.weights.checkpoint import CheckpointError, load_checkpoint

from ..data.helpers import write_class_tree

TINY = dict(depth=1, dim=32, num_heads=2)  # at 32x32: a 2x2 patch grid, one patch visible


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(data_dir, out, **kw) -> PretrainConfig:
    base = dict(model="spikformer_v2_8_384", model_args=TINY, dataset="folder", data_dir=str(data_dir), holdout=6,
                img_size=32, scale=(0.5, 1.0), decoder_dim=32, decoder_depth=1, decoder_heads=2, batch_size=4,
                val_batch_size=8, workers=0, lr=2e-3, epochs=2, warmup_epochs=1, output=str(out), progress=False)
    return PretrainConfig(**{**base, **kw})


def cli(*argv) -> int:
    return main(list(argv))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_class_tree(tmp_path_factory.mktemp("data") / "train", per_class=10, size=32).parent


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    """An uninterrupted run with mid-epoch checkpoints: 24 train images, 6 steps an epoch, 2 epochs."""
    out = tmp_path_factory.mktemp("ref")
    torch.set_num_threads(1)
    return out, run(tiny_config(tree, out, ckpt_every=2))


def test_run_writes_metrics_curve_reconstructions_and_checkpoint(reference):
    out, summary = reference
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "val_loss", "val_baseline_loss", "lr", "val_split"} <= set(lines[0])
    assert lines[0]["val_split"] == "val (held-out 6 of 30 train images, class-balanced, seed 0)"
    # predicting each patch's mean scores (n - 1) / n on norm_pix targets, with n = 16 * 16 * 3
    assert lines[0]["val_baseline_loss"] == pytest.approx(767 / 768, abs=1e-4)
    for name in ("metrics.png", "reconstruction.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    state = load_checkpoint(out / "last.pt")
    assert state["progress"]["epoch"] == 2 and state["progress"]["global_step"] == 12 == summary["steps"]
    assert state["meta"]["kind"] == "spikformer_v2_mae" and state["meta"]["T"] == 1
    assert any(k.startswith("decoder_blocks.") for k in state["model"])


def _killed_after_epoch_2_step_2(tree, out, monkeypatch) -> PretrainConfig:
    """Run until the first mid-epoch checkpoint of epoch 2 is written, then stop as a SIGKILL would."""
    cfg = tiny_config(tree, out, ckpt_every=2)
    save = ckpt.save_checkpoint

    def save_then_die(state, path):
        save(state, path)
        if state["progress"]["epoch"] == 1 and state["progress"]["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    return cfg


def test_killed_run_resumes_to_the_uninterrupted_weights(tree, tmp_path, reference, monkeypatch):
    """Stop a run right after its first mid-epoch checkpoint of epoch 2 (as a SIGKILL would), resume it:
    weights, optimizer moments and per-epoch metrics equal the uninterrupted run's."""
    cfg = _killed_after_epoch_2_step_2(tree, tmp_path / "killed", monkeypatch)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["progress"]["step"] == 2
    with pytest.raises(FileExistsError, match="already holds a run"):
        run(cfg)
    run(cfg, resume=True)
    assert_same_run(reference[0] / "last.pt", tmp_path / "killed" / "last.pt")


def test_checkpoints_carry_the_rng_streams_and_a_resume_continues_them(tree, tmp_path, reference, monkeypatch):
    """As ``train``'s: every checkpoint holds each process's RNG state (``rng``, one per process), and a resumed
    run continues from it rather than from the seed; a checkpoint from before they were saved still resumes."""
    saved = load_checkpoint(reference[0] / "last.pt")["rng"]
    assert isinstance(saved, list) and len(saved) == 1 and set(saved[0]) >= {"python", "numpy", "torch"}
    cfg = _killed_after_epoch_2_step_2(tree, tmp_path / "killed", monkeypatch)
    killed = load_checkpoint(tmp_path / "killed" / "last.pt")
    at_kill = killed["rng"][0]
    del killed["rng"]  # as a checkpoint written before pre-training saved its RNG streams
    (tmp_path / "old").mkdir()
    ckpt.save_checkpoint(killed, tmp_path / "old" / "last.pt")
    restored, set_rng = [], ckpt.set_rng_state
    monkeypatch.setattr(ckpt, "set_rng_state", lambda state: restored.append(state) or set_rng(state))
    run(cfg, resume=True)
    assert len(restored) == 1 and torch.equal(restored[0]["torch"], at_kill["torch"])
    assert restored[0]["python"] == at_kill["python"]
    assert torch.equal(restored[0]["numpy"]["keys"], at_kill["numpy"]["keys"])
    assert_same_run(reference[0] / "last.pt", tmp_path / "killed" / "last.pt")
    restored.clear()
    assert run(dataclasses.replace(cfg, output=str(tmp_path / "old")), resume=True)["epochs"] == 2
    assert restored == []  # the old checkpoint resumed, with the streams as seeded


def test_ctrl_c_mid_epoch_saves_that_step_and_resume_ends_as_uninterrupted(tree, tmp_path, reference, monkeypatch):
    """SIGINT in epoch 2's third batch: the run stops after that batch with its step saved (not one of the
    ckpt_every checkpoints), and the resumed run ends with the uninterrupted run's weights."""
    from spikingformer.train.safe_stop import RunInterrupted

    make_loss = pretrain.masked_patch_loss

    def signalled(cfg, state, info):
        step_loss = make_loss(cfg, state, info)

        def loss(model, x, y):
            if state.global_step == 8:  # 6 steps an epoch
                os.kill(os.getpid(), signal.SIGINT)
            return step_loss(model, x, y)
        return loss

    monkeypatch.setattr(pretrain, "masked_patch_loss", signalled)
    cfg, last = tiny_config(tree, tmp_path / "run", ckpt_every=2), tmp_path / "run" / "last.pt"
    with pytest.raises(RunInterrupted, match=f"^SIGINT in epoch 2 after step 3/6; saved {last} at epoch 2 step 3"):
        run(cfg)
    assert load_checkpoint(last)["progress"]["step"] == 3
    monkeypatch.setattr(pretrain, "masked_patch_loss", make_loss)
    run(cfg, resume=True)
    assert_same_run(reference[0] / "last.pt", last)


def assert_same_run(ref_path, got_path):
    """Weights, optimizer moments and per-epoch metrics (timings aside) of two runs' checkpoints are equal."""
    ref, got = load_checkpoint(ref_path), load_checkpoint(got_path)
    for k in ref["model"]:
        assert torch.equal(got["model"][k], ref["model"][k]), k
    for i, moments in ref["optimizer"]["state"].items():
        for k in moments:
            assert torch.equal(got["optimizer"]["state"][i][k], moments[k]), (i, k)
    timing = {"epoch_seconds", "elapsed_seconds"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in got["progress"]["history"]] == \
           [{k: v for k, v in h.items() if k not in timing} for h in ref["progress"]["history"]]


def test_load_pretrained_encoder_fills_the_backbone_and_keeps_the_head(reference):
    path = reference[0] / "last.pt"
    pre = load_checkpoint(path)["model"]
    clf = create_model("spikformer_v2_8_384", **TINY, img_size=32, num_classes=3, T=2)
    head = {k: v.clone() for k, v in clf.state_dict().items() if k.startswith("head.")}
    info = load_pretrained_encoder(clf, path)
    own = clf.state_dict()
    backbone = [k for k in own if not k.startswith("head.")]
    assert info["loaded"] == len(backbone) and info["head"] == ["head.fc.bias", "head.fc.weight"]
    for k in backbone:
        assert torch.equal(own[k], pre["encoder." + k]), k
    for k, v in head.items():
        assert torch.equal(own[k], v), k
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_load_pretrained_encoder_rejects_what_does_not_fit(reference, tmp_path):
    path = reference[0] / "last.pt"
    with pytest.raises(ValueError, match=r"mis-shaped \d+ \['blocks.0.attn.k.bn.bias: checkpoint \(32,\) vs model"):
        load_pretrained_encoder(create_model("spikformer_v2_8_384", **{**TINY, "dim": 64}, num_classes=3), path)
    with pytest.raises(ValueError, match=r"missing \d+ \['blocks.1."):
        load_pretrained_encoder(create_model("spikformer_v2_8_384", **{**TINY, "depth": 2}, num_classes=3), path)
    with pytest.raises(ValueError, match=r"missing .* unexpected \d+ \['stem.layers"):
        load_pretrained_encoder(create_model("spikformer_4_384", **TINY, num_classes=3), path)
    clf = create_model("spikformer_v2_8_384", **TINY, num_classes=3)
    ckpt.save_checkpoint({"model": clf.state_dict(), "meta": {"model": "spikformer_v2_8_384"}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not a Spikformer V2 MAE pre-training checkpoint"):
        load_pretrained_encoder(clf, tmp_path / "c.pt")  # a classifier's checkpoint
    torch.save(clf.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a spikingformer checkpoint"):
        load_pretrained_encoder(clf, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_encoder(clf, tmp_path / "none.pt")


def test_imagenet_recipe_follows_the_paper():
    """V2 §5.2: 75 % masking, a 4-layer 256-dim 4-head decoder, 200 epochs (20 warm-up), base lr 1e-3, weight
    decay 0.05, batch 1024 (8 x 128), T = 1, and "we employed random cropping": no flip."""
    cfg = load_config("imagenet_v2_mae_pretrain", cls=PretrainConfig)
    assert (cfg.mask_ratio, cfg.decoder_depth, cfg.decoder_dim, cfg.decoder_heads) == (0.75, 4, 256, 4)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.lr, cfg.weight_decay, cfg.batch_size) == (200, 20, 1e-3, 0.05, 128)
    assert cfg.model_args["T"] == 1 and cfg.hflip == 0.0 and cfg.scale[1] == 1.0


def test_config_rejects_label_options_and_bad_mae_keys(tree, tmp_path):
    for bad, match in ((dict(mixup=0.8), r"\['mixup'\] act on labels"), (dict(smoothing=0.1), "smoothing"),
                       (dict(mask_ratio=1.0), "mask_ratio must be in"), (dict(decoder_dim=30), "decoder_dim"),
                       (dict(model_args={**TINY, "num_classes": 3}), "num_classes")):
        with pytest.raises(ConfigError, match=match):
            tiny_config(tree, tmp_path, **bad)
    for dataset in sorted(set(DATASETS) - set(IMAGE_DATASETS)):  # e.g. event recordings: no pixels to rebuild
        with pytest.raises(ConfigError, match="reconstructs the pixels of static images"):
            tiny_config(tree, tmp_path, dataset=dataset)


def test_cli_help_json_and_errors(tree, tmp_path, capsys):
    import yaml

    with pytest.raises(SystemExit) as e:
        cli("pretrain", "--help")
    assert e.value.code == 0 and "usage: spikingformer pretrain" in capsys.readouterr().out
    cfg = tiny_config(tree, tmp_path / "run", epochs=1, warmup_epochs=0, limit_train=8)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert cli("pretrain", "--config", str(path), "--json", str(tmp_path / "new" / "s.json")) == 0
    assert "masked-patch loss" in capsys.readouterr().out
    assert json.loads((tmp_path / "new" / "s.json").read_text())["steps"] == 2
    assert cli("pretrain", "--config", str(path)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli("pretrain", "--config", str(path), "--set", "model=spikingformer_4_384") == 2
    assert "not a Spikformer V2" in capsys.readouterr().err
    assert cli("pretrain", "--config", str(path), "--set", "mixup=0.5") == 2
    assert "act on labels" in capsys.readouterr().err


def test_train_init_from_fine_tunes_the_pretrained_encoder(tree, tmp_path, reference, monkeypatch):
    """``spikingformer train`` with ``init_from``: the classifier starts from the pre-trained backbone."""
    from spikingformer.train import classify as train
    from spikingformer.train.config import TrainConfig

    out, _ = reference
    encoder = {k[len("encoder."):]: v for k, v in load_checkpoint(out / "last.pt")["model"].items()
               if k.startswith("encoder.")}
    started = {}
    real_build = train.build_training

    def spy(cfg, model, *args, **kw):  # runs after init_from, before the first step
        started.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_build(cfg, model, *args, **kw)

    monkeypatch.setattr(train, "build_training", spy)
    cfg = TrainConfig(model="spikformer_v2_8_384", model_args={**TINY, "T": 2}, dataset="folder", data_dir=str(tree),
                      val_split="holdout", holdout=6, img_size=32, batch_size=4, val_batch_size=8, workers=0,
                      epochs=1, warmup_epochs=0, cooldown_epochs=0, smoothing=0.0, output=str(tmp_path / "ft"),
                      progress=False, init_from=str(out / "last.pt"))
    summary = train.run(cfg)
    assert summary["epochs"] == 1
    assert set(encoder) == {k for k in started if not k.startswith("head.")}
    for k, v in encoder.items():
        assert torch.equal(started[k], v), k
    bad = dataclasses.replace(cfg, output=str(tmp_path / "bad"), init_from=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="nope.pt"):
        train.run(bad)


def test_pretrain_help_fine_tunes_as_the_readme_does_and_that_command_works(tree, tmp_path, reference, capsys):
    """`pretrain --help` and the MAE guide give one way to fine-tune: `spikingformer train --set init_from=`."""
    import re
    from pathlib import Path

    import yaml

    from spikingformer import cli as main_cli
    from spikingformer.train.config import TrainConfig

    with pytest.raises(SystemExit):
        cli("pretrain", "--help")
    told = " ".join(capsys.readouterr().out.split())
    assert "`spikingformer train --config imagenet_v2_finetune --set init_from=OUTPUT/last.pt`" in told
    guide = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "mae.md").read_text()  # the README's, moved
    assert re.search(r"spikingformer train --config \S+_finetune\S* .*\s+--set init_from=runs/\S+/last\.pt", guide)
    out, _ = reference
    cfg = TrainConfig(model="spikformer_v2_8_384", model_args={**TINY, "T": 2}, dataset="folder", data_dir=str(tree),
                      holdout=6, img_size=32, batch_size=4, val_batch_size=8, workers=0, epochs=1, warmup_epochs=0,
                      cooldown_epochs=0, output=str(tmp_path / "ft"), progress=False)
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert main_cli.main(["train", "--config", str(tmp_path / "ft.yaml"), "--set", f"init_from={out}/last.pt",
                          "--json", str(tmp_path / "ft.json")]) == 0
    assert "backbone tensors from" in capsys.readouterr().out
    assert json.loads((tmp_path / "ft.json").read_text())["config"]["init_from"] == f"{out}/last.pt"


def test_grad_checkpointing_pretrains_to_the_same_weights(tree, tmp_path, reference, monkeypatch):
    import spikingformer.nn.layers as layers

    calls = []
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(
        *a, **k))
    run(tiny_config(tree, tmp_path / "ckpt", ckpt_every=2, grad_checkpointing=True))
    assert calls
    ref, got = load_checkpoint(reference[0] / "last.pt")["model"], load_checkpoint(tmp_path / "ckpt" / "last.pt")["model"]
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
