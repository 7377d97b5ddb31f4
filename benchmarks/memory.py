"""Peak memory and speed of a training step, with and without gradient checkpointing.

Variants, for each ``MODEL:BATCH``:

- ``plain``: the model as built (autograd keeps every layer's ``T``-fold activations);
- ``ckpt``: ``model.set_grad_checkpointing()``: each block and stem stage keeps only its input and is
  recomputed in the backward pass (``spikingformer.nn.layers.run_blocks``).

After one warm-up step (the optimizer's state exists from then on), one training step (forward,
backward, AdamW) is measured: the peak of the memory held by tensors, above what they held when
the step began.  On CUDA that is torch's allocator high-water mark; on the CPU, which keeps no
such count, the peak of the PyTorch profiler's memory timeline of that step (tensors only, not the
C allocator's slack).  Then ``--steps`` more steps are timed.  Ratios are against ``plain``.
With ``--mae`` each model is the encoder of a Spikformer V2 MAE pre-training step instead
(``SpikformerV2MAE``, T = 1 unless ``--set T=...``), whose checkpointing also recomputes the sparse
stem's segments and the decoder's blocks, and a third variant is the baseline of its sparse stem:

- ``dense_stem``: the stem as a dense convolution whose outputs are zeroed outside the mask, with BN over
  the visible positions (``dense_stem_encoder``: the same outputs and gradients as the library's tiled
  stem, which computes the visible patches only; tested).

    python benchmarks/memory.py spikingformer_4_384:16 --steps 3 --json memory.json
    python benchmarks/memory.py spikformer_v2_8_384:8 --mae --steps 3
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import os
import sys
import tempfile
import time
import warnings

import torch

VARIANTS = ("plain", "ckpt")
MAE_VARIANTS = ("dense_stem", *VARIANTS)


def dense_stem_encoder(model, x, ids_keep, visible):
    """``SpikformerV2MAE.forward_encoder`` with a dense masked stem: every ConvBN runs on the whole map, its
    output is zeroed outside the mask (upsampled to its resolution), and its BN sees the visible positions."""
    from spikingformer.nn.layers import ConvBN, run_blocks, seq_apply

    x = model.encoder.check_input(x)
    for layer in model.encoder.stem.layers:
        if isinstance(layer, ConvBN):
            y = seq_apply(layer.conv, x)
            t, b, c, h, w = y.shape
            f = h // visible.shape[1]
            where = visible.repeat_interleave(f, 1).repeat_interleave(f, 2).unsqueeze(0).expand(t, b, h, w)
            tokens = layer.bn(y.permute(0, 1, 3, 4, 2)[where][:, :, None, None]).flatten(1)
            x = y.new_zeros(t, b, h, w, c).index_put((where,), tokens).permute(0, 1, 4, 2, 3)
        else:
            x = layer(x)
    tokens = x.permute(0, 1, 3, 4, 2)[:, visible].view(x.shape[0], *ids_keep.shape, -1)
    return run_blocks(model.encoder.blocks, tokens)


# What Kineto writes to the C stderr around every CPU profile: no fault of the run (it looks for a GPU, and
# says when it starts and stops), so it is held back; anything else it writes is passed on.
_KINETO_CHATTER = ("gpuGetDeviceCount failed", "profiler_start", "profiler_stop", "Memory block of unknown size")


@contextlib.contextmanager
def _without_profiler_chatter():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            sys.stderr.writelines(line for line in caught if not any(c in line for c in _KINETO_CHATTER))


def cpu_step_peak(step) -> float:
    """Bytes: the most that tensors made during ``step()`` held at once (the profiler's raw memory events:
    ``(time, action, bytes, category)``, where action 1 marks tensors that existed before the step)."""
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_chatter(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                              record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.raw.json.gz")
        with warnings.catch_warnings():  # deprecated for CUDA's memory snapshots, which the CPU does not have
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(path, device="cpu")
        with gzip.open(path, "rt") as f:
            events = json.load(f)
    held = peak = 0
    for _, action, nbytes, _ in sorted((e for e in events if e[1] != 1), key=lambda e: e[0]):
        held += nbytes
        peak = max(peak, held)
    return peak


def build(model_name: str, overrides: dict, mae: bool, batch: int, dev: torch.device):
    """``(model, loss)``: the model in train mode and a function giving one step's loss on a fixed batch."""
    import spikingformer
    from spikingformer.models.mae import MAEConfig, SpikformerV2MAE

    if mae:
        args = {k: v for k, v in overrides.items() if k != "T"}
        model = SpikformerV2MAE(MAEConfig(model_name, args, T=overrides.get("T", 1))).to(dev).train()
        x = torch.randn(batch, *model.encoder.default_input_size, device=dev)
        gen = torch.Generator(dev).manual_seed(0)  # the same masks every step, as for the plain variant
        return model, lambda: model(x, gen.manual_seed(0)).loss
    model = spikingformer.create_model(model_name, **overrides).to(dev).train()
    x = torch.randn(batch, *model.default_input_size, device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)
    return model, lambda: torch.nn.functional.cross_entropy(model(x), y)


