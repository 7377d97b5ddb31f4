"""``spikingformer predict``: classify image files with a trained model, as timm's ``inference.py``.

The checkpoint says how its images were read: a run's ``best.pt``/``last.pt`` (or a ``.safetensors``
exported from one) holds the model, its class names, normalisation, size and evaluation transform.
Other weights (a state_dict, official weights) need ``--config``, a recipe that names them; their
classes are then numbered, or named by ``--classes FILE`` (one name per line).
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Predictor", "load_predictor", "find_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Predictor:
    model: nn.Module   # in eval mode, on ``device``, laid out as ``path`` runs it
    name: str
    classes: list[str]
    transform: object  # PIL image (any mode) -> normalised RGB tensor [C, H, W]: the run's evaluation transform
    device: torch.device
    path: object       # evaluation.eval_path: the run's precision and neurons on this device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, k: int = 5) -> list[list[tuple[str, int, float]]]:
        """Top-``k`` ``(class, index, probability)`` of each image of a batch ``[B, C, H, W]``."""
        with self.path.autocast(self.device):
            logits = self.model(self.path.to_input(images.to(self.device))).float()
        probs, idx = logits.softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
        return [[(self.classes[i], i, p) for i, p in zip(row_i.tolist(), row_p.tolist())]
                for row_i, row_p in zip(idx, probs)]


def load_predictor(checkpoint: str, recipe: str | None = None, classes_file: str | None = None,
                   device: str = "cpu", sets: list[str] = ()) -> Predictor:
    """The model of ``checkpoint`` in eval mode on ``device``, with the transform its run evaluated with;
    ``sets``: ``--set KEY=VALUE`` overrides of that config and model, as ``eval`` takes them (e.g. another T)."""
    from torchvision.transforms import Compose

    from .config import ConfigError, TrainConfig, from_dict, parse_overrides
    from .data.sources import DATASET_STATS
    from .data.transforms import eval_transform
    from .distributed import resolve_device
    from .evaluation import asked_options, eval_path, rebuild, run_config
    from .loading import resolve
    from .models.text import list_text_models

    advice = "add --config RECIPE, e.g. --config cifar10"
    given = parse_overrides(list(sets))
    # a recipe's model may be chosen by --set model=, as with eval --config; a run's checkpoint names its own
    state, build, name = resolve(checkpoint, given.get("model") if recipe else None, recipe,
                                 unnamed=f"{checkpoint} names neither its model nor how its images were read: {advice}")
    if name in list_text_models():
        raise ValueError(f"{checkpoint} holds the text model {name}; predict classifies image files")
    if not build.get("config"):
        raise ValueError(f"{checkpoint} does not record how its images were read (size, normalisation): {advice}")
    try:  # the recorded config alone: a bad --set is named as such below, not as another kind of checkpoint
        from_dict(TrainConfig, build["config"], f"{checkpoint} config")
    except ConfigError as e:
        raise ValueError(f"{checkpoint} is not a classifier trained by `spikingformer train` ({e})") from None
    cfg, margs = run_config(checkpoint, name, build.get("model_args", {}), build["config"], sets, source=recipe or "")
    if cfg.dataset not in DATASET_STATS:  # event recordings, or digits' 8x8 tensors: not image files
        if recipe:
            raise ValueError(f"recipe {recipe} reads {cfg.dataset}, not image files")
        raise ValueError(f"{checkpoint} was trained on {cfg.dataset}, not on image files; "
                         f"`spikingformer eval --checkpoint {checkpoint}` evaluates it on its validation split")
    asked = asked_options(given)
    model = rebuild(checkpoint, name, margs, state, build, asked).eval()
    # what the run recorded of its images, but for what the command line sets anew (mean, std, img_size)
    data = {**build.get("data", {}), **{k: getattr(cfg, k) for k in ("mean", "std", "img_size") if k in given}}
    n = model.cfg.num_classes
    classes = _class_names(classes_file, n) if classes_file else data.get("classes") or [str(i) for i in range(n)]
    if len(classes) != n:
        raise ValueError(f"{len(classes)} class names for a model with {n} classes")
    mean, std = DATASET_STATS[cfg.dataset]
    mean, std = data.get("mean") or cfg.mean or mean, data.get("std") or cfg.std or std
    # the size eval reads the data at: a --set img_size or model_args.img_size, else the run's
    size = asked.get("img_size") or data.get("img_size") or model.cfg.img_size
    transform = Compose([_to_rgb, eval_transform(cfg, size, mean, std)])
    dev = resolve_device(device)
    path = eval_path(cfg, dev)
    return Predictor(path.prepare(model.to(dev)), name, list(classes), transform, dev, path)


def _class_names(path: str, n: int) -> list[str]:
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise ValueError(f"--classes {path}: {e.strerror}") from None
    if len(names) != n:
        raise ValueError(f"--classes {path} names {len(names)} classes; the model has {n}")
    return names


def find_images(inputs: list[str]) -> list[Path]:
    """Image files given, and those under the folders given (recursively, sorted)."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"no such image file or folder: {item}")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return list(dict.fromkeys(found))  # a file named twice (or as itself and in its folder) once


