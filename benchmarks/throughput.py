"""Train and inference throughput: reference (SpikingJelly LIF, eager, fp16) vs this library.

For each ``MODEL:BATCH`` it times, with synthetic data already on the device:

- ``reference``: the same architecture with every neuron swapped for SpikingJelly's
  ``LIFNode(tau, detach_reset=True, step_mode="m")`` (its own CUDA kernels), eager, fp16
  autocast with a GradScaler, ``functional.reset_net`` after every batch, foreach AdamW:
  the official recipe.  Skipped with a message when SpikingJelly cannot be imported.
- ``eager``: this library, eager, same precision and optimizer as the reference.
- ``fast``: this library's fast path as ``spikingformer train`` runs it (``FastPath()``:
  torch.compile, bf16, channels-last, fused AdamW, on CUDA the Triton LIF kernels);
  ``fast:MODE`` compiles with ``torch.compile`` mode MODE, e.g. ``fast:reduce-overhead``
  (CUDA graphs; every step starts with ``FastPath.step_begin()``, as a training loop must).
- ``+triton`` after ``eager`` or ``fast[:MODE]``: every neuron runs the Triton LIF kernels
  (``spikingformer.nn.kernels``; CUDA, or the CPU under ``TRITON_INTERPRET=1`` uncompiled);
  ``+torch``: every neuron runs the PyTorch loop (under compile: traced and fused by inductor).
- ``+nchw`` after ``fast``: no channels-last conversion (inductor picks the layouts).
- ``+fold`` after ``eager`` or ``fast``: inference runs the deployed model, every BatchNorm folded
  into its conv (``deploy.fold_bn``; prepared, and so compiled, on its own), so no normalisation
  pass sits between a convolution and its neuron.  Training is unchanged.
- ``+ckpt`` after ``eager`` or ``fast``: training with gradient checkpointing (``set_grad_checkpointing``:
  every block recomputed in the backward pass), for its peak memory and its cost in speed.

Warm-up steps are excluded from the rates; the fast path's compile time (first steps
minus steady-state steps) is reported separately.  Peak memory is the training peak.
A variant that fails is reported and skipped; the others still run.  Every measurement
starts from a fresh ``torch._dynamo`` state, so one batch size never makes the next one
compile with dynamic shapes.  ``--profile N`` then profiles N more training steps of the
same compiled model, and N inference steps, and reports where the device time goes, by kind of kernel.

    python benchmarks/throughput.py spikingformer_4_384:64 spikingformer_4_384:256 \
        spikingformer_8_512:36 --json throughput.json --variants reference,eager,fast,fast+torch
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict

import torch
from torch import nn

import spikingformer
from spikingformer.deploy.fold import fold_bn
from spikingformer.nn.fast import FastPath
from spikingformer.nn.neuron import MultiStepLIF

VARIANTS = ("reference, eager[+triton][+fold][+ckpt], fast[:MODE][+triton|+torch][+nchw][+fold][+ckpt] "
            "(MODE a torch.compile mode)")


def swap_in_spikingjelly(model: nn.Module) -> nn.Module:
    """Replace every ``MultiStepLIF`` by SpikingJelly's ``LIFNode`` with the same constants."""
    from spikingjelly.activation_based import neuron, surrogate

    for name, child in model.named_children():
        if isinstance(child, MultiStepLIF):
            setattr(model, name, neuron.LIFNode(
                tau=child.tau, v_threshold=child.v_threshold, v_reset=child.v_reset,
                surrogate_function=surrogate.Sigmoid(alpha=child.alpha),
                detach_reset=child.detach_reset, step_mode="m"))
        else:
            swap_in_spikingjelly(child)
    return model


