"""The Triton LIF kernels equal the eager neuron (SPEC §2), run on the CPU by Triton's interpreter.

``TRITON_INTERPRET=1`` is read when a kernel is jitted; ``kernels.lif_triton`` jits its kernels on
first launch for each value of the flag and calls no helper that ``import triton`` jitted, so
setting the flag per test is enough (no subprocess).
The CUDA tests near the end run where a GPU is present; the last test compiles the kernels for an
H100 with Triton's own compiler and ptxas, which needs no GPU.
"""
import pytest
import torch

triton = pytest.importorskip("triton", reason="the triton LIF backend needs the triton package")

import spikingformer as sf  # noqa: E402
from spikingformer.nn.fast import FastPath  # noqa: E402
from spikingformer.nn.kernels import lif_triton, multistep_lif_triton  # noqa: E402
from spikingformer.nn.neuron import MultiStepLIF, multistep_lif  # noqa: E402

from ..helpers import record_spikes  # noqa: E402

BLOCK = lif_triton.BLOCK
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def run_both(x, *args):
    """Spikes and input gradients of the Triton kernel and of the eager loop, for one upstream gradient."""
    x1 = x.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    s1, s2 = multistep_lif_triton(x1, *args), multistep_lif(x2, *args)
    g = torch.randn_like(s2)
    (s1 * g).sum().backward()
    (s2 * g).sum().backward()
    return s1, s2, x1.grad, x2.grad


@pytest.mark.parametrize("shape", [(4, 3, 1000), (1, 5000), (3, 2, 5, 7, 11), (2, BLOCK), (6, 2 * BLOCK + 1)])
@pytest.mark.parametrize("tau,v_th,v_reset,alpha", [(2.0, 1.0, 0.0, 4.0), (1.5, 1.0, 0.0, 4.0),
                                                    (2.0, 0.5, 0.0, 4.0), (1.7, 0.8, -0.1, 2.5)])
def test_spikes_and_gradients_equal_eager(shape, tau, v_th, v_reset, alpha):
    x = torch.randn(shape) * 3
    s, s_ref, grad, grad_ref = run_both(x, tau, v_th, v_reset, alpha)
    assert s.shape == x.shape and s.dtype == torch.float32
    assert torch.equal(s, s_ref)
    assert set(s.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)
    assert grad.abs().max() > 0.1  # the surrogate actually carries gradient


@pytest.mark.parametrize("T,max_chunk", [(17, 16), (32, 16), (7, 3), (6, 3), (2, 3)])
def test_long_runs_recompute_the_backward_in_chunks(monkeypatch, T, max_chunk):
    """The backward keeps at most MAX_CHUNK membranes per neuron in registers and re-runs the steps
    before each chunk; whole chunks, a partial last chunk and a single short one all give the loop's gradient."""
    monkeypatch.setattr(lif_triton, "MAX_CHUNK", max_chunk)
    assert lif_triton.backward_blocks(T)[0] == min(T, max_chunk)
    s, s_ref, grad, grad_ref = run_both(torch.randn(T, 3, 70) * 3, 1.5, 1.0)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)
    assert grad[0].abs().max() > 0.1  # gradient reaches the first step through every chunk


@pytest.mark.parametrize("dtype,eager,kernel", [(torch.float32, 5, 4), (torch.bfloat16, 3, 2)])
def test_bytes_kept_for_the_backward_per_neuron_step(dtype, eager, kernel):
    """The eager loop keeps ``H - V_th`` and a bool spike mask per step; the kernel only ``X``."""
    for lif, expected in ((multistep_lif, eager), (multistep_lif_triton, kernel)):
        x = (torch.randn(4, 1000) * 3).to(dtype).requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            lif(x)
        assert sum(saved) / x.numel() == expected, lif.__name__


def test_non_contiguous_input():
    x = (torch.randn(300, 4, 5) * 3).permute(1, 0, 2)  # [T=4, 300, 5], time not the outer stride
    assert not x.is_contiguous()
    s, s_ref, grad, grad_ref = run_both(x, 1.5, 1.0)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)


