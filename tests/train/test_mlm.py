"""The text engine's device keys and torchrun: two gloo processes pre-train as one with the same global batch."""
from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch

from spikingformer.train import glue, mlm
from spikingformer.train.config import ConfigError, load_config
from spikingformer.train.distributed import DistInfo
from spikingformer.weights.checkpoint import load_checkpoint

from ..helpers import torchruns
from .test_glue import cli, files, mlm_args  # noqa: F401  (files: the fixture of tiny vocabulary and corpus)
from .test_train import subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")

# attn_scale 1: at the default 0.125 this tiny model's attention emits no spike, and a layer fed only zeros has
# gradients that are float noise, which AdamW turns into lr-sized steps (see the exclusions below).
FIRING_MODEL = "{depth: 1, dim: 32, num_heads: 2, T: 2, max_len: 32, attn_scale: 1.0}"


def test_two_processes_match_one_with_the_same_global_batch(files):
    """Global batch 8: one process, or two gloo processes with 4 blocks each and synchronized BatchNorm.

    Both draw the same blocks and masks per step (a function of (seed, step)); each process's summed
    loss is scaled by world / (masked tokens of the whole batch), so DDP's average is the one-process
    gradient.  Excluded: the Linear biases that feed a BatchNorm (and the running means they shift).
    In training mode BN subtracts them again, so their gradient is zero up to rounding, and AdamW
    divides by its magnitude: two runs that sum in another order move them by ~lr (test_distributed
    avoids the same with SGD).  Without sync_bn the runs must differ: the test can tell.
    """
    d = files
    common = ("--set", f"model_args={FIRING_MODEL}", "--set", "sync_bn=true")

    def torchrun(out: str, *sets: str) -> list[str]:
        return ["--standalone", "--nproc_per_node", "2",
                "-m", "spikingformer.cli", *mlm_args(d, *common, "--set", f"output={d}/{out}", *sets)]

    # both torchruns at once, each must exit 0; the one-process runs (the second is checked at the end) meanwhile
    with torchruns(torchrun("two", "--json", f"{d}/two.json"), torchrun("local", "--set", "sync_bn=false"),
                   env=subprocess_env(), timeout=300):
        assert cli(mlm_args(d, *common, "--set", f"output={d}/one")) == 0
        assert cli(mlm_args(d, "--set", f"model_args={FIRING_MODEL}", "--set", "accum_steps=2",
                            "--set", f"output={d}/parts")) == 0
    one, two, local = (load_checkpoint(d / out / "last.pt") for out in ("one", "two", "local"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert json.loads((d / "two.json").read_text())["world_size"] == 2  # rank 0 alone wrote it
    inert = re.compile(r"\.(linear\.bias|bn\.running_mean)$")
    compared = [k for k in one["model"] if not inert.search(k)]
    assert "blocks.0.attn.proj.linear.weight" in compared and len(compared) > 30
    for k in compared:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4) and b["step"] == a["step"]
    # per-process BN statistics move the weights ~100x beyond the tolerance above
    assert max((local["model"][k] - one["model"][k]).abs().max().item() for k in compared) > 1e-3
    # one process running the global batch in two parts of 4 (accum_steps) trains as the two processes with
    # their own BatchNorm do: BN normalises over each part, the gradients add up (running statistics aside:
    # they see both parts here, one part per process there)
    parts = load_checkpoint(d / "parts" / "last.pt")
    weights = [k for k in compared if not re.search(r"running_|num_batches", k)]
    for k in weights:
        torch.testing.assert_close(parts["model"][k], local["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(parts["history"], local["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


def test_parts_of_a_step_all_reduce_once(files, monkeypatch, ddp_of_one):
    """With accum_steps the backward of every part but the last skips DDP's all-reduce (a real DDP, counted)."""
    from spikingformer.train import run as run_module

    counts = []
    for parts in (1, 2):
        wrapped = []
        monkeypatch.setattr(run_module, "wrap_ddp", lambda module, info: wrapped.append(ddp_of_one(module)) or
                            wrapped[-1][0])
        assert cli(mlm_args(files, "--set", f"accum_steps={parts}", "--set", "steps=2",
                            "--set", f"output={files}/sync{parts}")) == 0
        counts.append(len(wrapped[0][1]))
    assert counts[0] == counts[1] > 0


def test_global_batch_must_divide_by_the_processes(files, monkeypatch, capsys):
    three = DistInfo(rank=0, world=3, device=torch.device("cpu"))
    monkeypatch.setattr(mlm, "session", lambda device: contextlib.nullcontext(three))
    assert cli(mlm_args(files)) == 2
    assert "error: batch_size 8 (the global batch) does not divide into 3 process(es) x accum_steps 1 parts" \
        in capsys.readouterr().err
    assert not (files / "mlm" / "last.pt").exists()
    monkeypatch.setattr(mlm, "session", lambda device: contextlib.nullcontext(
        DistInfo(rank=0, world=1, device=torch.device("cpu"))))
    assert cli(mlm_args(files, "--set", "accum_steps=3")) == 2
    assert "does not divide into 1 process(es) x accum_steps 3 parts" in capsys.readouterr().err


def test_bf16_autocast_on_the_cpu(files):
    # --json into a folder that does not exist yet: made, not a crash after the training
    assert cli(mlm_args(files, "--set", "amp=bf16", "--set", "steps=2", "--json", f"{files}/new/bf16.json")) == 0
    out = json.loads((files / "new" / "bf16.json").read_text())
    assert out["device"] == "cpu" and out["world_size"] == 1 and 0 < out["masked_lm_loss"] < 10
    state = load_checkpoint(files / "mlm" / "last.pt")
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())  # autocast leaves weights in fp32
    assert state["config"]["amp"] == "bf16" and "scaler" in state


@pytest.mark.parametrize("key, value, message", [
    ("amp", "fp8", "amp must be one of auto, bf16, fp16, off, got 'fp8'"),
    ("fast", "fastest", "fast must be one of auto, on, off, got 'fastest'"),
    ("device", "gpu0", "device must be auto or a torch device (cpu, cuda, cuda:1, ...), got 'gpu0'"),
])
def test_engine_keys_validate(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("configs/mlm_wikitext2.yaml", [f"{key}={value}"], cls=mlm.MLMConfig)
    cfg = load_config("configs/glue.yaml", cls=glue.GlueConfig)
    assert (cfg.device, cfg.amp, cfg.fast, cfg.sync_bn) == ("auto", "auto", "auto", False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_line(files, capsys):
    assert cli(mlm_args(files, "--set", "device=cuda")) == 2
    assert "error: device 'cuda' requested but CUDA is not available" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten(files, capsys):
    """As `spikingformer train`: a second run into the same output needs --resume."""
    args = mlm_args(files, "--set", "steps=2", "--set", f"output={files}/once")
    assert cli(args) == 0
    before = (files / "once" / "last.pt").read_bytes()
    assert cli(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (files / "once" / "last.pt").read_bytes() == before


def test_help_shows_percent_signs_as_written(capsys):
    """argparse %-formats help= strings but prints a description as it is: no doubled %%."""
    with pytest.raises(SystemExit):
        cli(["mlm", "--help"])
    text = capsys.readouterr().out
    assert "15 % of tokens" in " ".join(text.split()) and "%%" not in text


def test_grad_checkpointing_trains_to_the_same_weights(files, monkeypatch):
    import spikingformer.nn.layers as layers

    calls = []
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(
        *a, **k))
    assert cli(mlm_args(files, "--set", f"output={files}/plain")) == 0
    assert not calls
    assert cli(mlm_args(files, "--set", f"output={files}/ckpt", "--set", "grad_checkpointing=true")) == 0
    assert calls
    plain, ckpt = (load_checkpoint(files / d / "last.pt")["model"] for d in ("plain", "ckpt"))
    for k, v in plain.items():
        assert torch.equal(ckpt[k], v), k


def test_text_heads_read_out_after_each_step_as_their_forward():
    """``forward_steps`` of the sequence head pools real tokens only, as its ``forward``; the MLM head per token."""
    from spikingformer.models.text import MLMHead, SequenceHead

    torch.manual_seed(0)
    x, mask = torch.randn(3, 2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    head = SequenceHead(8, 3)
    steps = head.forward_steps(x, mask)
    assert steps.shape == (3, 2, 3)
    for t in (1, 2, 3):
        torch.testing.assert_close(steps[t - 1], head(x[:t], mask))
    mlm = MLMHead(torch.nn.Embedding(11, 8))
    steps = mlm.forward_steps(x)
    assert steps.shape == (3, 2, 5, 11)
    for t in (1, 2, 3):
        torch.testing.assert_close(steps[t - 1], mlm(x[:t]))