def measure(model_name: str, batch: int, variant: str, device: str, steps: int, overrides: dict,
            mae: bool = False) -> dict:
    """One variant: the measured step's peak memory, then the rate of ``steps`` more."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model, loss = build(model_name, overrides, mae, batch, dev)
    model.set_grad_checkpointing(variant == "ckpt")
    if variant == "dense_stem":
        model.forward_encoder = functools.partial(dense_stem_encoder, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        rise = torch.cuda.max_memory_allocated() - before
    else:
        rise = cpu_step_peak(step)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    T = model.cfg.T if mae else model.T
    return {"model": model_name + (" (MAE)" if mae else ""), "batch": batch, "variant": variant, "T": T,
            "device": device, "step_peak_mib": rise / 2**20, "train_img_s": batch * steps / elapsed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="MODEL:BATCH", help="e.g. spikingformer_4_384:16 (batch default 16)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3, help="timed training steps after the measured one")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="model overrides, e.g. depth=2 dim=64 or --set depth=2 --set dim=64 (integers only)")
    p.add_argument("--mae", action="store_true", help="each MODEL is the encoder of a Spikformer V2 MAE "
                   "pre-training step (T = 1 unless --set T=...)")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    args = p.parse_args(argv)
    try:
        overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    except ValueError:
        p.error(f"--set takes KEY=INTEGER pairs, got {args.set}")
    if args.steps < 1 or any(not run.partition(":")[2].isdigit() or int(run.partition(":")[2]) < 1
                             for run in args.runs if ":" in run):
        p.error("--steps and every batch must be >= 1")
    results, errors = [], []
    for run in args.runs:
        for variant in MAE_VARIANTS if args.mae else VARIANTS:
            model_name, _, batch = run.partition(":")
            try:
                results.append(measure(model_name, int(batch or 16), variant, args.device, args.steps, overrides,
                                       args.mae))
                print(json.dumps(results[-1]), flush=True)
            except Exception as e:  # one failed measurement (out of memory, say) must not cost the others
                errors.append({"run": run, "variant": variant, "error": str(e)})
                print(f"{variant} on {run} failed: {e}", file=sys.stderr)
    print(f"device: {args.device}, torch {torch.__version__}; ratios against 'plain'")
    print("| model, batch | variant | step peak MiB | x | train img/s | x |")
    print("|---|---|---|---|---|---|")
    for r in results:
        base = next((b for b in results if (b["model"], b["batch"], b["variant"]) == (r["model"], r["batch"], "plain")),
                    None)
        r["peak_x"] = r["step_peak_mib"] / base["step_peak_mib"] if base and base["step_peak_mib"] else None
        r["speed_x"] = r["train_img_s"] / base["train_img_s"] if base else None
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(f"| {r['model']}, {r['batch']} | {r['variant']} | {r['step_peak_mib']:,.0f} | {fmt(r['peak_x'])} | "
              f"{r['train_img_s']:,.1f} | {fmt(r['speed_x'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "torch": torch.__version__, "model_overrides": overrides,
                       "results": results, "errors": errors}, f, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
