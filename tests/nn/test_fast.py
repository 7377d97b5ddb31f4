"""The fast path computes what the eager path computes (CPU inductor stands in for the GPU)."""
import dataclasses
import importlib.util

import pytest
import torch

import spikingformer as sf
from spikingformer.nn.fast import FastPath, resolve_lif_backend
from spikingformer.nn.neuron import MultiStepLIF, multistep_lif

from ..helpers import record_spikes


@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (1.5, 1.0), (2.0, 0.5)])
def test_compiled_neuron_is_bitwise_equal(tau, v_th):
    fn = torch.compile(multistep_lif)
    x = (torch.randn(4, 8, 300) * 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    s, s2 = fn(x, tau, v_th), multistep_lif(x2, tau, v_th)
    g = torch.randn_like(s)
    (s * g).sum().backward()
    (s2 * g).sum().backward()
    assert torch.equal(s, s2)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_fast_path_spikes_equal_eager_in_fp32(device, monkeypatch):
    """On CUDA the fast path runs the Triton LIF kernels inside the compiled model (lif_backend auto)."""
    if device == "cuda":  # full fp32 convs and matmuls on both paths
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = sf.create_model("spikingformer_4_256", depth=1, dim=32, num_heads=4, T=2, num_classes=5).to(device)
    spikes = record_spikes(model)
    x = torch.randn(4, 3, 16, 16, device=device)
    y = torch.arange(4, device=device) % 5
    eager_out = model(x)
    torch.nn.functional.cross_entropy(eager_out, y).backward()
    eager_spikes, spikes[:] = spikes[:], []
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    fast = FastPath(amp_dtype=None).prepare(model)  # fp32, channels-last, compiled
    assert fast is not model
    backends = {m.backend for m in model.modules() if isinstance(m, MultiStepLIF)}
    assert backends == {"triton" if device == "cuda" else "torch"}
    out = fast(x.contiguous(memory_format=torch.channels_last))
    torch.nn.functional.cross_entropy(out, y).backward()
    assert len(spikes) == len(eager_spikes) == 11
    for a, b in zip(spikes, eager_spikes):
        assert torch.equal(a, b)
    torch.testing.assert_close(out, eager_out, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[n], atol=1e-4, rtol=1e-3, msg=n)


def test_switches(cuda_capability):
    model = torch.nn.Linear(2, 2)
    assert FastPath.off().prepare(model) is model
    assert FastPath.from_modes("auto", "auto", "cpu") == dataclasses.replace(FastPath.off(), lif_backend="auto")
    cuda = FastPath.from_modes("auto", "auto", "cuda")
    assert cuda.compile and cuda.amp_dtype == torch.bfloat16
    opt = FastPath().adamw(model.parameters(), lr=1e-3)
    assert opt.defaults["fused"]


def test_modes_resolve_per_device(cuda_capability):
    assert FastPath.from_modes("auto", "auto", "cpu", lif_backend="torch") == dataclasses.replace(
        FastPath.off(), lif_backend="torch")
    on_cpu = FastPath.from_modes("on", "bf16", "cpu")
    assert on_cpu.compile and on_cpu.channels_last and on_cpu.amp_dtype == torch.bfloat16
    cuda = FastPath.from_modes("auto", "auto", "cuda")
    assert cuda.compile and cuda.fused_optimizer and cuda.amp_dtype == torch.bfloat16
    assert FastPath.from_modes("off", "auto", "cuda") == FastPath.off().__class__(
        compile=False, amp_dtype=torch.bfloat16, channels_last=False, fused_optimizer=False)
    with pytest.raises(ValueError, match="fast must be one of auto, on, off"):
        FastPath.from_modes("fastest", "auto", "cpu")


@pytest.mark.parametrize("capability,dtype", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                              ((7, 5), torch.float16), ((7, 0), torch.float16)])
def test_auto_precision_is_bf16_only_where_the_gpu_computes_in_it(cuda_capability, capability, dtype):
    """Turing and Volta (T4, V100) emulate bf16: ``amp: auto`` picks fp16 there, which the engines
    pair with a GradScaler; explicit modes are taken as given, and the CPU stays in fp32."""
    cuda_capability(*capability)
    assert FastPath.from_modes("auto", "auto", "cuda").amp_dtype == dtype
    assert FastPath.from_modes("auto", "auto", "cuda").compile
    assert FastPath.from_modes("auto", "bf16", "cuda").amp_dtype == torch.bfloat16
    assert FastPath.from_modes("auto", "auto", "cpu").amp_dtype is None


