"""The linear-probe script on tiny class-folder images: both probes, the encoder loaded, errors named."""
import json

import pytest
import torch
import yaml

from ..data.helpers import write_class_tree
from . import load_script

TINY = dict(depth=1, dim=32, num_heads=2, T=1)


@pytest.fixture(scope="module")
def linear_probe():
    with load_script("linear_probe") as module:
        yield module


def test_probes_score_separable_features_perfectly(linear_probe):
    y = torch.arange(40) % 4
    f = torch.nn.functional.one_hot(y, 4).float() + 0.01 * torch.randn(40, 4)
    assert linear_probe.knn_accuracy(f[:30], y[:30], f[30:], y[30:], k=5, num_classes=4) == 1.0
    assert linear_probe.linear_accuracy(f[:30], y[:30], f[30:], y[30:]) == 1.0


def test_random_baseline_and_pretrained_encoder(linear_probe, tmp_path, monkeypatch, capsys):
    from spikingformer.train.pretrain import PretrainConfig, run

    torch.set_num_threads(1)
    tree = write_class_tree(tmp_path / "data" / "train", per_class=8, size=32).parent
    common = dict(model="spikformer_v2_8_384", model_args=TINY, dataset="folder", data_dir=str(tree), holdout=8,
                  img_size=32, val_batch_size=8, workers=0)
    run(PretrainConfig(**common, scale=(0.5, 1.0), decoder_dim=32, decoder_depth=1, decoder_heads=2, batch_size=4,
                       epochs=1, warmup_epochs=0, output=str(tmp_path / "mae"), progress=False))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(common))
    loaded = []
    real_load = linear_probe.load_pretrained_encoder
    monkeypatch.setattr(linear_probe, "load_pretrained_encoder", lambda m, p: loaded.append(p) or real_load(m, p))
    out = tmp_path / "new" / "probe.json"  # a folder that does not exist yet
    assert linear_probe.main(["--config", str(recipe), "--encoder", str(tmp_path / "mae" / "last.pt"),
                              "--calibrate", "8", "--batch-size", "8", "--k", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["encoder"] for r in rows] == ["random init", str(tmp_path / "mae" / "last.pt")]
    assert loaded == [str(tmp_path / "mae" / "last.pt")]
    assert all(0 <= r[k] <= 1 for r in rows for k in ("knn_acc", "linear_acc")) and rows[0]["chance"] == pytest.approx(1 / 3)
    assert rows[0]["train_images"] == 16 and "held-out 8 of 24" in rows[0]["val_split"]
    assert "linear" in capsys.readouterr().out
    assert linear_probe.main(["--config", str(recipe), "--encoder", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