def near_threshold(tau, n=20000):
    """[2, n] inputs whose second charge, from a non-zero membrane, lands within 8 ulps of V_th = 1:
    there one rounding more or less, anywhere in the charge, flips the spike."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, generator=g) * 0.9 * tau
    h0 = x0 / tau
    target = (h0.double() + (1.0 - h0.double()) * tau).float()
    ulp = torch.pow(2.0, (torch.frexp(target).exponent - 24).float())
    return torch.stack([x0, target + torch.randint(-8, 9, (n,), generator=g) * ulp])


def reciprocal_lif(x, tau, contract=False):
    """The charge as ATen runs it on CUDA, ``V + (X - V) * fp32(1/tau)`` rounded per operation; with
    ``contract`` the product and sum rounded once (the fma a compiler could fuse them into)."""
    inv_tau = (torch.tensor(1.0) / torch.tensor(tau)).item()
    v, spikes = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        d = x[t] - v
        h = (v.double() + d.double() * inv_tau).float() if contract else v + d * inv_tau
        spikes.append((h - 1.0 >= 0).to(x.dtype))
        v = torch.where(spikes[-1] > 0, 0.0, h)
    return torch.stack(spikes), inv_tau


@pytest.mark.parametrize("tau", [1.5, 1.7])
def test_charge_rounds_like_aten_on_each_device(tau):
    x = near_threshold(tau)
    on_cpu = multistep_lif(x, tau)                      # ATen on the CPU divides exactly
    like_cuda, inv_tau = reciprocal_lif(x, tau)
    assert not torch.equal(on_cpu, like_cuda)           # the input tells the three roundings apart
    assert not torch.equal(like_cuda, reciprocal_lif(x, tau, contract=True)[0])
    assert torch.equal(multistep_lif_triton(x, tau), on_cpu)
    # the CUDA charge, run by the interpreter through the raw kernel
    spikes = torch.empty_like(x)
    forward, _ = lif_triton._kernels(True)
    forward[(triton.cdiv(x[0].numel(), BLOCK),)](x, spikes, x, x[0].numel(), 2, tau, inv_tau, 1.0, 0.0,
                                                BLOCK=BLOCK, RECIPROCAL=True, STATEFUL=False)
    assert torch.equal(spikes, like_cuda)


def test_channels_last_steps_keep_their_layout():
    """[T, B, C, H, W] whose steps are channels-last (what a channels-last conv gives) runs in place:
    spikes and input gradients come back in the input's layout, with the eager neuron's values."""
    x = (torch.randn(3 * 2, 8, 5, 6) * 3).contiguous(memory_format=torch.channels_last).view(3, 2, 8, 5, 6)
    assert not x.is_contiguous() and x[0].is_contiguous(memory_format=torch.channels_last)
    assert lif_triton._time_major_dense(x) is x
    s, s_ref, grad, grad_ref = run_both(x, 2.0, 1.0)
    assert s.stride() == x.stride() and grad.stride() == x.stride()
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)
    nchw_grad = torch.randn(x.shape)  # an upstream gradient in another layout is laid out like x first
    xg = x.detach().clone().requires_grad_()
    multistep_lif_triton(xg).backward(nchw_grad)
    xr = x.detach().clone().requires_grad_()
    multistep_lif(xr).backward(nchw_grad)
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-6, rtol=1e-6)


def test_only_time_major_dense_layouts_run_in_place():
    x = torch.randn(4, 2, 3, 5, 5)
    assert lif_triton._time_major_dense(x) is x
    steps_inside = x.permute(1, 0, 2, 3, 4).contiguous().permute(1, 0, 2, 3, 4)  # time not outermost
    assert lif_triton._time_major_dense(steps_inside).is_contiguous()
    assert lif_triton._time_major_dense(x[:, :, :, ::2]).is_contiguous()  # a strided slice


def test_channels_last_model_feeds_every_synaptic_conv_channels_last():
    """Under the fast path's layout the Triton neurons keep the stream channels-last, so cuDNN's backward
    converts no gradient."""
    torch.manual_seed(0)
    model = sf.create_model("spikingformer_4_256", depth=1, dim=32, num_heads=4, T=2, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    out_ref = model(x)
    path = FastPath(compile=False, amp_dtype=None, fused_optimizer=False, lif_backend="triton")
    layouts = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(lambda mod, inp, name=name: layouts.__setitem__(
                name, inp[0].is_contiguous(memory_format=torch.channels_last)))
    out = path.prepare(model)(path.to_input(x))
    assert len(layouts) == 11
    assert all(layouts.values()), layouts
    torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)  # the layouts differ in rounding only


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_keeps_an_fp32_membrane(dtype):
    x = (torch.randn(4, 3, 700) * 3).to(dtype)
    xr = x.detach().float().requires_grad_()   # exact upcast: the fp32 eager loop is the reference
    xt = x.detach().clone().requires_grad_()
    s, s_ref = multistep_lif_triton(xt), multistep_lif(xr)
    assert s.dtype == dtype and torch.equal(s.float(), s_ref)
    g = torch.randn_like(s_ref)
    (s.float() * g.to(dtype).float()).sum().backward()
    (s_ref * g.to(dtype).float()).sum().backward()
    assert xt.grad.dtype == dtype
    torch.testing.assert_close(xt.grad.float(), xr.grad, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_stream_of_calls_emits_the_whole_sequences_spikes(dtype):
    """``lif_stream`` carries the fp32 membrane from call to call, whatever each chunk's layout
    (the middle chunk's steps are channels-last)."""
    x = (torch.randn(8, 2, 6, 5, 7) * 3).to(dtype)
    whole = multistep_lif_triton(x, 1.5, 0.8, -0.1)
    chunk = x[1:4].reshape(6, 6, 5, 7).contiguous(memory_format=torch.channels_last).view(3, 2, 6, 5, 7)
    with torch.no_grad():
        s1, v = lif_triton.lif_stream(x[:1], None, 1.5, 0.8, -0.1)
        s2, v = lif_triton.lif_stream(chunk, v, 1.5, 0.8, -0.1)
        s3, v = lif_triton.lif_stream(x[4:], v, 1.5, 0.8, -0.1)
    assert v.dtype == torch.float32 and s2.dtype == dtype
    assert torch.equal(torch.cat([s1, s2, s3]), whole)
    if dtype == torch.float32:
        assert torch.equal(whole, multistep_lif(x, 1.5, 0.8, -0.1))
    assert 0 < whole.mean() < 1 and not torch.equal(s3, multistep_lif_triton(x[4:], 1.5, 0.8, -0.1))


def test_a_stream_refuses_gradients_and_a_foreign_membrane():
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="inference only"):
        lif_triton.lif_stream(x.requires_grad_(), None)
    with torch.no_grad(), pytest.raises(ValueError, match=r"membrane must be fp32 \(3, 4\), got torch.float16"):
        lif_triton.lif_stream(x, torch.zeros(3, 4, dtype=torch.float16))


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384"])
def test_a_stream_on_the_triton_backend_reads_out_as_the_eager_whole_sequence(name):
    from spikingformer.deploy.streaming import Stream

    from ..helpers import calibrate_bn

    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 32, 32)
    model = sf.create_model(name, depth=1, dim=32, num_heads=4, num_classes=5, T=4)
    calibrate_bn(model, x)
    with torch.no_grad():
        whole = model.eval().forward_steps(x)
    FastPath(compile=False, amp_dtype=None, channels_last=False, lif_backend="triton").prepare(model)
    with Stream(model) as stream:
        got = [stream(x[0]), stream(x[1:3]), stream(x[3])]
        assert all(m.membrane.dtype == torch.float32 for m in stream.neurons)
    for logits, t in zip(got, (1, 3, 4)):
        torch.testing.assert_close(logits, whole[t - 1], atol=1e-5, rtol=1e-5)


