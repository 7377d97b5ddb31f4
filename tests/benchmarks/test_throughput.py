"""The throughput benchmark, smoke-tested on the CPU (eager variants, the Triton kernels interpreted;
the GPU numbers come from the device)."""
import json

import pytest
import torch

from . import load_script


@pytest.fixture(scope="module")
def throughput():
    with load_script("throughput") as module:
        yield module


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


def test_variant_names(throughput):
    cpu = torch.device("cpu")
    graphs = throughput.Variant("fast:reduce-overhead+triton", cpu)
    assert graphs.triton and graphs.path.compile_mode == "reduce-overhead" and graphs.path.cudagraphs
    assert graphs.path.lif_backend == "triton"
    eager = throughput.Variant("eager+triton", cpu)
    assert not eager.path.compile and eager.path.lif_backend == "triton"
    assert throughput.Variant("fast", cpu).path.lif_backend == "auto"  # as `spikingformer train` runs it
    assert throughput.Variant("fast+torch+nchw", cpu).path.lif_backend == "torch"
    assert throughput.Variant("fast+fold", cpu).fold and not throughput.Variant("fast", cpu).fold
    assert throughput.Variant("fast+ckpt", cpu).checkpointing and not throughput.Variant("fast", cpu).checkpointing
    assert throughput.Variant("eager+ckpt", cpu).build("spikingformer_4_256", depth=1).grad_checkpointing
    for bad in ("eager:max-autotune", "reference+triton", "fast+cupy", "faster", "fast+triton+torch", "eager+nchw",
                "reference+fold", "reference+ckpt"):
        with pytest.raises(ValueError, match="unknown variant"):
            throughput.Variant(bad, cpu)


def test_every_step_marks_its_beginning(throughput, monkeypatch):
    calls = []
    monkeypatch.setattr(throughput.FastPath, "step_begin", lambda path: calls.append(path))
    assert throughput.main(["spikingformer_4_256:2", "--variants", "eager", "--steps", "2", "--warmup", "1",
                            "--device", "cpu", "--input-size", "16", "--set", "depth=1", "dim=32",
                            "num_heads=4"]) == 0
    assert len(calls) == 2 * (1 + 2)  # train and inference, warm-up and timed


def test_triton_variants_on_cpu(throughput, tmp_path, monkeypatch, capsys):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit):  # no CUDA and no interpreter: refused before any run
        throughput.main(["spikingformer_4_256:2", "--variants", "eager+triton", "--device", "cpu"])
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "t.json"
    # fast+triton cannot compile the interpreter: reported, and the other variants still run
    assert throughput.main(["spikingformer_4_256:2", "--variants", "eager,fast+triton,eager+triton",
                            "--steps", "1", "--warmup", "1", "--device", "cpu", "--input-size", "16",
                            "--set", "depth=1", "dim=32", "num_heads=4", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == ["eager", "eager+triton"]
    assert report["results"][1]["train_img_s"] > 0 and report["results"][1]["train_x"] is not None
    assert [e["variant"] for e in report["errors"]] == ["fast+triton"]
    assert "cannot trace the Triton interpreter" in report["errors"][0]["error"]


@pytest.mark.parametrize("name,kind", [
    ("triton_red_fused__native_batch_norm_legit_functional_native_batch_norm_backward_view_19", "inductor reduction"),
    ("triton_per_fused_add_1", "inductor reduction"),
    ("triton_poi_fused_max_pool2d_with_indices_47", "inductor pointwise"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv/matmul (cuDNN, cuBLAS)"),
    ("_lif_backward_kernel", "lif (Triton kernels)"),
    ("void at::native::elementwise_kernel<128, 4, gpu_kernel_impl_nocast<direct_copy_kernel_cuda>>", "copy (ATen)"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::FillFunctor<float>>", "other"),
])
def test_kernel_kinds(throughput, name, kind):
    assert throughput.kernel_kind(name) == kind


def test_profile_reports_where_the_time_goes(throughput, tmp_path):
    out = tmp_path / "t.json"
    assert throughput.main(["spikingformer_4_256:2", "--variants", "eager", "--steps", "1", "--warmup", "1",
                            "--device", "cpu", "--set", "depth=1", "dim=32", "num_heads=4", "--profile", "1",
                            "--json", str(out)]) == 0
    prof = json.loads(out.read_text())["results"][0]["profile"]
    assert prof["ms_per_step"] > 0 and len(prof["top"]) > 3
    assert sum(v["share"] for v in prof["kinds"].values()) == pytest.approx(1.0)
    assert "conv/matmul (cuDNN, cuBLAS)" in prof["kinds"]  # aten::convolution on the CPU
    infer = json.loads(out.read_text())["results"][0]["profile_infer"]
    assert infer["ms_per_step"] > 0 and "conv/matmul (cuDNN, cuBLAS)" in infer["kinds"]
    assert any("backward" in k["kernel"] for k in prof["top"])
    assert not any("backward" in k["kernel"] for k in infer["top"])


def test_fold_variant_infers_without_batchnorm(throughput, tmp_path):
    out = tmp_path / "t.json"
    assert throughput.main(["spikingformer_4_256:2", "--variants", "eager,eager+fold", "--steps", "1",
                            "--warmup", "1", "--device", "cpu", "--input-size", "16", "--set", "depth=1",
                            "dim=32", "num_heads=4", "--profile", "1", "--json", str(out)]) == 0
    plain, folded = json.loads(out.read_text())["results"]
    assert folded["variant"] == "eager+fold"
    assert "batchnorm (ATen)" in plain["profile_infer"]["kinds"] and "batchnorm (ATen)" in folded["profile"]["kinds"]
    assert "batchnorm (ATen)" not in folded["profile_infer"]["kinds"]
