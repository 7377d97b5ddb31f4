"""A model and example inputs from the command line, for ``spikingformer energy`` and ``verify``.

``prepare(args)`` turns the shared options (``args.add_input_args``) into ``(model, batches)``, for every kind
of model a run can produce:

- vision classifiers (``spikingformer train``), by ``--model`` name or from a checkpoint; with ``--data`` a
  class-folder image directory, or, for a run's checkpoint (or weights with a ``--config`` recipe), the root
  of its dataset: the stored config rebuilds its validation split through ``spikingformer.data`` with its
  evaluation transform (event data: real frames ``[T, B, 2, H, W]``);
- text models (``spikingformer mlm`` / ``glue`` checkpoints, or a text model's name): with ``--data`` the run's
  own evaluation sequences (GLUE: the split ``glue`` evaluated on, rebuilt from the stored config with
  ``--data`` as its ``data_dir``; MLM: masked blocks of the corpus file ``--data``), else a seeded batch of
  random token ids of ``--seq-len`` tokens.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..analysis.batches import Batch, calibrate_bn
from ..data import DataError, build_data
from ..data import glue as gdata
from ..data import text as tdata
from ..data.sources import DATASET_STATS, load_rgb, unread_data_note
from ..data.split import split_sample
from ..models import list_models, model_modality
from ..train import glue, mlm
from ..train.config import TrainConfig, apply_overrides, from_dict, load_config, parse_overrides
from ..utils.errors import InputError
from ..weights.loading import create, read_weights
from ..weights.user_model import declared_input_size, is_spec
from .args import model_overrides


@dataclass
class Prepared:
    model: nn.Module
    batches: list[Batch]
    name: str                       # the model's registry name, or its import spec (``user_model``)
    unit: str = "image"             # what one sample is: "image" or "sequence" (figures are per unit)
    input: str = ""                 # what the model is fed, for the report's first line
    notes: list[str] = field(default_factory=list)
    sample: str = ""                # which samples of which data (``data.split.split_sample``), for the report


def prepare(args: argparse.Namespace) -> Prepared:
    """Build the model ``args`` describe, load its weights and make its input batches."""
    if args.batches < 1 or args.batch_size < 1:
        raise InputError("--batches and --batch-size must be >= 1")
    if args.input_size is not None and args.input_size < 1:
        raise InputError(f"--input-size must be >= 1, got {args.input_size}")
    torch.manual_seed(args.seed)
    recipe = load_config(args.config) if getattr(args, "config", None) else None
    weights = read_weights(args.checkpoint, args.model, recipe)
    name, build = weights.name, weights.info
    # both kinds are accepted here, so both are listed
    if not is_spec(name) and name not in list_models():
        raise InputError(f"unknown model {name!r}; available models: {', '.join(list_models(modality='vision'))}; "
                         f"text models: {', '.join(list_models(modality='text'))}")
    text = model_modality(name) == "text"
    if text and (args.input_size is not None or getattr(args, "in_chans", None) or getattr(args, "config", None)
                 or args.set):
        raise InputError(f"--input-size, --in-chans, --config and --set are for image models; {name} reads token "
                         f"sequences (--seq-len, or --data with its run's checkpoint)")
    if text and args.data and not (build.get("config") and build.get("task")):
        raise InputError(f"--data with a text model needs an mlm/glue checkpoint (its config says how the "
                         f"data was read); {args.checkpoint or 'no --checkpoint'} has none")
    options = model_overrides(args)
    model = (weights.build(options, options, "--model-kwargs") if args.checkpoint
             else create(name, **{**weights.model_args, **options}))
    prep = _text(args, name, build, model) if text else _vision(args, name, build, model)
    prep.notes += weights.notes
    if not args.checkpoint:
        calibrate_bn(prep.model, prep.batches)
        prep.notes.append("random weights (no --checkpoint): figures are for an untrained model "
                          "(BN statistics calibrated on the input so that neurons fire)")
    return prep


def _vision(args: argparse.Namespace, name: str, build: dict, model: nn.Module) -> Prepared:
    c, h = _input_shape(model, name, args)
    config = build.get("config") or {}
    if args.set and not (args.data and config):
        raise InputError("--set changes how --data is read by a run's config or a --config recipe: give both "
                         "--data and a run's checkpoint or --config")
    if args.data and config:
        batches, split, sample = _run_val(args, config, model, h)
        what = (f"event frames {tuple(batches[0].shape[2:])} x T={batches[0].shape[0]}" if batches[0].dim() == 5
                else f"images {tuple(batches[0].shape[1:])}")
        notes = [f"input: {split}"] + unread_data_note(config.get("dataset", ""), args.data)
        return Prepared(model, batches, name, "image", what, notes, sample)
    size = h if args.input_size is None else args.input_size
    if args.data:
        if c != 3:
            raise InputError(f"--data loads RGB images; {name} expects {c} input channels")
        batches, sample = _image_folder(args.data, size, args.batch_size, args.batches, args.seed)
        return Prepared(model, batches, name, input=f"images {(c, size, size)}", sample=sample)
    batches = [torch.randn(args.batch_size, c, size, size) for _ in range(args.batches)]
    return Prepared(model, batches, name, input=f"images {(c, size, size)}",
                    notes=["random N(0,1) input (no --data): firing rates are not those of real images"],
                    sample=f"random N(0,1) images, {args.batches} x {args.batch_size} (seed {args.seed})")


def _input_shape(model: nn.Module, name: str, args: argparse.Namespace) -> tuple[int, int]:
    """``(C, H)`` of the images ``model`` takes: as it declares them, else ``--in-chans`` and ``--input-size``."""
    declared, chans = declared_input_size(model), getattr(args, "in_chans", None)
    if chans is not None and chans < 1:
        raise InputError(f"--in-chans must be >= 1, got {chans}")
    if declared is None:
        if args.input_size is None:
            raise InputError(f"{name} does not declare its input size (a default_input_size = (C, H, W) attribute): "
                             f"give --input-size H (and --in-chans C, default 3)")
        return chans or 3, args.input_size
    if chans not in (None, declared[0]):
        raise InputError(f"--in-chans {chans}: {name} takes {declared[0]}-channel images")
    return declared[0], declared[1]


def _run_val(args: argparse.Namespace, config: dict, model: nn.Module, size: int) -> tuple[list[Tensor], str, str]:
    """``(batches, split, sample)``: a seeded, class-balanced sample of ``--batches`` x ``--batch-size`` images of
    a validation split as a run (its stored config, or a ``--config`` recipe) reads it: its dataset format, split
    and evaluation transform (event data: frames at the model's ``T``); the split's name and the sample's."""
    given = parse_overrides(args.set)
    if {"model", "model_args"} & set(given):
        raise InputError("--set changes how --data is read; the model's options go in --model-kwargs and --T")
    conf = dict(apply_overrides(config, given), data_dir=args.data, workers=0,
                model_args={**config.get("model_args", {}), "T": model.T})
    cfg = from_dict(TrainConfig, conf, f"{args.checkpoint} config")
    try:
        data = build_data(cfg, size)
    except DataError as e:  # a folder of validation images is the natural reading of --data: say what it is here
        raise DataError(f"{e} (with a run's checkpoint or --config, --data is the root of the {cfg.dataset} "
                        f"dataset it names, from which its validation split is rebuilt)") from None
    split = f"{cfg.dataset} {data.val_name}"
    sample, named = split_sample(data.val, args.batches * args.batch_size, args.seed)
    loader = torch.utils.data.DataLoader(sample, args.batch_size, collate_fn=data.collate)
    return [x for x, _ in loader], split, f"{split}: {named}"


def _image_folder(root: str, size: int, batch_size: int, n_batches: int, seed: int) -> tuple[list[Tensor], str]:
    """A seeded, class-balanced sample of ``n_batches`` x ``batch_size`` images of a class-folder tree, and its name."""
    from torchvision import datasets, transforms


    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data: no such directory: {root}")
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(*DATASET_STATS["folder"])])
    try:
        ds = datasets.ImageFolder(root, transform=tf, loader=load_rgb)  # an undecodable file: DataError
    except (FileNotFoundError, RuntimeError) as e:
        raise InputError(f"--data {root} is not a class-folder image directory (root/CLASS/IMAGE): {e}") from e
    sample, named = split_sample(ds, n_batches * batch_size, seed)
    return [x for x, _ in torch.utils.data.DataLoader(sample, batch_size=batch_size)], f"{root}: {named}"


