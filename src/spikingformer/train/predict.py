"""``spikingformer predict``: classify image files (or event recordings) with a trained model, as timm's
``inference.py``.

The checkpoint says how its images were read: a run's ``best.pt``/``last.pt`` (or a ``.safetensors``
exported from one) holds the model, its class names, normalisation, size and evaluation transform.
A run trained on an event dataset (``nmnist``, ``dvs128_gesture``, ``cifar10_dvs``) classifies single-sample
recordings of it instead, integrated into frames as its evaluation integrates them, and also reports the
top-1 after each time step.  Other weights (a state_dict, official weights) need ``--config``, a recipe that
names them; their classes are then numbered, or named by ``--classes FILE`` (one name per line).  Files whose true
class is known (``true_labels``: class folders, an N-MNIST label list) are scored too: top-1, top-5 and count.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data import DataError, sample_names
from ..data.events import (
    SAMPLE_READERS,
    SENSOR_SIZE,
    EventFrames,
    nmnist_label_list,
    not_a_sample,
    read_sample,
    time_major,
)
from ..data.sources import DATASET_STATS, load_rgb
from ..data.transforms import eval_transform
from ..models import model_modality
from ..utils.errors import ConfigError, InputError
from ..utils.outputs import write_csv, write_json
from ..utils.progress import progress_bar
from ..weights.loading import read_weights
from .config import TrainConfig, from_dict, load_config, parse_overrides
from .distributed import resolve_device
from .evaluation import read_outs
from .runs import asked_options, eval_path, run_config

__all__ = ["Predictor", "InputFiles", "load_predictor", "input_files", "find_inputs", "true_labels",
           "prediction_record", "accuracy", "split_records", "write_prediction_csv", "write_predictions"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class InputFiles:
    """The files a model classifies (``input_files``), and how one becomes what its transform takes."""
    dataset: str                           # the one the model was trained on
    noun: str                              # one such file, in messages: "image", "nmnist recording"
    suffixes: tuple[str, ...]              # searched for in folders
    load: Callable[[str], object]          # a file -> the transform's input: a PIL image, a recording's events
    stack: Callable[[list], torch.Tensor]  # transformed samples -> a batch as the model takes it
    events: bool = False                   # event recordings: read by suffix, top-1 reported after each step

    def refusal(self, path: Path) -> str | None:
        """Why ``path`` is not such a file, judged by its suffix (``None`` if it may be one): an event recording is
        read as its suffix says; an image is decoded by its content, so any suffix may do but an event recording's."""
        if self.events:
            return not_a_sample(self.dataset, path)
        if any(path.suffix.lower() in readers for readers in SAMPLE_READERS.values()):
            return (f"{path} is an event recording: a model trained on {self.dataset} classifies images "
                    f"({', '.join(self.suffixes)})")
        return None


def input_files(dataset: str) -> InputFiles:
    """What a model trained on ``dataset`` classifies: single-sample recordings of an event dataset, else images."""
    if dataset in SAMPLE_READERS:
        return InputFiles(dataset, f"{dataset} recording", tuple(SAMPLE_READERS[dataset]),
                          functools.partial(read_sample, dataset), time_major, events=True)
    return InputFiles(dataset, "image", IMAGE_SUFFIXES, load_rgb, torch.stack)