FAMILIES = [("spikingformer_4_256", {}, 11), ("spikingformer_dagger_4_384", {}, 11), ("spikformer_4_384", {}, 12),
            ("spikformer_v2_8_384", {"img_size": 32}, 19), ("spikingformer_dvs_2_256", {"T": 3, "img_size": 32}, 11)]


@pytest.mark.parametrize("name,extra,n_neurons", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_on_the_triton_backend_equals_the_torch_backend(name, extra, n_neurons):
    """Each family's layouts (conv stream, LinearBN tokens, V2's stem, event frames) reach the kernels."""
    torch.manual_seed(0)
    model = sf.create_model(name, **{"depth": 1, "dim": 32, "num_heads": 4, "T": 2, "num_classes": 5, **extra})
    spikes = record_spikes(model)
    c, h, w = model.default_input_size
    x = torch.randn(2, c, h, w) if c == 3 else torch.rand(model.T, 2, c, h, w).round()  # images or event frames
    y = torch.tensor([1, 3])
    out_ref = model(x)
    torch.nn.functional.cross_entropy(out_ref, y).backward()
    spikes_ref, spikes[:] = spikes[:], []
    grads_ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    path = FastPath(compile=False, amp_dtype=None, channels_last=False, lif_backend="triton")
    assert path.prepare(model) is model
    neurons = [m for m in model.modules() if isinstance(m, MultiStepLIF)]
    assert len(neurons) == n_neurons and {m.backend for m in neurons} == {"triton"}
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    assert torch.equal(out, out_ref)
    assert len(spikes) == len(spikes_ref) == n_neurons
    for a, b in zip(spikes, spikes_ref):
        assert torch.equal(a, b)
    assert any(0 < s.mean() < 1 for s in spikes)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", ["spikingformer_4_256", "spikformer_4_384"])
def test_verify_proves_the_same_on_the_triton_backend(name):
    """The kernels are opaque to the provenance context; their neurons are taken at their word (and tested
    above to spike as the loop does), so the proof, and what it leaves unproven, match the torch backend."""
    from spikingformer.analysis.verify import verify_model

    torch.manual_seed(0)
    model, x = sf.create_model(name, depth=1, dim=32, num_heads=4, T=2).eval(), torch.randn(2, 3, 32, 32)
    ref = verify_model(model, x).to_dict()
    FastPath(compile=False, amp_dtype=None, channels_last=False, lif_backend="triton").prepare(model)
    cert = verify_model(model, x)
    assert (cert.proven, cert.to_dict()["unproven_layers"]) == (ref["proven"], ref["unproven_layers"])
    assert cert.proven == name.startswith("spikingformer")


def tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), MultiStepLIF())


