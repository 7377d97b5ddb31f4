"""The multistep LIF neuron alone: forward and training time per implementation, side by side.

For each ``TxN`` shape (``T`` steps of ``N`` neurons) and dtype it times

- ``torch``: ``neuron.multistep_lif``, the eager PyTorch loop (the CPU path);
- ``compiled``: the same loop under ``torch.compile`` (what inductor makes of it: ``fast+torch``);
- ``triton``: the Triton kernels of ``spikingformer.nn.kernels`` (the fast path's neurons on CUDA; on
  the CPU only under ``TRITON_INTERPRET=1``, slowly);
- ``spikingjelly``: SpikingJelly's ``LIFNode`` as ``benchmarks/throughput.py``'s reference runs it
  (skipped with a message when it cannot be imported).

``forward`` is one call without autograd; ``train`` is forward plus backward of a fixed upstream
gradient.  Every rate is the *same* byte count divided by each variant's time: the least traffic
a LIF can get away with (forward: read ``X``, write ``S``; backward: read ``X`` and ``grad_S``,
write ``grad_X``; ``b`` bytes per value), so the column compares implementations and shows how
close each gets to the memory bandwidth.  Every variant's spikes and input gradient are first
checked against the eager loop's on a slice of the input in fp32 (``check``), so the timings
compare implementations of one neuron; this library's own agree exactly (``tests/``).

    python benchmarks/lif_kernels.py --shape 4x6291456 --shape 16x1048576 --dtype bf16 --json lif.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from spikingformer.nn.neuron import multistep_lif

VARIANTS = ("torch", "compiled", "triton", "spikingjelly")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def neuron(variant: str):
    """``fn(x) -> spikes`` over ``[T, N]`` for one variant (default constants: tau 2, V_th 1, reset 0)."""
    if variant == "torch":
        return multistep_lif
    if variant == "compiled":
        return torch.compile(multistep_lif, fullgraph=True)
    if variant == "triton":
        from spikingformer.nn.kernels import multistep_lif_triton

        return multistep_lif_triton
    if variant == "spikingjelly":
        from spikingjelly.activation_based import functional, surrogate
        from spikingjelly.activation_based import neuron as sj_neuron

        node = sj_neuron.LIFNode(tau=2.0, surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=True,
                                 step_mode="m")

        def run(x):
            functional.reset_net(node)
            return node(x)
        return run
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def check(fn, variant: str, x: torch.Tensor) -> int:
    """How many spikes of ``fn`` on ``x`` differ from the eager loop's, in fp32 (in half precision the
    implementations round the membrane differently by design).  A rounding apart is tolerated in
    another library's neuron, up to 1 in 10,000 spikes; more, or an input gradient that differs while
    the spikes agree, means another neuron, and raises."""
    ref_x, got_x = x.detach().float().requires_grad_(), x.detach().float().requires_grad_()
    ref, got = multistep_lif(ref_x), fn(got_x)
    g = torch.randn(ref.shape, device=x.device, generator=torch.Generator(x.device).manual_seed(0))
    ref.backward(g)
    got.backward(g)
    mismatched = int((got != ref).sum())
    if mismatched > ref.numel() * 1e-4:
        raise AssertionError(f"{variant}: {mismatched} of {ref.numel()} spikes differ from the eager loop's (fp32)")
    if not mismatched:
        torch.testing.assert_close(got_x.grad, ref_x.grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{variant}: input gradient differs from the eager loop's: {m}")
    return mismatched


def seconds_per_call(call, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(variant: str, shape: tuple[int, int], dtype: torch.dtype, args) -> dict:
    device = torch.device(args.device)
    fn = neuron(variant)
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=torch.float32, generator=g).mul_(3).to(dtype)
    mismatched = check(fn, variant, x[:, : args.check_neurons])
    torch._dynamo.reset()  # the timed shape compiles afresh: static, not dynamic after the check's shape
    xg = x.clone().requires_grad_()
    grad = torch.randn(shape, device=device, dtype=torch.float32, generator=g).to(dtype)

    def forward():
        with torch.no_grad():
            fn(x)

    def train():
        fn(xg).backward(grad)
        xg.grad = None

    fwd_s = seconds_per_call(forward, args.steps, args.warmup, device)
    train_s = seconds_per_call(train, args.steps, args.warmup, device)
    b, values = x.element_size(), x.numel()
    return {"variant": variant, "T": shape[0], "N": shape[1], "dtype": str(dtype).removeprefix("torch."),
            "mismatched_spikes": mismatched, "forward_ms": fwd_s * 1e3, "train_ms": train_s * 1e3,
            "forward_gb_s": 2 * b * values / fwd_s / 1e9, "train_gb_s": 5 * b * values / train_s / 1e9}


def parse_shape(text: str) -> tuple[int, int]:
    try:
        t, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be TxN, e.g. 4x1048576, got {text!r}") from None
    if t < 1 or n < 1:
        raise argparse.ArgumentTypeError(f"shape needs T >= 1 and N >= 1, got {text!r}")
    return t, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=parse_shape, action="append", metavar="TxN",
                   help="time steps x neurons, repeatable (default: 4x6291456 and 16x1048576: the 4-384 model's "
                        "blocks at batch 256, and a DVS-length run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--variants", default="torch,compiled,triton,spikingjelly",
                   help=f"comma list of {', '.join(VARIANTS)}; the first is the base of the ratios")
    p.add_argument("--steps", type=int, default=50, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (include compilation)")
    p.add_argument("--check-neurons", type=int, default=4096, help="neurons checked against the eager loop")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    if "spikingjelly" in variants:
        try:
            import spikingjelly.activation_based.neuron  # noqa: F401
        except ImportError as e:
            print(f"skipping spikingjelly: it cannot be imported ({e})", file=sys.stderr)
            variants.remove("spikingjelly")
    dtype = DTYPES[args.dtype]
    results, errors = [], []
    for shape in args.shape or [(4, 6291456), (16, 1048576)]:
        for v in variants:
            try:
                results.append(bench(v, shape, dtype, args))
            except Exception as e:  # one broken variant must not cost the measurements of the others
                errors.append({"variant": v, "T": shape[0], "N": shape[1], "error": f"{type(e).__name__}: {e}"})
                print(f"{v} on {shape[0]}x{shape[1]} failed: {errors[-1]['error']}", file=sys.stderr, flush=True)

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"\ndevice: {name}, torch {torch.__version__}, {args.dtype}; ratios against '{variants[0]}'; "
          "GB/s = the least traffic (forward 2 values, training 5 per neuron-step) / time")
    print("| T x N | variant | forward ms | x | GB/s | train ms | x | GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    base = {(r["T"], r["N"]): r for r in results if r["variant"] == variants[0]}
    for r in results:
        b = base.get((r["T"], r["N"]))
        r["forward_x"] = b["forward_ms"] / r["forward_ms"] if b else None
        r["train_x"] = b["train_ms"] / r["train_ms"] if b else None
        ratio = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
        print(f"| {r['T']} x {r['N']:,} | {r['variant']} | {r['forward_ms']:.3f} | {ratio(r['forward_x'])} | "
              f"{r['forward_gb_s']:,.1f} | {r['train_ms']:.3f} | {ratio(r['train_x'])} | {r['train_gb_s']:,.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "dtype": args.dtype, "results": results,
                       "errors": errors}, f, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