@dataclass
class Predictor:
    model: nn.Module   # in eval mode, on ``device``, laid out as ``path`` runs it
    name: str
    classes: list[str]
    transform: object  # the run's evaluation transform: a PIL image (any mode) -> normalised RGB tensor [C, H, W],
                       # or for an event model a recording's events -> frames [T, 2, H, W] (data.events.EventFrames)
    device: torch.device
    path: object       # evaluation.eval_path: the run's precision and neurons on this device
    files: InputFiles  # what it classifies, and how a file is read

    def __call__(self, x: torch.Tensor, k: int = 5) -> list[list[tuple[str, int, float]]]:
        """Top-``k`` ``(class, index, probability)`` of each sample of a batch: images ``[B, C, H, W]``, or event
        frames ``[T, B, 2, H, W]`` (``files.stack``)."""
        return self.classify(x, k)[0]

    @torch.no_grad()
    def classify(self, x: torch.Tensor, k: int = 5) -> tuple[list, list | None]:
        """``(top, steps)``: ``self(x, k)``, and for an event model each sample's top-1 ``(class, probability)``
        after each time step (the read-out of steps ``1..t``, ``forward_steps``: how early the decision is made),
        from one pass of the model; ``None`` for images."""
        with self.path.autocast(self.device):
            x = self.path.to_input(x.to(self.device))
            logits, steps = read_outs(self.model, x) if self.files.events else (self.model(x), None)
        probs, idx = logits.float().softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
        top = [[(self.classes[i], i, p) for i, p in zip(row_i.tolist(), row_p.tolist())]
               for row_i, row_p in zip(idx, probs)]
        if steps is None:
            return top, None
        best_p, best_i = steps.float().softmax(-1).max(-1)  # [T, B]
        return top, [[(self.classes[i], p) for i, p in zip(col_i.tolist(), col_p.tolist())]
                     for col_i, col_p in zip(best_i.T, best_p.T)]


def load_predictor(checkpoint: str, recipe: str | None = None, classes_file: str | None = None,
                   device: str = "cpu", sets: list[str] = ()) -> Predictor:
    """The model of ``checkpoint`` in eval mode on ``device``, with the transform its run evaluated with;
    ``sets``: ``--set KEY=VALUE`` overrides of that config and model, as ``eval`` takes them (e.g. another T)."""
    advice = "add --config RECIPE, e.g. --config cifar10"
    given = parse_overrides(list(sets))
    # a recipe's model may be chosen by --set model=, as with eval --config; a run's checkpoint names its own
    weights = read_weights(checkpoint, given.get("model") if recipe else None, load_config(recipe) if recipe else None,
                           unnamed=f"{checkpoint} names neither its model nor how its images were read: {advice}")
    name, build = weights.name, weights.info
    if model_modality(name) == "text":
        raise InputError(f"{checkpoint} holds the text model {name}; predict classifies image files")
    if not build.get("config"):
        raise InputError(f"{checkpoint} does not record how its images were read (size, normalisation): {advice}")
    try:  # the recorded config alone: a bad --set is named as such below, not as another kind of checkpoint
        from_dict(TrainConfig, build["config"], f"{checkpoint} config")
    except ConfigError as e:
        raise InputError(f"{checkpoint} is not a classifier trained by `spikingformer train` ({e})") from None
    cfg, margs = run_config(checkpoint, name, build.get("model_args", {}), build["config"], sets, source=recipe or "")
    files = input_files(cfg.dataset)
    if cfg.dataset not in DATASET_STATS and not files.events:  # digits' 8x8 tensors: no files to classify
        if recipe:
            raise InputError(f"recipe {recipe} reads {cfg.dataset}, not image files or event recordings")
        raise InputError(f"{checkpoint} was trained on {cfg.dataset}, not on image files or event recordings; "
                         f"`spikingformer eval --checkpoint {checkpoint}` evaluates it on its validation split")
    asked = asked_options(given)
    model = weights.build(margs, asked)
    # what the run recorded of its images, but for what the command line sets anew (mean, std, img_size)
    data = {**build.get("data", {}), **{k: getattr(cfg, k) for k in ("mean", "std", "img_size") if k in given}}
    n = model.cfg.num_classes
    classes = _class_names(classes_file, n) if classes_file else data.get("classes") or [str(i) for i in range(n)]
    if len(classes) != n:
        raise InputError(f"{len(classes)} class names for a model with {n} classes")
    # the size eval reads the data at: a --set img_size or model_args.img_size, else the run's
    size = asked.get("img_size") or data.get("img_size") or model.cfg.img_size
    # a recording becomes frames as in eval's batch (data._event_splits): at the T of the model that runs
    transform = (EventFrames(model.cfg.T, cfg.split_by, SENSOR_SIZE[cfg.dataset], size) if files.events
                 else _image_transform(cfg, data, size))
    dev = resolve_device(device)
    path = eval_path(cfg, dev)
    return Predictor(path.prepare(model.to(dev)), name, list(classes), transform, dev, path, files)


