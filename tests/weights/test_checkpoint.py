"""Checkpoints: atomic writes, no arbitrary unpickling, clear errors for truncated or foreign files."""
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from spikingformer.weights.checkpoint import (
    METADATA_FORMAT,
    CheckpointError,
    atomic_copy,
    is_run_checkpoint,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

MARKER = "unpickled-marker"


class Evil:
    """Unpickling this would create a file: proof that loading never runs arbitrary code."""

    def __reduce__(self):
        return (open, (os.path.join(os.environ["EVIL_DIR"], MARKER), "w"))


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    state = {"model": {"w": torch.randn(3, 3)}, "progress": {"epoch": 2, "step": 5, "history": [{"acc": 0.5}]},
             "config": {"scale": [0.08, 1.0], "aa": None, "model_args": {"downsample": (False, True)}}}
    save_checkpoint(state, tmp_path / "a" / "last.pt")
    back = load_checkpoint(tmp_path / "a" / "last.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["progress"] == state["progress"] and back["config"] == state["config"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["last.pt"]  # no temp file left behind


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"v": torch.tensor(1)}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint({"v": torch.tensor(2), "bad": lambda: 0}, path)  # fails mid-serialization
    assert load_checkpoint(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_copy(tmp_path):
    save_checkpoint({"v": torch.tensor(3)}, tmp_path / "last.pt")
    atomic_copy(tmp_path / "last.pt", tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt")["v"].item() == 3


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or not a PyTorch file\): .*central directory$"):
        load_checkpoint(path)
    torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=False)  # the legacy pickle format
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch file") as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)


# Text the weights-only unpickler reads as opcodes: torch then advises retrying with weights_only=False,
# which would run whatever a hostile file holds.  Such a file is not a PyTorch file at all, and is called so.
@pytest.mark.parametrize("content", [b"model weights v1\n", b"<html><body>404</body></html>", b"# notes",
                                     b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", b""])
def test_non_pytorch_files_are_named_and_no_unsafe_retry_is_advised(tmp_path, content):
    (tmp_path / "garbage.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"garbage.pt is not a readable checkpoint: not a PyTorch file at "
                                              r"all \(not a zip archive / legacy pickle; it (begins|is empty)") as e:
        load_checkpoint(tmp_path / "garbage.pt")
    assert "weights_only" not in str(e.value)


def test_safetensors_file_is_named_as_such(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m.safetensors is a .safetensors weights file, not a spikingformer "
                                              r"checkpoint .*; add --config$"):
        load_checkpoint(tmp_path / "m.safetensors", hint="; add --config")
    (tmp_path / "m.safetensors").rename(tmp_path / "m.pt")  # known by its bytes, whatever its name
    with pytest.raises(CheckpointError, match=r"m.pt is a .safetensors weights file"):
        load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(load_weights(tmp_path / "m.pt")[0]["w"], torch.zeros(2))


@pytest.mark.parametrize("cut", [0.01, 0.05, 0.5])
def test_a_checkpoint_cut_anywhere_is_called_truncated(tmp_path, cut):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(100_000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=r"last.pt is not a readable checkpoint \(truncated or not a PyTorch file"):
        load_checkpoint(path)


def test_a_flipped_byte_in_the_weights_is_caught_by_the_stored_checksums(tmp_path):
    """torch.load itself would return the damaged weights."""
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.zeros(100_000)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["w"].abs().max() > 0
    with pytest.raises(CheckpointError, match=r"last.pt is damaged: the bytes of .*/data/0 do not match the checksum"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_weights(path)


def test_foreign_files_are_reported(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match=r"not a spikingformer checkpoint .*found \['weight'\]"):
        load_checkpoint(tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_arbitrary_objects_are_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setenv("EVIL_DIR", str(tmp_path))
    torch.save({"format": "spikingformer.checkpoint", "version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"arbitrary Python objects, which are never unpickled \(.*io.open") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / MARKER).exists()
    assert "weights_only" not in str(e.value)


def test_rng_states_survive_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.randn(1)  # leave a cached gaussian in numpy's state
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.normal(), torch.randn(4))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.normal(), torch.randn(4))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_partial_writes_of_a_crash_are_cleaned_up(tmp_path):
    from spikingformer.weights.checkpoint import remove_partial_writes

    save_checkpoint({"v": torch.tensor(1)}, tmp_path / "last.pt")
    (tmp_path / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    remove_partial_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def test_a_write_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Atomic means durable too: the file's bytes reach the disk before it replaces the old checkpoint, and the
    rename itself is made durable by syncing the folder."""
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint({"v": torch.tensor(1)}, tmp_path / "last.pt")
    atomic_copy(tmp_path / "last.pt", tmp_path / "best.pt")
    assert events == [("fsync", "file"), ("replace", "last.pt"), ("fsync", "dir"),
                      ("fsync", "file"), ("replace", "best.pt"), ("fsync", "dir")]


def test_a_checkpoint_of_another_version_is_refused(tmp_path):
    torch.save({"format": "spikingformer.checkpoint", "version": 2, "model": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="has checkpoint version 2; this spikingformer reads version 1"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_load_weights_strips_the_ddp_and_compile_prefixes(tmp_path, prefix):
    """A state_dict saved from DDP (``module.``), torch.compile (``_orig_mod.``) or both loads into the bare model."""
    from spikingformer.weights.checkpoint import load_weights

    weights = {"blocks.0.w": torch.randn(2, 2), "head.bias": torch.randn(2)}
    torch.save({"state_dict": {prefix + k: v for k, v in weights.items()}}, tmp_path / "w.pth")
    state, build = load_weights(tmp_path / "w.pth")
    assert state.keys() == weights.keys() and build == {}
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    torch.save({"model": {"module.a": torch.zeros(1), "b": torch.zeros(1)}}, tmp_path / "mixed.pth")
    assert sorted(load_weights(tmp_path / "mixed.pth")[0]) == ["b", "module.a"]  # only a prefix every key has


def test_cuda_rng_states_are_saved_and_restored(monkeypatch):
    """Every GPU's generator is part of the state (faked here: the check must run on a CPU-only machine)."""
    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    saved = rng_state()
    assert saved["cuda"] == states
    set_rng_state(saved)
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, states))


def test_a_run_folder_given_as_the_checkpoint_names_its_checkpoints(tmp_path):
    """`--checkpoint runs/NAME/` is the natural slip for `runs/NAME/best.pt`: the folder is called one."""
    save_checkpoint({"v": torch.tensor(1)}, tmp_path / "run" / "best.pt")
    save_checkpoint({"v": torch.tensor(1)}, tmp_path / "run" / "last.pt")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    for load in (load_checkpoint, load_weights):
        with pytest.raises(CheckpointError, match=r"run is a folder, not a checkpoint file: name one of its files "
                                                  r"\(best.pt, last.pt\)$"):
            load(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty is a folder, .*\(it holds no .pt/.safetensors file\)$"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*missing.safetensors$"):
        load_weights(tmp_path / "missing.safetensors")


def test_a_checkpoint_written_before_the_package_moved_still_loads(tmp_path):
    """The format tag is written into every file: runs saved by earlier versions ("spikingformer.checkpoint", and
    exports' "spikingformer.weights") must keep loading and resuming whatever the modules are called now."""
    old = tmp_path / "old.pt"
    torch.save({"format": "spikingformer.checkpoint", "version": 1, "model": {"w": torch.ones(2)},
                "meta": {"model": "spikingformer_4_256"}, "config": {}}, old)
    assert load_checkpoint(old)["model"]["w"].tolist() == [1.0, 1.0]
    assert is_run_checkpoint(old)
    assert METADATA_FORMAT == "spikingformer.weights"