def test_auto_leaves_gpus_that_triton_cannot_target_on_the_eager_path(cuda_capability):
    cuda_capability(6, 0)  # P100: inductor's Triton code needs 7.0
    assert FastPath.from_modes("auto", "auto", "cuda") == dataclasses.replace(
        FastPath.off(), amp_dtype=torch.float16, lif_backend="auto")
    assert FastPath.from_modes("on", "auto", "cuda").compile  # asked for: inductor names the limit itself


def test_describe_names_compilation_and_precision(cuda_capability):
    assert FastPath.off().describe() == "eager, fp32"
    assert FastPath.from_modes("auto", "auto", "cuda").describe() == "compiled, bf16 autocast"
    cuda_capability(7, 5)
    assert FastPath.from_modes("auto", "auto", "cuda", "reduce-overhead").describe() == \
        "compiled (reduce-overhead), fp16 autocast"


def test_auto_without_triton_stays_on_the_eager_path(cuda_capability, monkeypatch):
    """PyTorch's Windows wheels come without Triton, which inductor needs to compile for a GPU."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    path = FastPath.from_modes("auto", "auto", "cuda")
    assert not path.compile and path.amp_dtype == torch.bfloat16


def test_channels_last_input_layout():
    x = torch.randn(2, 3, 8, 8)
    assert FastPath().to_input(x).is_contiguous(memory_format=torch.channels_last)
    assert FastPath.off().to_input(x) is x


@pytest.mark.parametrize("mode,marks", [(None, 0), ("default", 0), ("max-autotune-no-cudagraphs", 0),
                                        ("reduce-overhead", 1), ("max-autotune", 1)])
def test_step_begin_marks_cuda_graph_steps_only(monkeypatch, mode, marks):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(mode))
    FastPath(compile_mode=mode).step_begin()
    assert len(calls) == marks
    FastPath(compile=False, compile_mode=mode).step_begin()  # not compiled: no graphs to replay
    assert len(calls) == marks


def test_prepare_sets_the_lif_backend_of_every_neuron():
    model = sf.create_model("spikingformer_4_256", depth=1, dim=32, num_heads=4)
    neurons = [m for m in model.modules() if isinstance(m, MultiStepLIF)]
    assert {m.backend for m in neurons} == {"torch"} and FastPath.off().lif_backend is None
    neurons[0].backend = "triton"  # None leaves every neuron as built ...
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):  # ... and checks the device for the one that asks
        FastPath.off().prepare(model)
    for m in neurons:
        m.backend = "triton"
    assert dataclasses.replace(FastPath.off(), lif_backend="torch").prepare(model) is model
    assert len(neurons) == 11 and {m.backend for m in neurons} == {"torch"}
    for m in neurons:
        m.backend = "triton"
    FastPath(amp_dtype=None).prepare(model)  # compiled on the CPU: "auto" is the PyTorch loop
    assert {m.backend for m in neurons} == {"torch"}
    with pytest.raises(ValueError, match="lif_backend must be one of auto, torch, triton"):
        FastPath(lif_backend="cuda")


def test_auto_lif_backend_is_triton_exactly_when_compiled_on_cuda(monkeypatch, cuda_capability):
    assert FastPath().lif_backend == FastPath.from_modes("auto", "auto", "cuda").lif_backend == "auto"
    assert resolve_lif_backend("auto", compiled=True, device="cuda") == "triton"
    assert resolve_lif_backend("auto", compiled=True, device="cuda:1") == "triton"
    assert resolve_lif_backend("auto", compiled=False, device="cuda") == "torch"
    assert resolve_lif_backend("auto", compiled=True, device="cpu") == "torch"
    for explicit in ("torch", "triton"):
        assert resolve_lif_backend(explicit, compiled=False, device="cpu") == explicit
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # a CUDA install without Triton
    assert resolve_lif_backend("auto", compiled=True, device="cuda") == "torch"
