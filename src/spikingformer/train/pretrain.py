"""MAE-style self-supervised pre-training of Spikformer V2: ``spikingformer pretrain`` (V2 §4.2, §5.2).

``run(cfg)`` pre-trains a ``SpikformerV2MAE`` (``spikingformer.models.mae``) on a dataset's
images (labels ignored) with the classifier engine's pieces: ``build_data``, timm's AdamW and
cosine schedule with warm-up (``engine.build_training``), the fast path, DDP under ``torchrun``,
atomic resumable checkpoints.  Masks are drawn from a generator seeded by ``(seed, step, rank)``,
so a run killed at any point and resumed with ``--resume`` sees the masks it would have seen.
Each epoch appends the masked-patch loss (train, and on the held-out split with fixed masks,
beside the trivial baseline of predicting each patch's mean) to ``metrics.jsonl``, redraws
``metrics.png`` and ``reconstruction.png`` (original / masked / reconstruction, as Fig. 8).

``load_pretrained_encoder(model, path)`` then puts the encoder into a Spikformer V2 classifier
for fine-tuning.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.mae import MAEConfig, SpikformerV2MAE
from ..nn.fast import FastPath
from ..utils.errors import ConfigError, InputError
from ..utils.outputs import pyplot, save_figure, write_json
from ..weights import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, session
from .engine import Progress, build_training, checkpointer, load_data, make_loaders, seed_all, train_epochs
from .records import MetricsLog
from .run import Trainer, open_output

__all__ = ["PretrainConfig", "IMAGE_DATASETS", "run", "load_pretrained_encoder", "masked_loss", "save_reconstructions"]

KIND = "spikformer_v2_mae"  # meta["kind"] of a pre-training checkpoint
IMAGE_DATASETS = ("cifar10", "cifar100", "folder", "digits")  # static images: their pixels are the target


@dataclass
class PretrainConfig(TrainConfig):
    """``TrainConfig``'s data, optimizer, schedule and engine keys, the V2 §5.2 recipe as defaults,
    and the MAE keys.  ``model_args.T`` sets the encoder's time steps (default 1, as the paper)."""
    model: str = "spikformer_v2_8_512"
    scale: tuple[float, float] = (0.2, 1.0)   # MAE's random-resized-crop range
    smoothing: float = 0.0
    lr: float = 1e-3
    epochs: int = 200
    warmup_epochs: int = 20
    cooldown_epochs: int = 0
    output: str = "runs/pretrain"
    # --- MAE (V2 §4.2)
    mask_ratio: float = 0.75
    decoder_dim: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def validate(self) -> None:
        super().validate()
        if self.dataset not in IMAGE_DATASETS:
            raise ConfigError(f"MAE pre-training reconstructs the pixels of static images; dataset must be one of "
                              f"{', '.join(IMAGE_DATASETS)}, got {self.dataset!r}")
        label_only = {"mixup": self.mixup, "cutmix": self.cutmix, "mixup_off_epoch": self.mixup_off_epoch,
                      "smoothing": self.smoothing}
        used = sorted(k for k, v in label_only.items() if v)
        if used:
            raise ConfigError(f"{used} act on labels, which self-supervised pre-training does not use: set them to 0")
        if self.layer_decay:
            raise ConfigError("layer_decay is for fine-tuning a pre-trained encoder (spikingformer train "
                              "--set init_from=...); pre-training trains every layer at lr: set it to 0")
        if self.init_from:
            raise ConfigError("init_from starts a classifier from a pre-trained encoder (spikingformer train); "
                              "to continue a pre-training run use --resume")
        if "num_classes" in self.model_args:
            raise ConfigError("model_args.num_classes makes no sense in pre-training (the encoder has no head)")
        try:
            self.mae_config()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def mae_config(self, in_chans: int | None = None) -> MAEConfig:
        args = dict(self.model_args)
        T = args.pop("T", 1)
        if self.img_size:
            args["img_size"] = self.img_size
        if in_chans is not None:
            if args.get("in_chans", in_chans) != in_chans:
                raise InputError(f"model_args.in_chans={args['in_chans']} but the dataset has {in_chans} channels")
            args["in_chans"] = in_chans
        return MAEConfig(self.model, args, T, self.mask_ratio, self.decoder_dim, self.decoder_depth,
                         self.decoder_heads, norm_pix_loss=self.norm_pix_loss)


