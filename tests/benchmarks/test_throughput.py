"""The throughput benchmark, smoke-tested on the CPU (eager variants; the GPU numbers come from the device)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_reference_and_eager_on_cpu(throughput, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert throughput.main(["spikingformer_4_256:2", "--variants", "reference,eager", "--steps", "1",
                            "--warmup", "1", "--device", "cpu", "--set", "depth=1", "dim=32", "num_heads=4",
                            "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    variants = [r["variant"] for r in rows]
    assert variants[-1] == "eager" and set(variants) <= {"reference", "eager"}
    assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in rows)
    assert rows[0]["train_x"] == 1.0
    assert "| spikingformer_4_256, 2 | eager |" in capsys.readouterr().out


def test_spikingjelly_swap_keeps_the_neuron_constants(throughput):
    pytest.importorskip("spikingjelly")
    import spikingformer

    model = throughput.swap_in_spikingjelly(spikingformer.create_model("spikingformer_4_256", depth=1))
    sj = [m for m in model.modules() if type(m).__name__ == "LIFNode"]
    assert len(sj) == 11 and {m.v_threshold for m in sj} == {1.0, 0.5} and all(m.tau == 2.0 for m in sj)


def test_unknown_variant_is_an_error(throughput):
    with pytest.raises(SystemExit):
        throughput.main(["spikingformer_4_256:2", "--variants", "turbo"])