def _image_transform(cfg, data: dict, size: int):
    """The run's evaluation transform at ``size``, normalised as the run (or the command line) says."""
    from torchvision.transforms import Compose


    mean, std = DATASET_STATS[cfg.dataset]
    mean, std = data.get("mean") or cfg.mean or mean, data.get("std") or cfg.std or std
    return Compose([_to_rgb, eval_transform(cfg, size, mean, std)])


def _class_names(path: str, n: int) -> list[str]:
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"--classes {path}: {e.strerror}") from None
    if len(names) != n:
        raise InputError(f"--classes {path} names {len(names)} classes; the model has {n}")
    return names


def find_inputs(inputs: list[str], files: InputFiles) -> list[Path]:
    """The files given, and those under the folders given with a suffix of ``files`` (recursively, sorted); a
    file given that ``files`` refuses (``InputFiles.refusal``) is an error."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in files.suffixes and p.is_file())
        elif item.is_file():
            why = files.refusal(item)
            if why:
                raise InputError(why)
            found.append(item)
        else:
            raise FileNotFoundError(f"no such {files.noun} file or folder: {item}")
    if not found:
        raise FileNotFoundError(f"no {files.noun}s ({', '.join(files.suffixes)}) in {', '.join(inputs)}")
    return list(dict.fromkeys(found))  # a file named twice (or as itself and in its folder) once


def true_labels(paths: list[Path], files: InputFiles, classes: list[str]) -> dict[int, str]:
    """The true class of each file (by its index in ``paths``) that says it: an N-MNIST recording listed in the
    one ``'#sample #class'`` list (*.txt) beside it, or a file in a class folder (``DIR/<class>/FILE``) named as
    one of the model's ``classes`` (N-MNIST's official ``Test/<digit>/``, the CIFAR-10 JPEG copy's layout)."""
    listed = {}
    if files.dataset == "nmnist":
        for folder in {p.parent for p in paths}:
            lists = sorted(folder.glob("*.txt"))
            if len(lists) == 1:
                listed.update({f.resolve(): str(c) for _, f, c in nmnist_label_list(lists[0])})
    out = {i: listed.get(p.resolve(), p.parent.name) for i, p in enumerate(paths)}
    return {i: c for i, c in out.items() if c in classes}


def prediction_record(where: str | int, top: list[tuple[str, int, float]], label: str | None = None,
                      keep: int | None = None) -> dict:
    """One sample's prediction as ``predict`` and ``eval --predictions`` write it: its file (``path``) or
    position in the split (``index``); with its true class ``label``, whether the top-1 is it (``correct``)
    and whether it is among the top 5 (``in_top5``); and the first ``keep`` of its ``top`` classes, best
    first, as ``{class, index, prob}``."""
    rec = {"path" if isinstance(where, str) else "index": where}
    if label is not None:
        names = [c for c, _, _ in top]
        rec.update(label=label, correct=names[0] == label, in_top5=label in names[:5])
    rec["top"] = [{"class": c, "index": j, "prob": p} for c, j, p in top[:keep]]
    return rec


def accuracy(records: list[dict]) -> dict | None:
    """Top-1, top-5 and their count over the ``records`` with a true class (``None`` if none has one)."""
    labelled = [r for r in records if "label" in r]
    if not labelled:
        return None
    n = len(labelled)
    return {"top1": sum(r["correct"] for r in labelled) / n, "top5": sum(r["in_top5"] for r in labelled) / n,
            "count": n}


