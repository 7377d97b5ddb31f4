"""The memory benchmark on the CPU: checkpointing lowers a step's peak tensor memory."""
import json

import pytest

from . import load_script


@pytest.fixture(scope="module")
def memory():
    with load_script("memory") as module:
        yield module


def test_checkpointing_lowers_the_step_peak(memory, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert memory.main(["spikingformer_4_256:2", "--steps", "1", "--device", "cpu", "--set", "depth=2", "dim=32",
                        "--set", "num_heads=4", "--json", str(out)]) == 0  # --set given once or repeated: all kept
    written = json.loads(out.read_text())
    assert written["model_overrides"] == {"depth": 2, "dim": 32, "num_heads": 4}
    rows = {r["variant"]: r for r in written["results"]}
    assert rows.keys() == {"plain", "ckpt"}
    # 2 blocks and 4 tokenizer stages keep only their inputs: far below the plain step, not merely below it
    assert 0 < rows["ckpt"]["step_peak_mib"] < 0.6 * rows["plain"]["step_peak_mib"]
    assert rows["plain"]["peak_x"] == 1.0 and rows["ckpt"]["train_img_s"] > 0
    assert "| spikingformer_4_256, 2 | ckpt |" in capsys.readouterr().out


def test_cpu_step_peak_counts_what_a_step_allocates(memory):
    import torch

    w = torch.ones(2**20)              # 4 MiB from before the step: not counted

    def step():
        c = w + 1                      # 4 MiB
        a = torch.ones(2**20)          # 4 MiB more
        b = torch.ones(2**20)          # and 4 more: 12 MiB alive
        del a, b, c
        torch.ones(2**19)              # 2 MiB, after all were freed

    assert memory.cpu_step_peak(step) / 2**20 == pytest.approx(12.0, abs=0.01)


def test_a_failed_measurement_is_reported_and_the_run_fails(memory, capsys):
    assert memory.main(["no_such_model:2", "--steps", "1", "--device", "cpu"]) == 1
    assert "plain on no_such_model:2 failed" in capsys.readouterr().err


def test_bad_steps_or_batch_are_usage_errors(memory):
    for argv in (["spikingformer_4_256:0"], ["spikingformer_4_256:2", "--steps", "0"]):
        with pytest.raises(SystemExit):
            memory.main(argv)


def test_mae_pretraining_step(memory, tmp_path):
    """--mae measures a SpikformerV2MAE step (at T = 1 by default) on the named encoder."""
    out = tmp_path / "m.json"
    assert memory.main(["spikformer_v2_8_384:16", "--mae", "--steps", "1", "--device", "cpu", "--set", "depth=1",
                        "dim=64", "num_heads=2", "img_size=64", "--json", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["plain"]["model"] == "spikformer_v2_8_384 (MAE)" and rows["plain"]["T"] == 1
    assert 0 < rows["ckpt"]["step_peak_mib"] < rows["plain"]["step_peak_mib"]
    # the baseline of the sparse stem: dense convolutions over masked maps hold more than the visible tiles
    assert rows.keys() == {"dense_stem", "plain", "ckpt"} and rows["dense_stem"]["peak_x"] > 1.2


def test_kineto_chatter_is_held_back_and_the_rest_passed_on(memory, capfd):
    import os

    with memory._without_profiler_chatter():
        os.write(2, b"USDT:x SyncActivityProfilerHandler.cpp:39] profiler_start\n"
                    b"ERROR:x DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\nsomething else broke\n")
    assert capfd.readouterr().err == "something else broke\n"
