"""Train and inference throughput: reference (SpikingJelly LIF, eager, fp16) vs this library.

For each ``MODEL:BATCH`` it times, with synthetic data already on the device:

- ``reference``: the same architecture with every neuron swapped for SpikingJelly's
  ``LIFNode(tau, detach_reset=True, step_mode="m")`` (its own CUDA kernels), eager, fp16
  autocast with a GradScaler, ``functional.reset_net`` after every batch, foreach AdamW:
  the official recipe.  Skipped with a message when SpikingJelly cannot be imported.
- ``eager``: this library, eager, same precision and optimizer as the reference.
- ``fast``: this library's fast path (``spikingformer.fast.FastPath``: torch.compile,
  bf16, channels-last, fused AdamW); ``fast:MODE`` compiles with ``torch.compile`` mode
  MODE, e.g. ``fast:reduce-overhead`` (CUDA graphs; every step starts with
  ``FastPath.step_begin()``, as a training loop must).
- ``+triton`` after ``eager`` or ``fast[:MODE]``: every neuron runs the Triton LIF kernels
  (``spikingformer.kernels``; CUDA, or the CPU under ``TRITON_INTERPRET=1`` uncompiled).

Warm-up steps are excluded from the rates; the fast path's compile time (first steps
minus steady-state steps) is reported separately.  Peak memory is the training peak.
A variant that fails is reported and skipped; the others still run.

    python benchmarks/throughput.py spikingformer_4_384:64 spikingformer_4_384:256 \
        spikingformer_8_512:36 --json throughput.json \
        --variants reference,eager,fast,fast+triton,fast:reduce-overhead,fast:reduce-overhead+triton
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
from torch import nn

import spikingformer
from spikingformer.fast import FastPath
from spikingformer.neuron import MultiStepLIF

VARIANTS = "reference, eager[+triton], fast[:MODE][+triton] (MODE a torch.compile mode)"


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
        base, plus, extra = name.partition("+")
        kind, _, mode = base.partition(":")
        if kind not in ("reference", "eager", "fast") or (mode and kind != "fast") \
                or (plus and (extra != "triton" or kind == "reference")):
            raise ValueError(f"unknown variant {name!r}; valid: {VARIANTS}")
        self.triton = extra == "triton"
        backend = "triton" if self.triton else "torch"
        if kind == "fast":
            self.path = FastPath(compile_mode=mode or None, lif_backend=backend)
            if device.type != "cuda":
                self.path = FastPath(compile_mode=mode or None, amp_dtype=None, channels_last=False,
                                     lif_backend=backend)
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
        if self.name == "reference":
            swap_in_spikingjelly(model)
        return model


def time_steps(step, n: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return time.perf_counter() - t0


def bench_variant(variant: Variant, model_name: str, batch: int, args) -> dict:
    device = variant.device
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
            runner(x)
        variant.after_batch(model)

    out = {"variant": variant.name, "model": model_name, "batch": batch, "input": [c, h, w], "T": model.T}
    model.train()
    first = time_steps(train_step, args.warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elapsed = time_steps(train_step, args.steps, device)
    out["train_img_s"] = batch * args.steps / elapsed
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    out["train_warmup_s"] = first
    model.eval()
    first_inf = time_steps(infer_step, args.warmup, device)
    elapsed = time_steps(infer_step, args.steps, device)
    out["infer_img_s"] = batch * args.steps / elapsed
    steady = args.warmup * (batch / out["train_img_s"] + batch / out["infer_img_s"])
    out["compile_s"] = max(0.0, first + first_inf - steady) if variant.path.compile else 0.0
    del runner, model, opt
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
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model overrides, e.g. depth=1 dim=64 (integers only)")
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
        from spikingformer.kernels import check_device
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
            print(json.dumps(r), flush=True)
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
