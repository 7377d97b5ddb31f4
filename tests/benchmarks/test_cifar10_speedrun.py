"""The GPU speedrun script, smoke-tested on the CPU: GPU-side augmentation, time/epoch budget, its records."""
import json

import pytest
import torch
import torch.nn.functional as F

from ..data.helpers import write_class_tree
from . import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def speedrun():
    with load_script("cifar10_speedrun") as module:
        yield module


def test_augment_is_a_padded_crop_and_maybe_a_flip(speedrun):
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = speedrun.augment(x, pad=2, hflip=True, gen=torch.Generator().manual_seed(0))
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for img, src in zip(out, padded):
        windows = [w for dy in range(5) for dx in range(5) for w in (src[:, dy:dy + 8, dx:dx + 8],)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(2)) for w in windows)
    assert torch.equal(speedrun.augment(x, 0, False, torch.Generator()), x.float())


def test_speedrun_runs_and_records_accuracy_against_minutes(speedrun, tmp_path, capsys):
    data = write_class_tree(tmp_path / "data" / "train", per_class=8).parent
    out = tmp_path / "out"
    code = speedrun.main(["--data", str(data), "--out", str(out), "--max-epochs", "2", "--time-budget-min", "5",
                          "--set", "holdout=6", "--set", "batch_size=6", "--set", "eval_batch_size=4",
                          "--set", "model_args={depth: 1, dim: 32, num_heads: 2, T: 1}"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1.0, 2.0] and all(0 <= r["val_acc"] <= 1 for r in records)
    assert records[0]["minutes"] <= records[1]["minutes"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "max_epochs" and summary["steps"] == 6 and summary["train_images"] == 18
    assert summary["val_split"] == "val (held-out 6 of 24 train images, class-balanced, seed 0)"
    assert (out / "val_acc.png").exists() and "final top-1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        speedrun.main(["--data", str(data), "--set", "lrr=1"])
    assert "unknown config key(s) ['lrr']" in capsys.readouterr().err