def mask_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The masks of one batch depend on ``(seed, step, rank)`` only: not on the global RNG, workers or resumes."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


@torch.no_grad()
def masked_loss(model: SpikformerV2MAE, loader, device, path: FastPath | None = None, seed: int = 0) -> dict:
    """Masked-patch loss over ``loader`` with fixed masks (batch ``i`` uses ``mask_generator(seed, i)``),
    and the loss of the trivial prediction ``0`` (each patch's own mean, with ``norm_pix_loss``)."""
    path = path or FastPath.off()
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for i, (x, _) in enumerate(loader):
        x = path.to_input(x.to(device, non_blocking=True))
        path.step_begin()
        with path.autocast(device):
            out = model(x, generator=mask_generator(seed, i))
        baseline = model.loss(x, torch.zeros_like(out.pred), out.visible)
        sums += torch.stack([out.loss.double() * len(x), baseline.double() * len(x),
                             torch.tensor(float(len(x)), dtype=torch.float64, device=device)])
    loss, base, n = all_reduce_sum(sums).tolist()
    if n == 0:
        raise RuntimeError("the validation split is empty")
    return {"val_loss": loss / n, "val_baseline_loss": base / n}


@torch.no_grad()
def save_reconstructions(model: SpikformerV2MAE, images: torch.Tensor, mean, std, path: Path, seed: int = 0,
                         title: str = "") -> None:
    """A PNG of (original, masked, reconstruction) triplets, one row per image (V2 Fig. 8)."""
    plt = pyplot()
    model.eval()
    masked, recon = model.reconstruct(images, generator=mask_generator(seed, 0))
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    columns = [(t * s + m).clamp(0, 1).cpu() for t in (images, masked, recon)]
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        for j, name in enumerate(("original", "masked", "reconstruction")):
            img = columns[j][i]
            axes[i, j].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None,
                              interpolation="nearest")
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


class PretrainLog(MetricsLog):
    """``metrics.jsonl`` and a ``metrics.png`` of the masked-patch loss (train, held-out, trivial baseline)."""

    def write(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        from matplotlib.ticker import MaxNLocator

        plt = pyplot()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "metrics.jsonl", history, lines=True)
        ep = [h["epoch"] for h in history]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train (random masks)")
        ax.plot(ep, [h["val_loss"] for h in history], "s-", label="held-out (fixed masks)")
        ax.plot(ep, [h["val_baseline_loss"] for h in history], "k--", label="predict each patch's mean")
        ax.set(xlabel="epoch", ylabel="MSE on masked patches", title=self.title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, self.out / "metrics.png")


def masked_patch_loss(cfg: PretrainConfig, state: Progress, info: DistInfo):
    """``step_loss`` of pre-training (``engine.train_one_epoch``): the MAE loss with this step's masks."""
    def step_loss(model, x, _labels):
        return model(x, generator=mask_generator(cfg.seed, state.global_step, info.rank)).loss, None
    return step_loss


def run(cfg: PretrainConfig, resume: bool = False, overrides: dict | None = None) -> dict:
    """Pre-train ``cfg`` to the end (or continue ``cfg.output``'s run with ``resume``); return the summary.
    ``overrides`` and stopping early: as ``train.run``."""
    with session(cfg.device) as info:
        return _run(cfg, resume, info, overrides or {})