def _text(args: argparse.Namespace, name: str, build: dict, model: nn.Module) -> Prepared:
    if args.data:
        batches, what = _text_data(args, build, model)
        return Prepared(model, batches, name, "sequence", what, [f"input: {what}"], what)
    n, vocab, pad = args.seq_len, model.cfg.vocab_size, model.cfg.pad_id
    if not 1 <= n <= model.cfg.max_len:
        raise InputError(f"--seq-len {n} must be in 1..{model.cfg.max_len} (the model's max_len)")
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(vocab - 1, (args.batch_size, n), generator=g)
        ids += (ids >= pad).long()  # uniform over every id but [PAD]: all tokens are real
        batches.append(dict(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool)))
    what = f"random token ids, {args.batch_size} x {args.batches} sequences of {n} tokens (seed {args.seed})"
    return Prepared(model, batches, name, "sequence", what,
                    [f"{what} (no --data): firing rates are not those of real text"], what)


def _text_data(args: argparse.Namespace, build: dict, model: nn.Module) -> tuple[list[dict], str]:
    """Real sequences: the split a GLUE run evaluated on, or masked blocks of a corpus for an MLM run."""
    config, task = build["config"], build["task"]  # prepare checked that the checkpoint has both
    vocab = args.vocab or config["vocab"]
    if task == "mlm":
        cfg = from_dict(mlm.MLMConfig, dict(config, vocab=vocab), f"{args.checkpoint} config")
        tok = tdata.WordPieceTokenizer(Path(vocab).expanduser())
        blocks = tdata.MLMBlocks(tdata.read_corpus(args.data, tok), cfg.block_len, tok, cfg.seed + 1, cfg.mask_prob)
        items = [blocks[i] for i in range(min(len(blocks), args.batch_size * args.batches))]
        batches = [{k: torch.stack([it[k] for it in items[s:s + args.batch_size]]) for k in
                    ("input_ids", "token_type_ids", "attention_mask")} for s in range(0, len(items), args.batch_size)]
        return batches, f"masked blocks of {cfg.block_len} tokens from {args.data} (the first {len(items)} of {len(blocks)})"
    cfg = from_dict(glue.GlueConfig, dict(config, vocab=vocab, data_dir=args.data), f"{args.checkpoint} config")
    tok = tdata.WordPieceTokenizer(Path(vocab).expanduser())
    _, split, ds = glue.glue_splits(cfg, gdata.get_task(task), tok).evals[0]
    n = min(len(ds), args.batch_size * args.batches)
    batches = []
    for s in range(0, n, args.batch_size):
        b = gdata.collate([ds[i] for i in range(s, min(n, s + args.batch_size))], tok.pad_id)
        b.pop("labels")
        batches.append(b)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    return batches, (f"the first {n} sequences of {split}, {real / n:.1f} real tokens each on average "
                     f"(padded to the longest in each batch: {padded / n:.1f}; pad positions are computed "
                     f"and counted)")
