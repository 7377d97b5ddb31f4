"""The LIF micro-benchmark, smoke-tested on the CPU (the Triton kernels interpreted)."""
import json

import pytest

from . import load_script


@pytest.fixture(scope="module")
def lif_kernels():
    with load_script("lif_kernels") as module:
        yield module


def test_torch_and_triton_on_cpu(lif_kernels, tmp_path, capsys, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "lif.json"
    assert lif_kernels.main(["--shape", "3x500", "--dtype", "fp32", "--variants", "torch,triton", "--steps", "1",
                             "--warmup", "1", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["variant"], r["T"], r["N"]) for r in rows] == [("torch", 3, 500), ("triton", 3, 500)]
    assert rows[0]["train_x"] == 1.0 and all(r["forward_ms"] > 0 and r["train_gb_s"] > 0 for r in rows)
    assert "| 3 x 500 | triton |" in capsys.readouterr().out


def test_a_variant_with_other_spikes_is_reported_not_timed(lif_kernels, tmp_path, monkeypatch):
    """The check that makes the timings comparable: an implementation of another neuron fails it."""
    real = lif_kernels.neuron
    monkeypatch.setattr(lif_kernels, "neuron", lambda v: (lambda x: real("torch")(x * 1.01)) if v == "torch" else
                        real(v))
    monkeypatch.setattr(lif_kernels, "multistep_lif", real("torch"))
    out = tmp_path / "lif.json"
    assert lif_kernels.main(["--shape", "2x300", "--variants", "torch", "--steps", "1", "--warmup", "0",
                             "--device", "cpu", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["results"] == [] and "spikes differ from the eager loop" in report["errors"][0]["error"]


@pytest.mark.parametrize("argv,message", [(["--shape", "4"], "shape must be TxN"),
                                          (["--shape", "0x10"], "T >= 1"),
                                          (["--variants", "cupy"], "unknown variant")])
def test_bad_arguments(lif_kernels, capsys, argv, message):
    with pytest.raises(SystemExit):
        lif_kernels.main(argv + ["--device", "cpu"])
    assert message in capsys.readouterr().err

