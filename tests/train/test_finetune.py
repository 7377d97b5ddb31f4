"""Fine-tuning: layer-wise lr decay (V2 §5.2, as MAE) and ``init_from`` another run's classifier."""
import dataclasses
import json

import pytest
import torch

from spikingformer import create_model
from spikingformer.train.classify import init_from, run
from spikingformer.train.config import ConfigError, TrainConfig
from spikingformer.train.engine import base_lr, build_training
from spikingformer.train.pretrain import PretrainConfig
from spikingformer.weights import checkpoint as ckpt

from ..data.helpers import write_class_tree

TINY = dict(depth=2, dim=32, num_heads=2, T=1)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikingformer_dagger_4_384", "spikformer_4_384",
                                  "spikformer_v2_8_384", "spikingformer_dvs_2_256"])
def test_layer_decay_scales_each_layer_as_mae(name):
    """Stem lowest, then each block, the head at the full lr: scale ``decay ** (depth + 1 - layer)``."""
    model = create_model(name, **TINY)
    cfg = TrainConfig(model=name, layer_decay=0.5, lr=1e-3, warmup_epochs=0, epochs=4, cooldown_epochs=0)
    opt, sched, _, _ = build_training(cfg, model, steps_per_epoch=10)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        layer = 0 if n.startswith(("tokenizer.", "stem.")) else 3 if n.startswith("head.") else int(n.split(".")[1]) + 1
        assert scale[id(p)] == pytest.approx(0.5 ** (3 - layer)), n
    assert len(scale) == len(list(model.parameters()))
    sched.step(1)
    assert base_lr(opt) == pytest.approx(sched._get_lr(1)[0])
    assert sorted({g["lr"] / base_lr(opt) for g in opt.param_groups}) == pytest.approx([0.125, 0.25, 0.5, 1.0])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, cfg.weight_decay}  # none on norms and biases


def test_layer_decay_off_is_one_scale():
    model = create_model("spikingformer_4_256", **TINY)
    opt, _, _, _ = build_training(TrainConfig(), model, steps_per_epoch=10)
    assert {g.get("lr_scale", 1.0) for g in opt.param_groups} == {1.0}


def test_layer_decay_config_is_checked():
    with pytest.raises(ValueError, match=r"layer_decay must be in \[0, 1\]"):
        TrainConfig(layer_decay=1.5)
    with pytest.raises(ConfigError, match="layer_decay is for fine-tuning"):
        PretrainConfig(layer_decay=0.7)


def test_metrics_report_the_schedule_lr_not_the_stem_lr(tmp_path):
    tree = write_class_tree(tmp_path / "data" / "train", per_class=4).parent
    lrs = []
    for decay in (0.0, 0.5):
        cfg = TrainConfig(model="spikingformer_4_256", model_args={**TINY, "downsample": [False, False, True, True]},
                          dataset="folder", data_dir=str(tree), holdout=4, img_size=16, batch_size=4,
                          val_batch_size=8, workers=0, lr=2e-3, epochs=2, warmup_epochs=1, cooldown_epochs=0,
                          layer_decay=decay, output=str(tmp_path / f"run{decay}"), progress=False)
        run(cfg)
        lrs.append([json.loads(line)["lr"] for line in (tmp_path / f"run{decay}" / "metrics.jsonl").open()])
    assert lrs[0] == lrs[1] and lrs[0][1] == pytest.approx(1e-5 + (2e-3 - 1e-5) / 2)  # cosine half-way


def _save_run(path, model, name, **args):
    ckpt.save_checkpoint({"model": model.state_dict(), "meta": {"model": name, "model_args": args}}, path)


def test_init_from_a_train_checkpoint_loads_every_tensor_at_another_T(tmp_path):
    """V2 §5.2: fine-tune at T = 1, then continue from that classifier at T = 4."""
    name = "spikformer_v2_8_384"
    torch.manual_seed(0)
    source = create_model(name, **TINY, num_classes=3)
    _save_run(tmp_path / "t1.pt", source, name, **TINY, num_classes=3)
    cfg = TrainConfig(model=name, init_from=str(tmp_path / "t1.pt"))

    target = create_model(name, **{**TINY, "T": 4}, num_classes=3)
    assert "every tensor" in init_from(target, cfg)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k

    _save_run(tmp_path / "named.pt", source, name, **TINY, num_classes=3)  # a run records its class names
    state = ckpt.load_checkpoint(tmp_path / "named.pt")
    state["meta"]["classes"] = ["cat", "dog", "frog"]
    ckpt.save_checkpoint(state, tmp_path / "named.pt")
    named = dataclasses.replace(cfg, init_from=str(tmp_path / "named.pt"))
    assert "every tensor" in init_from(create_model(name, **TINY, num_classes=3), named, ["cat", "dog", "frog"])
    # three other classes: as many outputs, but the head would answer the wrong question
    assert "freshly initialised" in init_from(create_model(name, **TINY, num_classes=3), named, ["a", "b", "c"])

    other = create_model(name, **TINY, num_classes=5)  # another label set: the head starts fresh
    fresh_head = {k: v.clone() for k, v in other.state_dict().items() if k.startswith("head.")}
    report = init_from(other, cfg)
    assert "head ['head.fc.bias', 'head.fc.weight'] freshly initialised" in report
    for k, v in other.state_dict().items():
        assert torch.equal(v, fresh_head[k] if k.startswith("head.") else source.state_dict()[k]), k


def test_init_from_refuses_what_does_not_fit(tmp_path):
    name = "spikformer_v2_8_384"
    _save_run(tmp_path / "v2.pt", create_model(name, **TINY), name, **TINY)
    cfg = TrainConfig(model="spikingformer_4_256", init_from=str(tmp_path / "v2.pt"))
    with pytest.raises(ckpt.CheckpointError, match="holds a spikformer_v2_8_384, this run trains a spikingformer_4_256"):
        init_from(create_model("spikingformer_4_256", **TINY), cfg)
    with pytest.raises(ValueError, match="does not fit"):  # same name, another architecture
        init_from(create_model(name, **{**TINY, "dim": 64}), dataclasses.replace(cfg, model=name))
    ckpt.save_checkpoint({"model": {}}, tmp_path / "bare.pt")
    with pytest.raises(ckpt.CheckpointError, match="neither a `spikingformer pretrain` nor"):
        init_from(create_model(name, **TINY), dataclasses.replace(cfg, init_from=str(tmp_path / "bare.pt")))
