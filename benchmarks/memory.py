"""Peak memory and speed of a training step, with and without gradient checkpointing.

For each ``MODEL:BATCH`` every variant runs in a fresh process, so that one variant's allocations
never hide another's peak:

- ``plain``: the model as built (autograd keeps every layer's ``T``-fold activations);
- ``ckpt``: ``model.set_grad_checkpointing()``: each block keeps only its input and is recomputed
  in the backward pass (``spikingformer.layers.run_blocks``).

A process builds the model, AdamW and a synthetic batch, then runs one training step and reports
how far memory rose above what it held before that step (parameters, input): on CUDA torch's
allocator high-water mark, on the CPU the process's peak resident set (``VmHWM``), which also
counts the optimizer state that step creates (the same in both variants) and the C allocator's
slack.  Then ``--steps`` more steps are timed.  Ratios are against ``plain`` of the same run.

    python benchmarks/memory.py spikingformer_4_384:32 --steps 3 --json memory.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

VARIANTS = ("plain", "ckpt")


def _cpu_rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(model_name: str, batch: int, variant: str, device: str, steps: int, overrides: dict) -> dict:
    """One variant in this process: the first training step's memory rise, then the rate of ``steps`` more."""
    import spikingformer

    dev = torch.device(device)
    torch.manual_seed(0)
    model = spikingformer.create_model(model_name, **overrides).to(dev).train()
    model.set_grad_checkpointing(variant == "ckpt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *model.default_input_size, device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        rise = torch.cuda.max_memory_allocated() - before
    else:
        before = _cpu_rss_kib("VmRSS")
        step()
        rise = (_cpu_rss_kib("VmHWM") - before) * 1024
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"model": model_name, "batch": batch, "variant": variant, "T": model.T, "device": device,
            "step_peak_mib": rise / 2**20, "train_img_s": batch * steps / elapsed if steps else None}


def run_child(run: str, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, run, "--device", args.device, "--steps", str(args.steps),
           "--set", *args.set]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="MODEL:BATCH", help="e.g. spikingformer_4_384:32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3, help="timed training steps after the measured one")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model overrides, e.g. depth=2 dim=64 (integers only)")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    except ValueError:
        p.error(f"--set takes KEY=INTEGER pairs, got {args.set}")
    if args.child:  # one measurement in a fresh process, as one JSON line
        model_name, _, batch = args.runs[0].partition(":")
        print(json.dumps(measure(model_name, int(batch or 32), args.child, args.device, args.steps, overrides)))
        return 0

    results, errors = [], []
    for run in args.runs:
        for variant in VARIANTS:
            try:
                results.append(run_child(run, variant, args))
            except RuntimeError as e:
                errors.append({"run": run, "variant": variant, "error": str(e)})
                print(f"{variant} on {run} failed: {e}", file=sys.stderr)
    print(f"device: {args.device}, torch {torch.__version__}; ratios against 'plain'")
    print("| model, batch | variant | step peak MiB | x | train img/s | x |")
    print("|---|---|---|---|---|---|")
    for r in results:
        base = next((b for b in results if (b["model"], b["batch"], b["variant"]) == (r["model"], r["batch"], "plain")),
                    None)
        r["peak_x"] = r["step_peak_mib"] / base["step_peak_mib"] if base and base["step_peak_mib"] else None
        r["speed_x"] = r["train_img_s"] / base["train_img_s"] if base and r["train_img_s"] else None
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(f"| {r['model']}, {r['batch']} | {r['variant']} | {r['step_peak_mib']:,.0f} | {fmt(r['peak_x'])} | "
              f"{r['train_img_s'] or 0:,.1f} | {fmt(r['speed_x'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "torch": torch.__version__, "results": results, "errors": errors}, f,
                      indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