def reset_spikingjelly(model: nn.Module) -> None:
    """SpikingJelly's neurons keep their membrane between calls: clear it after every batch."""
    from spikingjelly.activation_based import functional

    functional.reset_net(model)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Variant:
    """One way of running a model: how to build it, its precision and what runs after each batch."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.after_batch = lambda model: None
        self.scaler = None
        base, *extras = name.split("+")
        kind, _, mode = base.partition(":")
        if kind not in ("reference", "eager", "fast") or (mode and kind != "fast") \
                or not set(extras) <= {"triton", "torch", "nchw", "fold", "ckpt"} or {"triton", "torch"} <= set(extras) \
                or ("nchw" in extras and kind != "fast") or (extras and kind == "reference"):
            raise ValueError(f"unknown variant {name!r}; valid: {VARIANTS}")
        backend = "triton" if "triton" in extras else "torch" if "torch" in extras else "auto"
        self.triton = backend == "triton"
        self.fold = "fold" in extras
        self.checkpointing = "ckpt" in extras
        if kind == "fast":
            cuda = device.type == "cuda"
            self.path = FastPath(compile_mode=mode or None, lif_backend=backend,
                                 amp_dtype=torch.bfloat16 if cuda else None,
                                 channels_last=cuda and "nchw" not in extras)
        else:
            self.path = dataclasses.replace(FastPath.off(), lif_backend=backend)
            if device.type == "cuda":  # the official recipe: fp16 autocast + loss scaling
                self.path = FastPath(compile=False, amp_dtype=torch.float16, channels_last=False,
                                     fused_optimizer=False, lif_backend=backend)
                self.scaler = torch.amp.GradScaler("cuda")
        if name == "reference":
            self.after_batch = reset_spikingjelly

    def build(self, model_name: str, **overrides) -> nn.Module:
        model = spikingformer.create_model(model_name, **overrides).to(self.device)
        model.set_grad_checkpointing(self.checkpointing)
        if self.name == "reference":
            swap_in_spikingjelly(model)
        return model


# Kinds of kernel, by name (first match wins): library convolutions and matmuls, inductor's
# generated reductions and pointwise kernels, this library's Triton LIF, the rest.
KERNEL_KINDS = (
    ("lif (Triton kernels)", ("lif_forward", "lif_backward")),
    ("inductor reduction", ("triton_red", "triton_per")),
    ("inductor pointwise", ("triton_poi",)),
    ("conv/matmul (cuDNN, cuBLAS)", ("conv", "gemm", "cudnn", "cutlass", "xmma", "wgrad", "dgrad",
                                     "fprop", "sm90_", "implicit_", "nhwc", "nchw")),
    ("optimizer", ("adam",)),
    ("batchnorm (ATen)", ("batch_norm", "bn_")),
    ("copy (ATen)", ("direct_copy", "catarray", "copy_kernel")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profile_steps(step, n: int, device, top: int = 12) -> dict:
    """Device time per step of ``n`` steps, by kernel kind and for the ``top`` kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        for _ in range(n):
            step()
        sync(device)
    times = defaultdict(float)
    for evt in prof.key_averages():
        if cuda and evt.device_type != DeviceType.CUDA:
            continue  # host ops report their kernels' time too: count the kernels alone
        us = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        if us > 0:
            times[evt.key] += us / 1e3 / n
    total = sum(times.values()) or 1.0
    kinds = defaultdict(float)
    for name, ms in times.items():
        kinds[kernel_kind(name)] += ms
    order = sorted(times, key=times.get, reverse=True)[:top]
    # Which host-side calls launch the ATen copies: the op and the two ops around it.
    copies = defaultdict(float)
    for evt in prof.events() if cuda else ():
        ms = sum(k.duration for k in getattr(evt, "kernels", ()) if kernel_kind(k.name).startswith("copy")) / 1e3 / n
        if ms > 0:
            chain, parent = [evt.name], evt.cpu_parent
            while parent is not None and len(chain) < 4:
                chain.append(parent.name)
                parent = parent.cpu_parent
            copies[" < ".join(chain)] += ms
    return {"ms_per_step": total,
            "copy_sources": [{"calls": k, "ms": copies[k]} for k in sorted(copies, key=copies.get, reverse=True)[:6]],
            "kinds": {k: {"ms": ms, "share": ms / total} for k, ms in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": k[:120], "kind": kernel_kind(k), "ms": times[k]} for k in order]}


def print_profile(r: dict, key: str = "profile", step: str = "training") -> None:
    prof = r[key]
    print(f"\n{r['variant']} on {r['model']}, batch {r['batch']}: {prof['ms_per_step']:.2f} ms of device time per "
          f"{step} step", flush=True)
    for kind, v in prof["kinds"].items():
        print(f"  {v['share']:6.1%} {v['ms']:8.2f} ms  {kind}")
    for k in prof["top"]:
        print(f"  {k['ms']:8.3f} ms  [{k['kind']}] {k['kernel']}")
    for c in prof["copy_sources"]:
        print(f"  copies {c['ms']:8.3f} ms from {c['calls']}")


def time_steps(step, n: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return time.perf_counter() - t0


def bench_variant(variant: Variant, model_name: str, batch: int, args) -> dict:
    device = variant.device
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = variant.build(model_name, **args.overrides)
    c, h, w = model.default_input_size
    if args.input_size:
        h = w = args.input_size
    x = variant.path.to_input(torch.randn(batch, c, h, w, device=device))
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    runner = variant.path.prepare(model)
    opt = variant.path.adamw(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def train_step():
        variant.path.step_begin()
        with variant.path.autocast(device):
            loss = loss_fn(runner(x), y)
        opt.zero_grad(set_to_none=True)
        if variant.scaler is not None:
            variant.scaler.scale(loss).backward()
            variant.scaler.step(opt)
            variant.scaler.update()
        else:
            loss.backward()
            opt.step()
        variant.after_batch(model)

    def infer_step():
        variant.path.step_begin()
        with torch.inference_mode(), variant.path.autocast(device):
            infer_runner(x)
        variant.after_batch(model)

    out = {"variant": variant.name, "model": model_name, "batch": batch, "input": [c, h, w], "T": model.T,
           "model_overrides": args.overrides}
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = time_steps(train_step, args.warmup, device)
    if device.type == "cuda" and not variant.path.cudagraphs:  # graphs allocate their pool while warming up
        torch.cuda.reset_peak_memory_stats()
    elapsed = time_steps(train_step, args.steps, device)
    out["train_img_s"] = batch * args.steps / elapsed
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    out["train_warmup_s"] = first
    if args.profile:
        out["profile"] = profile_steps(train_step, args.profile, device)
    model.eval()
    infer_runner = variant.path.prepare(fold_bn(model)) if variant.fold else runner
    first_inf = time_steps(infer_step, args.warmup, device)
    elapsed = time_steps(infer_step, args.steps, device)
    out["infer_img_s"] = batch * args.steps / elapsed
    if args.profile:
        out["profile_infer"] = profile_steps(infer_step, args.profile, device)
    steady = args.warmup * (batch / out["train_img_s"] + batch / out["infer_img_s"])
    out["compile_s"] = max(0.0, first + first_inf - steady) if variant.path.compile else 0.0
    del runner, infer_runner, model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="MODEL:BATCH", help="e.g. spikingformer_4_384:64")
    p.add_argument("--variants", default="reference,eager,fast",
                   help=f"comma list of {VARIANTS}; the first is the base of the ratios")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (include compilation)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--input-size", type=int, default=None, help="override the model's input size")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="model overrides, e.g. depth=1 dim=64 or --set depth=1 --set dim=64 (integers only)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N training and N inference steps: device time by kernel kind")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    args = p.parse_args(argv)
    args.overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        variants = [Variant(v.strip(), device) for v in args.variants.split(",")]
    except ValueError as e:
        p.error(str(e))
    if any(v.triton for v in variants):
        from spikingformer.nn.kernels import check_device
        try:
            check_device(device)
        except RuntimeError as e:
            p.error(str(e))
    if any(v.name == "reference" for v in variants):
        try:
            import spikingjelly.activation_based.neuron  # noqa: F401
        except ImportError as e:
            print(f"skipping the reference: SpikingJelly cannot be imported ({e})", file=sys.stderr)
            variants = [v for v in variants if v.name != "reference"]

    results, errors = [], []
    for run in args.runs:
        model_name, _, batch = run.partition(":")
        for v in variants:
            try:
                r = bench_variant(Variant(v.name, device), model_name, int(batch or 64), args)
            except Exception as e:  # one broken variant must not cost the measurements of the others
                errors.append({"variant": v.name, "model": model_name, "error": f"{type(e).__name__}: {e}"})
                print(f"{v.name} on {run} failed: {errors[-1]['error']}", file=sys.stderr, flush=True)
                continue
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if not k.startswith("profile")}), flush=True)
            if args.profile:
                print_profile(r)
                print_profile(r, "profile_infer", "inference")
            if args.json:  # after every measurement, so a run cut short keeps what it measured
                write_json(args.json, device, results, errors)

    base = {(r["model"], r["batch"]): r for r in results if r["variant"] == variants[0].name}
    print(f"\ndevice: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}; "
          f"ratios against '{variants[0].name}'")
    print("| model, batch | variant | train img/s | x | inference img/s | x | peak GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        b = base.get((r["model"], r["batch"]))
        r["train_x"] = r["train_img_s"] / b["train_img_s"] if b else None
        r["infer_x"] = r["infer_img_s"] / b["infer_img_s"] if b else None
        ratio = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"| {r['model']}, {r['batch']} | {r['variant']} | {r['train_img_s']:,.0f} | {ratio(r['train_x'])} | "
              f"{r['infer_img_s']:,.0f} | {ratio(r['infer_x'])} | {peak} | {r['compile_s']:.0f} |")
    if args.json:
        write_json(args.json, device, results, errors)
    return 1 if errors else 0


def write_json(path: str, device: torch.device, results: list, errors: list) -> None:
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    with open(path, "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "results": results, "errors": errors}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