def write_prediction_csv(path, records: list[dict]) -> None:
    """One row per record: path (or index), with true classes label, correct and in_top5 (1/0: their means are
    the top-1 and top-5), a regression's predicted score (GLUE's STS-B: ``glue.records``), then class_1,
    prob_1, ... (``metrics.write_csv``)."""
    where = "path" if "path" in records[0] else "index"
    fields = [f for f in ("label", "correct", "in_top5", "score") if any(f in r for r in records)]
    k = max(len(r.get("top", ())) for r in records)

    def cell(r: dict, f: str):
        return "" if f not in r else int(r[f]) if isinstance(r[f], bool) else r[f]  # 1/0: their mean is a rate

    write_csv(path, [where, *fields] + [f"{c}_{j}" for j in range(1, k + 1) for c in ("class", "prob")],
              ([r[where], *(cell(r, f) for f in fields)]
               + [v for t in r.get("top", ()) for v in (t["class"], f"{t['prob']:.6f}")] for r in records))


def split_records(data, order: list[int], batches: list) -> list[dict]:
    """A ``prediction_record`` per sample of ``data.val`` (``data.build_data`` / ``build_test``), by index, from
    the top-5 batches ``evaluation.evaluate`` recorded for the samples ``order`` lists."""
    names = sample_names(data.val)
    tops, probs, labels = (torch.cat(t).tolist() for t in zip(*batches))
    out = {i: prediction_record(names[i] if names else i, [(data.classes[j], j, p) for j, p in zip(top, prob)],
                                data.classes[label])
           for i, top, prob, label in zip(order, tops, probs, labels)}
    return [out[i] for i in sorted(out)]


def write_predictions(path: str, records: list[dict], about: dict) -> None:
    """``records`` as CSV (``write_prediction_csv``) or, for a ``.json`` path, ``{**about, "predictions": ...}``."""
    if str(path).lower().endswith(".json"):
        write_json(path, {**about, "predictions": records})
    else:
        write_prediction_csv(path, records)


def _to_rgb(image):
    """Grayscale, palette and RGBA images as the RGB the models were trained on."""
    return image.convert("RGB")


class _Samples(torch.utils.data.Dataset):
    """``(index, tensor or None, why not)``: an unreadable or malformed file is reported, not fatal to the others."""

    def __init__(self, paths: list[Path], load: Callable, transform):
        self.paths, self.load, self.transform = paths, load, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(self.load(str(self.paths[i]))), ""
        except DataError as e:
            return i, None, str(e)


def _collate(items, stack: Callable):
    good = [(i, x) for i, x, _ in items if x is not None]
    return [i for i, _ in good], stack([x for _, x in good]) if good else None, [
        (i, why) for i, x, why in items if x is None]


def predict_files(pred: Predictor, inputs: list[str], topk: int, batch_size: int,
                  workers: int = 0) -> tuple[list[dict], list[dict]]:
    """``(records, skipped)``: a ``prediction_record`` per readable file of ``inputs`` (files or folders), in file
    order, with the top class after each time step where the model gives it, and the files that could not be read
    with why.  Labelled files (``true_labels``) record their class, for ``accuracy``."""
    paths = find_inputs(inputs, pred.files)  # which files, and read how, the model's training says
    loader = torch.utils.data.DataLoader(_Samples(paths, pred.files.load, pred.transform), batch_size,
                                         num_workers=workers, collate_fn=functools.partial(_collate,
                                                                                            stack=pred.files.stack))
    labels = true_labels(paths, pred.files, pred.classes)
    tops, steps, skipped = {}, {}, []
    for good, x, bad in progress_bar(loader, "predict"):
        if good:
            top, per_step = pred.classify(x, max(topk, 5))  # top-5 for the accuracy of labelled files
            tops.update(zip(good, top))
            steps.update(zip(good, per_step or []))
        skipped += [{"path": str(paths[i]), "error": why} for i, why in bad]
    records = [{**prediction_record(str(paths[i]), top, labels.get(i), topk),
                **({"per_step": [[c, p] for c, p in steps[i]]} if i in steps else {})}
               for i, top in sorted(tops.items())]
    return records, skipped
