"""Several processes: two gloo processes under torchrun train exactly as one process with the same global batch."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import spikingformer as sf
from spikingformer.train.classify import run
from spikingformer.train.distributed import AllReduceBatchNorm, convert_sync_batchnorm
from spikingformer.weights.checkpoint import load_checkpoint

from ..data.helpers import write_class_tree
from ..helpers import torchruns
from .test_train import _yaml, subprocess_env, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchrun_argv(config: str, *sets: str) -> list[str]:
    return ["--standalone", "--nproc_per_node", "2",
            "-m", "spikingformer.cli", "train", "--config", config, *(a for s in sets for a in ("--set", s))]


def _torchrun(*argvs: list[str]):
    """The torchruns of ``argvs`` run together, and beside the in-process run of the ``with`` body;
    each must exit 0."""
    return torchruns(*argvs, env=subprocess_env(), timeout=300)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """Global batch 8: one process with 8, or two gloo processes with 4 each and synchronized BatchNorm.

    The data order gives step i of both processes exactly the images of step i of the single process;
    augmentation is seeded per image, so it is identical too; DDP averages the two gradients, which is
    the gradient of the mean loss over all 8 images *only if* BN normalizes over all 8 (x T), hence
    sync_bn.  Mixup pairs images within a process's batch, so it is off here.  SGD, not AdamW: Adam
    divides by the gradient's magnitude, which turns the float noise in the (mathematically zero)
    gradient of conv biases feeding a BN into lr-sized steps, in any two runs that sum in another order.
    Without sync_bn the runs must differ: the test can tell.
    """
    data = write_class_tree(tmp_path / "data" / "train", per_class=16).parent
    common = dict(mixup=0.0, cutmix=0.0, opt="sgd", lr=0.1, sync_bn=True, holdout=6, warmup_epochs=0,
                  cooldown_epochs=0, ckpt_every=0)
    single = tiny_config(data, tmp_path / "one", batch_size=8, **common)
    config = _yaml(tmp_path, tiny_config(data, tmp_path / "two", batch_size=4, **common))
    with _torchrun(_torchrun_argv(config),
                   _torchrun_argv(config, f"output={tmp_path / 'two_local_bn'}", "sync_bn=false")):
        run(single)

    one, two, local = (load_checkpoint(tmp_path / d / "last.pt") for d in ("one", "two", "two_local_bn"))
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(one["progress"]["history"], two["progress"]["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5) and a["val_acc"] == b["val_acc"]
    # per-process BN statistics change the weights ~100x beyond the tolerance above: the test can tell
    assert max((local["model"][k] - v).abs().max().item() for k, v in one["model"].items()) > 1e-3


def test_two_accumulating_processes_match_one(tmp_path):
    """accum_steps=2 under DDP: two processes with batch 4 (synchronized BN) update like one process with
    batch 8, both adding up two batches per update; DDP all-reduces only on the second (``no_sync``)."""
    data = write_class_tree(tmp_path / "data" / "train", per_class=16).parent
    common = dict(mixup=0.0, cutmix=0.0, opt="sgd", lr=0.1, sync_bn=True, holdout=6, warmup_epochs=0,
                  cooldown_epochs=0, ckpt_every=0, accum_steps=2, epochs=1)
    with _torchrun(_torchrun_argv(_yaml(tmp_path, tiny_config(data, tmp_path / "two", batch_size=4, **common)))):
        run(tiny_config(data, tmp_path / "one", batch_size=8, **common))
    one, two = (load_checkpoint(tmp_path / d / "last.pt") for d in ("one", "two"))
    assert one["optimizer"]["state"] and two["world_size"] == 2
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert one["progress"]["history"][0]["train_loss"] == pytest.approx(two["progress"]["history"][0]["train_loss"],
                                                                        rel=1e-5)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384"])
def test_sync_batchnorm_conversion_covers_every_bn_and_keeps_the_function(name):
    """torch's SyncBatchNorm (CUDA) and AllReduceBatchNorm (any backend) replace every BatchNorm2d (ConvBN over
    [T*B, C, H, W]) and BatchNorm1d (LinearBN over [T*B, C, N]), keep the state_dict, and outside a process
    group compute what the original does."""
    model = sf.create_model(name, depth=1, T=2)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    for convert in (lambda m: torch.nn.SyncBatchNorm.convert_sync_batchnorm(m),
                    lambda m: convert_sync_batchnorm(m, torch.device("cpu"))):
        converted = convert(sf.create_model(name, depth=1, T=2))
        converted.load_state_dict(model.state_dict())
        bns = [m for m in converted.modules() if isinstance(m, _BatchNorm)]
        assert bns and all(isinstance(m, (torch.nn.SyncBatchNorm, AllReduceBatchNorm)) for m in bns)
        assert converted.state_dict().keys() == model.state_dict().keys()
        torch.testing.assert_close(converted(x), ref)