def test_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="runs on CUDA devices .*TRITON_INTERPRET=1"):
        multistep_lif_triton(torch.randn(2, 8))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        FastPath(compile=False, lif_backend="triton").prepare(tiny_model())


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of torch, triton"):
        MultiStepLIF(backend="cupy")
    with pytest.raises(ValueError, match="detach_reset=True only"):
        MultiStepLIF(detach_reset=False, backend="triton")
    with pytest.raises(ValueError, match="lif_backend must be one of auto, torch, triton"):
        FastPath(lif_backend="cupy")
    with pytest.raises(ValueError, match="torch.compile cannot trace the Triton interpreter"):
        FastPath(lif_backend="triton").prepare(tiny_model())
    for fn in (multistep_lif_triton, multistep_lif, lambda x: lif_triton.lif_stream(x, None)):
        for x in (torch.tensor(1.0), torch.zeros(0, 3)):  # no time axis, or no step on it
            with pytest.raises(ValueError, match=r"time-major tensor \[T, ...\] of at least one step, got shape"):
                fn(x)
    with pytest.raises(TypeError, match="fp32, bf16 or fp16"):
        multistep_lif_triton(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="time-major"):
        multistep_lif_triton(torch.tensor(1.0))
    lif = MultiStepLIF(backend="triton")
    assert "backend=triton" in repr(lif) and "backend" not in repr(MultiStepLIF())


@cuda
@pytest.mark.parametrize("tau", [1.5, 1.7])
def test_cuda_charge_rounds_like_cuda_eager(monkeypatch, tau):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = near_threshold(tau)
    eager = multistep_lif(x.cuda(), tau).cpu()
    assert torch.equal(eager, reciprocal_lif(x, tau)[0])  # what the kernel's RECIPROCAL mode assumes
    assert torch.equal(multistep_lif_triton(x.cuda(), tau).cpu(), eager)  # no mul+add contraction


@cuda
@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (1.5, 1.0), (2.0, 0.5)])
def test_cuda_kernels_equal_eager_and_compile_whole(monkeypatch, tau, v_th):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(4, 64, 3000, device="cuda") * 3
    s, s_ref, grad, grad_ref = run_both(x, tau, v_th)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)
    compiled = torch.compile(multistep_lif_triton, fullgraph=True)
    xc = x.detach().clone().requires_grad_()
    sc = compiled(xc, tau, v_th)
    (sc * torch.ones_like(sc)).sum().backward()
    assert torch.equal(sc, s_ref)