def _run(cfg: PretrainConfig, resume: bool, info: DistInfo, overrides: dict) -> dict:
    t_start = time.time()
    run = Trainer(cfg, info, resume, overrides)
    seed_all(cfg.seed, info.rank)
    data = load_data(cfg, info)
    mae_cfg = cfg.mae_config(data.in_chans)
    fast = run.prepare(SpikformerV2MAE(mae_cfg))
    model = run.model
    sampler, train_loader, val_loader = make_loaders(cfg, data, info)
    opt, sched, _, _ = build_training(cfg, model, sampler.steps_per_epoch, run.path.fused_optimizer)
    resumed = run.start(opt, sched)
    state = Progress() if resumed is None else Progress(**resumed["progress"])
    log = PretrainLog(run.out, enabled=info.is_main, title=f"{cfg.model} MAE pre-training on {cfg.dataset}")
    log.restore(state.history)
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.parameters()) - n_enc
    run.meta = {"kind": KIND, "model": cfg.model, "encoder_args": mae_cfg.encoder_args, "T": mae_cfg.T,
                "img_size": data.img_size, "mean": list(data.mean), "std": list(data.std)}
    picks = range(0, len(data.val), max(1, len(data.val) // 6))[:6]  # spread over the split (and its classes)
    samples = torch.stack([data.val[i][0] for i in picks]).to(info.device)
    if info.is_main:
        where = open_output(run.out, cfg, resumed is not None, state)
        print(f"{cfg.model} MAE: encoder {n_enc / 1e6:.2f}M + decoder {n_dec / 1e6:.2f}M params, T={mae_cfg.T}, "
              f"mask {cfg.mask_ratio:.0%}, {len(data.train)} train images; {info.world} process(es) on "
              f"{info.device}, {run.path.describe()}; {where}", flush=True)
    save = checkpointer(run, state)
    train_epochs(run, state, sampler, train_loader, save, lambda: masked_patch_loss(cfg, state, info),
                 lambda loss, _acc: {"train_loss": loss},
                 lambda: masked_loss(fast, val_loader, info.device, run.path, cfg.seed),
                 functools.partial(_end_epoch, run, state, log, save, samples, data), data.val_name, t_start)
    final = state.history[-1]
    summary = {"model": cfg.model, "encoder_params": n_enc, "decoder_params": n_dec, "dataset": cfg.dataset,
               "val_split": data.val_name, "final_train_loss": final["train_loss"], "final_val_loss": final["val_loss"],
               "val_baseline_loss": final["val_baseline_loss"], "epochs": cfg.total_epochs,
               "steps": state.global_step, "world_size": info.world, "device": str(info.device),
               "seconds": time.time() - t_start, "checkpoint": str(run.last), "config": cfg.to_dict()}
    log.summary(summary)
    return summary


def _end_epoch(run: Trainer, state: Progress, log: PretrainLog, save, samples: torch.Tensor, data,
               metrics: dict) -> None:
    """After an epoch: ``last.pt``, the logs, ``reconstruction.png`` of the held-out ``samples``."""
    save()
    log.write(state.history)
    if run.info.is_main:
        save_reconstructions(run.model, samples, data.mean, data.std, run.out / "reconstruction.png",
                             run.cfg.seed, f"epoch {metrics['epoch']}, held-out images")
        print(f"epoch {metrics['epoch']}/{run.cfg.total_epochs}  lr {metrics['lr']:.2e}  train_loss "
              f"{metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f} (baseline "
              f"{metrics['val_baseline_loss']:.4f})  ({metrics['epoch_seconds']:.1f} s)", flush=True)


def load_pretrained_encoder(model: nn.Module, path: str | Path, state: dict | None = None) -> dict:
    """Load the encoder of a pre-training checkpoint (``last.pt`` of ``spikingformer pretrain``) into a
    Spikformer V2 classifier from ``create_model`` (same name and architecture ``model_args``; T and
    ``num_classes`` may differ).  Every backbone key must be present with its shape; the head keeps
    its initialisation.  ``state``: the checkpoint, when the caller has read it already.  Returns what
    was loaded: ``{"source", "model", "loaded", "head"}``."""
    state = ckpt.load_checkpoint(path) if state is None else state
    meta = state.get("meta", {})
    weights = state.get("model") if meta.get("kind") == KIND else None
    if not isinstance(weights, dict):
        raise ckpt.CheckpointError(f"{path} is not a Spikformer V2 MAE pre-training checkpoint "
                                   f"(meta kind {meta.get('kind')!r}, expected {KIND!r})")
    encoder = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    head = ckpt.load_backbone(model, encoder, f"{path} (pre-trained {meta.get('model')} {meta.get('encoder_args')})")
    return {"source": str(path), "model": meta.get("model"), "loaded": len(encoder), "head": head}


# ----------------------------------------------------------------------------- command line
