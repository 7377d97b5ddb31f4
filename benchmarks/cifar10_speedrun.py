"""CIFAR-10 JPEG speedrun: held-out validation accuracy of Spikingformer-4-384 against wall-clock minutes.

    python benchmarks/cifar10_speedrun.py --data DIR [--config configs/cifar10_speedrun.yaml]
        [--time-budget-min 10] [--max-epochs 40] [--set key=value ...] [--limit N] [--out DIR]

``DIR`` holds ``train/<class>/*.jpg`` (the unpacked ``cifar10-train-jpeg.tar.gz``).  5,000 images
(class-balanced, seed 0) are held out as the validation split, the same ones ``spikingformer train
--config configs/cifar10_jpeg.yaml`` holds out.  Everything the run does after decoding the JPEGs
counts against the budget: compilation, training and every evaluation.  Writes ``metrics.jsonl``
(one line per evaluation: minutes, epoch, val_acc, ...), ``summary.json`` and ``val_acc.png``.
On a CPU (no compile, fp32) it runs as a smoke test: ``--limit 200 --max-epochs 1`` plus tiny
``--set model_args=...``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import spikingformer as sf
from spikingformer.data import DataError, balanced_split, holdout_name
from spikingformer.data import load_raw
from spikingformer.nn.fast import FastPath
from spikingformer.train.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10_speedrun.yaml"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class SpeedrunConfig:
    model: str = "spikingformer_4_384"
    model_args: dict = field(default_factory=dict)
    holdout: int = 5000
    seed: int = 0
    batch_size: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.06
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    crop_padding: int = 4
    hflip: bool = True
    amp: str = "auto"
    fast: str = "auto"  # spikingformer.nn.fast: compile, channels-last, fused AdamW (auto: on CUDA)
    compile_mode: str = ""  # "" | reduce-overhead (CUDA graphs) | max-autotune ... (spikingformer.nn.fast.COMPILE_MODES)
    lif_backend: str = "auto"  # auto (triton when compiled on CUDA) | torch | triton
    eval_batch_size: int = 1000
    max_epochs: int = 40
    time_budget_min: float = 10.0

    def __post_init__(self):
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if min(self.holdout, self.batch_size, self.eval_batch_size, self.max_epochs) < 1 or self.time_budget_min <= 0:
            raise ValueError("holdout, batch_size, eval_batch_size, max_epochs and time_budget_min must be positive")


def load_images(root: Path, limit: int, seed: int, workers: int = 8):
    """Decode the class-folder tree into ``uint8 [N, 3, H, W]`` and ``int64 [N]`` (optionally a balanced subset)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    tree = load_raw("folder", str(root)).train  # validates the layout, lists files in sorted order
    indices = list(range(len(tree.samples)))
    if 0 < limit < len(indices):
        indices = balanced_split(tree.targets, limit, seed)[1]

    def decode(i):
        with Image.open(tree.samples[i][0]) as im:
            return np.asarray(im.convert("RGB"))

    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(decode, indices))  # Pillow releases the GIL while decoding
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SystemExit(f"error: images under {root} must all have one size, found {sorted(shapes)[:4]}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([tree.targets[i] for i in indices])
    return x, y, tree.classes


def augment(x: torch.Tensor, pad: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop from a reflect-padded copy, then horizontal flip: a whole uint8 batch at once, on its device."""
    b, c, h, w = x.shape
    x = x.float()
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b, 1, 1, 1), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b, 1, 1, 1), device=x.device, generator=gen)
        rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(b, c, h, w + 2 * pad)
        cols = (dx + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(b, c, h, w)
        x = xp.gather(2, rows).gather(3, cols)
    if hflip:
        flip = torch.rand(b, device=x.device, generator=gen) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    return x


class Normalize:
    """uint8-range floats -> normalized model input, laid out as the fast path wants it."""

    def __init__(self, device: torch.device, path: FastPath):
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        self.path = path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.path.to_input((x - self.mean) / self.std)


def lr_at(cfg: SpeedrunConfig, step: int, warmup_steps: int, progress: float) -> float:
    """Linear warm-up over steps, times a cosine over the run's progress (time or steps, whichever is further)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


@torch.no_grad()
def evaluate(model, x, y, cfg: SpeedrunConfig, norm: Normalize) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy; eager model (a compiled eval graph would cost its own compile)."""
    model.eval()
    correct = torch.zeros((), device=x.device)
    loss = torch.zeros((), device=x.device)
    for i in range(0, len(y), cfg.eval_batch_size):
        xb, yb = norm(x[i:i + cfg.eval_batch_size].float()), y[i:i + cfg.eval_batch_size]
        with norm.path.autocast(x.device):
            logits = model(xb).float()
        correct += (logits.argmax(1) == yb).sum()
        loss += F.cross_entropy(logits, yb, reduction="sum")
    model.train()
    return correct.item() / len(y), loss.item() / len(y)


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["minutes"] for r in records], [100 * r["val_acc"] for r in records], "o-")
    ax.axhline(90, color="gray", ls="--", lw=1)
    ax.set(xlabel="wall-clock minutes (after loading the JPEGs)", ylabel="top-1 accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: SpeedrunConfig, data: Path, out: Path, limit: int = 0, device: str = "auto") -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    on_cuda = dev.type == "cuda"
    t_load = time.time()
    x, y, classes = load_images(data, limit, cfg.seed)
    rest, held = balanced_split(y.tolist(), cfg.holdout, cfg.seed)
    val_name = holdout_name(cfg.holdout, len(y), cfg.seed) + (f" (of a {limit}-image subset)" if limit else "")
    xtr, ytr = x[rest].to(dev), y[rest].to(dev)
    xva, yva = x[held].to(dev), y[held].to(dev)
    load_seconds = time.time() - t_load

    torch.manual_seed(cfg.seed)
    model = sf.create_model(cfg.model, **{"num_classes": len(classes), "img_size": x.shape[-1], **cfg.model_args})
    model.to(dev)
    from timm.optim import param_groups_weight_decay

    path = FastPath.from_modes(cfg.fast, cfg.amp, dev, cfg.compile_mode, cfg.lif_backend)
    fast = path.prepare(model)
    opt = path.adamw(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    norm = Normalize(dev, path)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    steps_per_epoch = len(ytr) // cfg.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"error: {len(ytr)} training images cannot fill one batch of {cfg.batch_size}")
    max_steps, warmup_steps = cfg.max_epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    budget = cfg.time_budget_min * 60
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, T={model.T}) on {dev}, "
          f"{len(ytr)} train images, {val_name}; loaded in {load_seconds:.1f} s; budget {cfg.time_budget_min} min "
          f"or {cfg.max_epochs} epochs", flush=True)

    records, step, eval_seconds, stop = [], 0, 0.0, None
    t0 = time.time()
    with open(out / "metrics.jsonl", "w") as log:
        while stop is None:
            perm = torch.randperm(len(ytr), device=dev, generator=gen)
            loss_sum, done = torch.zeros((), device=dev), 0
            for i in range(steps_per_epoch):
                # Leave room for the final evaluation inside the budget.
                progress = max((time.time() - t0 + eval_seconds) / budget, step / max_steps)
                if progress >= 1:
                    stop = "time budget" if step < max_steps else "max_epochs"
                    break
                lr = lr_at(cfg, step, warmup_steps, progress)
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                xb = norm(augment(xtr[idx], cfg.crop_padding, cfg.hflip, gen))
                path.step_begin()
                with path.autocast(dev):
                    loss = F.cross_entropy(fast(xb), ytr[idx], label_smoothing=cfg.label_smoothing)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
                step, done = step + 1, done + 1
            if done == 0:
                break
            t_eval = time.time()
            acc, val_loss = evaluate(model, xva, yva, cfg, norm)  # .item() inside: the GPU has caught up
            eval_seconds = time.time() - t_eval
            minutes = (time.time() - t0) / 60
            rec = {"epoch": round(step / steps_per_epoch, 3), "step": step, "minutes": round(minutes, 3),
                   "train_loss": loss_sum.item() / done, "val_acc": acc, "val_loss": val_loss, "lr": lr,
                   "train_images_per_s": step * cfg.batch_size / max(time.time() - t0, 1e-9), "val_split": val_name}
            records.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"epoch {rec['epoch']:6.2f}  {minutes:6.2f} min  train_loss {rec['train_loss']:.4f}  "
                  f"val_acc {100 * acc:.2f} %  lr {lr:.2e}", flush=True)
            if step >= max_steps:
                stop = "max_epochs"
    minutes = (time.time() - t0) / 60
    first_90 = next((r["minutes"] for r in records if r["val_acc"] >= 0.9), None)
    summary = {"val_acc": records[-1]["val_acc"] if records else None,
               "best_val_acc": max((r["val_acc"] for r in records), default=None),
               "minutes": minutes, "minutes_to_90": first_90, "epochs": step / steps_per_epoch, "steps": step,
               "stopped_by": stop, "load_seconds": load_seconds, "val_split": val_name, "train_images": len(ytr),
               "device": torch.cuda.get_device_name(dev) if on_cuda else "cpu", "torch": torch.__version__,
               "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if records:
        changed = f" {cfg.model_args}" if cfg.model_args else ""  # a smoke-test model must not pass for the real one
        plot(records, out / "val_acc.png", f"{cfg.model}{changed} T={model.T}, CIFAR-10 JPEG, {summary['device']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder holding train/<class>/*.jpg")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"YAML (default {DEFAULT_CONFIG.name})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--time-budget-min", type=float, help="wall-clock budget in minutes (config: time_budget_min)")
    p.add_argument("--max-epochs", type=int, help="epoch cap (config: max_epochs)")
    p.add_argument("--limit", type=int, default=0, help="use a class-balanced subset of N images (smoke tests)")
    p.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--out", type=Path, default=Path("runs/cifar10_speedrun"), help="output folder")
    args = p.parse_args(argv)
    sets = list(args.set)
    if args.time_budget_min is not None:
        sets.append(f"time_budget_min={args.time_budget_min}")
    if args.max_epochs is not None:
        sets.append(f"max_epochs={args.max_epochs}")
    try:
        cfg = load_config(args.config, sets, cls=SpeedrunConfig)
    except ValueError as e:
        p.error(str(e))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    try:
        s = train(cfg, args.data, args.out, args.limit, args.device)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reached = f"reached 90 % after {s['minutes_to_90']:.2f} min" if s["minutes_to_90"] else "did not reach 90 %"
    print(f"\n{s['val_split']}: final top-1 {100 * (s['val_acc'] or 0):.2f} % (best "
          f"{100 * (s['best_val_acc'] or 0):.2f} %) after {s['minutes']:.2f} min, {s['epochs']:.1f} epochs, "
          f"stopped by {s['stopped_by']}; {reached}; -> {args.out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