def compile_for_h100(kernel, signature: dict, constexprs: dict):
    """Compile a kernel to an sm_90 cubin with Triton's own LLVM and ptxas: no GPU needed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    return triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))


def stack_bytes(cubin: bytes, tmp_path) -> int:
    """Bytes of stack and local memory per thread (where registers spill), from ``cuobjdump -res-usage``."""
    import pathlib
    import re
    import subprocess

    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip("triton ships no cuobjdump here")
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    report = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    return sum(int(re.search(rf"{kind}:(\d+)", report).group(1)) for kind in ("STACK", "LOCAL"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
# a plain launch passes floats as fp32, inductor as fp64; only a plain launch runs a stream (STATEFUL)
@pytest.mark.parametrize("T,scalar,stateful", [(4, "fp32", False), (4, "fp64", False), (17, "fp32", False),
                                               (17, "fp64", False), (4, "fp32", True)])
def test_kernels_compile_for_an_h100_without_spilling(monkeypatch, tmp_path, dtype, scalar, T, stateful):
    """The GPU build of both kernels, checked on a machine without one: the CPU tests run the
    interpreter, which would not have caught fp64 scalars promoting the loop-carried membrane."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="triton without its CUDA backend")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    forward, backward = lif_triton._kernels(False)
    floats = {k: scalar for k in ("tau", "inv_tau", "v_threshold", "v_reset")}
    fwd = compile_for_h100(forward, {"x_ptr": f"*{dtype}", "s_ptr": f"*{dtype}", "v_ptr": "*fp32", "n": "i32",
                                     "T": "i32", **floats, "BLOCK": "constexpr", "RECIPROCAL": "constexpr",
                                     "STATEFUL": "constexpr"},
                           {"BLOCK": BLOCK, "RECIPROCAL": True, "STATEFUL": stateful})
    chunk, block = lif_triton.backward_blocks(T)
    bwd = compile_for_h100(backward, {"x_ptr": f"*{dtype}", "grad_s_ptr": f"*{dtype}", "grad_x_ptr": f"*{dtype}",
                                      "n": "i32", **floats, "alpha": scalar, "T": "constexpr", "CHUNK": "constexpr",
                                      "BLOCK": "constexpr", "RECIPROCAL": "constexpr"},
                           {"T": T, "CHUNK": chunk, "BLOCK": block, "RECIPROCAL": True})
    for kernel in (fwd, bwd):  # all arithmetic in fp32, as the eager neuron rounds: f64 only to read scalars
        f64 = [line.strip() for line in kernel.asm["ptx"].splitlines() if ".f64" in line]
        assert all(op.startswith((".param", "ld.param", "cvt.rn.f32.f64")) for op in f64), f64
        assert stack_bytes(kernel.asm["cubin"], tmp_path) == 0


def test_inductor_sees_the_kernels_write_only_their_outputs(monkeypatch):
    """Inductor reads which tensors a user kernel writes from its TTIR; a write to an input would make
    the compiled graph clone it first.  The training kernels write spikes and ``grad_X`` only (the
    forward's ``v_ptr`` is dead unless STATEFUL); a stream's call writes its membrane too."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="triton without its CUDA backend")
    from triton.backends.compiler import GPUTarget

    tkw = pytest.importorskip("torch._higher_order_ops.triton_kernel_wrap")
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    class H100:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    def written(kernel, tensors, constants):
        return tkw.get_mutated_tensors(tkw.kernel_side_table.add_kernel(kernel),
                                       tkw.kernel_side_table.add_constant_args(constants), tensors, {})

    forward, backward = lif_triton._kernels(False)
    x, s, v = torch.randn(4, 3000), torch.empty(4, 3000), torch.zeros(3000)
    scalars = dict(n=3000, tau=2.0, inv_tau=0.5, v_threshold=1.0, v_reset=0.0)
    # TTIR for an H100, generated without one (the driver is created on first use: a GPU machine's is kept)
    monkeypatch.setattr(triton.runtime.driver, "_active", H100())
    assert written(forward, dict(x_ptr=x, s_ptr=s, v_ptr=s),
                   dict(scalars, T=4, BLOCK=BLOCK, RECIPROCAL=True, STATEFUL=False)) == ["s_ptr"]
    assert sorted(written(forward, dict(x_ptr=x, s_ptr=s, v_ptr=v),
                          dict(scalars, T=4, BLOCK=BLOCK, RECIPROCAL=True, STATEFUL=True))) == ["s_ptr", "v_ptr"]
    assert written(backward, dict(x_ptr=x, grad_s_ptr=s, grad_x_ptr=torch.empty_like(x)),
                   dict(scalars, alpha=4.0, T=4, CHUNK=4, BLOCK=512, RECIPROCAL=True)) == ["grad_x_ptr"]