def _to_rgb(image):
    """Grayscale, palette and RGBA images as the RGB the models were trained on."""
    return image.convert("RGB")


class _Images(torch.utils.data.Dataset):
    """``(index, image tensor or None, why not)``: an unreadable file is reported, not fatal to the others."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from .data import DataError
        from .data.sources import _load_rgb

        try:
            return i, self.transform(_load_rgb(str(self.paths[i]))), ""
        except DataError as e:
            return i, None, str(e)


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    return [i for i, _ in good], torch.stack([x for _, x in good]) if good else None, [
        (i, why) for i, x, why in items if x is None]


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .checkpoint import CheckpointError
    from .config import ConfigError, validate_device
    from .data import DataError
    from .metrics import check_output, output_path, write_json

    try:
        if args.topk < 1 or args.batch_size < 1:
            raise ValueError(f"--topk and --batch-size must be >= 1, got {args.topk} and {args.batch_size}")
        check_output("--json", args.json)
        check_output("--csv", args.csv)
        validate_device(args.device)
        paths = find_images(args.inputs)
        pred = load_predictor(args.checkpoint, args.config, args.classes, args.device, args.set)
        loader = torch.utils.data.DataLoader(_Images(paths, pred.transform), args.batch_size,
                                             num_workers=args.workers, collate_fn=_collate)
        tops, skipped = {}, []
        for good, x, bad in tqdm(loader, desc="predict", leave=False, disable=None):
            tops.update(zip(good, pred(x, args.topk) if good else []))
            skipped += [{"path": str(paths[i]), "error": why} for i, why in bad]
    except (CheckpointError, ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"skipped: {s['error']}", file=sys.stderr)
    if not tops:
        print(f"error: none of the {len(paths)} image(s) could be read", file=sys.stderr)
        return 2
    records = [{"path": str(paths[i]), "top": [{"class": c, "index": j, "prob": p} for c, j, p in top]}
               for i, top in sorted(tops.items())]
    for r in records:
        print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    if args.json:
        write_json(args.json, {"checkpoint": args.checkpoint, "model": pred.name, "predictions": records,
                               "skipped": skipped})
    if args.csv:
        k = min(args.topk, len(pred.classes))
        with open(output_path(args.csv), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [f"{c}_{j}" for j in range(1, k + 1) for c in ("class", "prob")])
            w.writerows([r["path"]] + [v for t in r["top"] for v in (t["class"], f"{t['prob']:.6f}")]
                        for r in records)
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify image files or folders with a trained model (top-k classes, JSON/CSV)",
        description="Classify images with a checkpoint: a run's best.pt/last.pt, or a .safetensors exported from "
                    "one, brings its model, class names and evaluation transform (resize, crop, normalise). Other "
                    "weights (a state_dict, official weights) need --config: the recipe names the model and how "
                    "images are read; classes are then numbered unless --classes names them. --set overrides a key of "
                    "that config as with eval, e.g. --set model_args.T=8 to predict at another T.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files, or folders searched recursively")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the trained weights")
    p.add_argument("--config", metavar="FILE|RECIPE", help="recipe for weights that are not a run's checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the run's config or of --config (repeatable), as eval takes it: "
                        "model_args.T=8 (predict at another T), img_size, mean, std, crop_pct, ...")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line, in the model's class order")
    p.add_argument("--topk", type=int, default=5, help="classes reported per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--json", metavar="FILE", help="also write every prediction as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write path, class_1, prob_1, ... as CSV")
    p.set_defaults(func=_cmd_predict)
