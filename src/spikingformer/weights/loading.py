"""A model and example inputs from a name or a checkpoint, for ``spikingformer energy`` and ``verify``.

``prepare(args)`` is the one place that turns the shared command-line options
(``add_input_args``) into ``(model, batches)``, for every kind of model a run can produce:

- vision classifiers (``spikingformer train``), by ``--model`` name or from a checkpoint; with
  ``--data`` a class-folder image directory, or, for a run's checkpoint (or weights with a ``--config``
  recipe), the root of its dataset: the stored config rebuilds its validation split through
  ``spikingformer.data`` with its evaluation transform (event data: real frames ``[T, B, 2, H, W]``);
- text models (``spikingformer mlm`` / ``glue`` checkpoints, or a text model's registry name): with
  ``--data`` the run's own evaluation sequences (GLUE: the split ``glue`` evaluated on, rebuilt
  from the stored config with ``--data`` as its ``data_dir``; MLM: masked blocks of the corpus file
  ``--data``), else a seeded batch of random token ids of ``--seq-len`` tokens.

Text batches are dicts of ``SpikingformerText.forward`` keyword arguments; ``run_model`` hides
the difference from the counting code.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import load_weights, state_mismatch
from .official import check_family, check_recorded
from .user_model import build_user_model, declared_input_size, is_spec

__all__ = ["Prepared", "add_input_args", "prepare", "resolve", "build_model", "load_model", "load_into",
           "run_model", "load_checkpoint", "calibrate_bn"]

Batch = Tensor | dict


@dataclass
class Prepared:
    model: nn.Module
    batches: list[Batch]
    name: str                       # the model's registry name, or its import spec (``user_model``)
    unit: str = "image"             # what one sample is: "image" or "sequence" (figures are per unit)
    input: str = ""                 # what the model is fed, for the report's first line
    notes: list[str] = field(default_factory=list)
    sample: str = ""                # which samples of which data (``data.split.split_sample``), for the report


def run_model(model: nn.Module, x: Batch | tuple | list):
    """``model(x)``: a text batch is a dict of keyword inputs; an ``(x, y)`` pair contributes its ``x``."""
    x = x[0] if isinstance(x, (tuple, list)) else x
    return model(**x) if isinstance(x, dict) else model(x)


def load_checkpoint(model: nn.Module, path: str, state: dict | None = None, name: str | None = None,
                    build: dict | None = None) -> nn.Module:
    """Load the weights of ``path`` (any format ``checkpoint.load_weights`` reads, or ``state``
    already read from it) into ``model`` (``name``: how errors call the model).  ``build``: what the
    file says of its model (``load_weights``); if they do not fit, the options it records that ``model``
    has otherwise are named as the cause."""
    if state is None:
        state, build = load_weights(path)
    build = build or {}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        other = _other_options(model, {**build.get("model_args", {}), **build.get("recorded", {})})
        cause = (f"the file records a {build.get('model') or 'model'} with {other}" if other
                 else "wrong model, or other model options (its size: depth, dim, num_heads? classes, T? "
                      "every command sets them with --model-kwargs depth=... dim=...)")
        raise ValueError(f"checkpoint {path} does not fit {name or type(model).__name__}: {cause}; "
                         f"{state_mismatch(model.state_dict(), state) or e}") from e
    check_recorded(model, path, build.get("recorded", {}), name)
    return model


def _other_options(model: nn.Module, options: dict) -> str:
    """The ``options`` (a file's record of its model's) that ``model``'s config holds otherwise, as
    "dim=32 (this model: 256)"."""
    cfg = getattr(model, "cfg", None)

    def plain(v):  # a config's tuples are lists in a file's JSON
        return json.loads(json.dumps(v, default=str))
    return ", ".join(f"{k}={v!r} (this model: {getattr(cfg, k)!r})" for k, v in sorted(options.items())
                     if hasattr(cfg, k) and plain(getattr(cfg, k)) != plain(v))


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: list[Batch]) -> nn.Module:
    """Give an untrained model BN running statistics from ``batches`` (train-mode passes), then ``eval()``.

    At initialisation the running statistics are 0/1 and most neurons of an eval-mode
    model never fire, which would make every energy figure meaningless.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    for x in batches:
        run_model(model, x)
    return model.eval()


def add_input_args(p: argparse.ArgumentParser) -> None:
    """The options ``energy`` and ``verify`` share: which model, which weights, which input."""
    p.add_argument("--model", metavar="NAME|FILE.py:FACTORY",
                   help="a name from `spikingformer models` / list_models(), vision or text; optional "
                        "with a --checkpoint from a training run, which names its model. Or your own model: "
                        "path/to/file.py:FACTORY or package.module:CALLABLE, called with --model-kwargs (and --T, "
                        "--num-classes when given); importing it runs that file's code. Its input: [B, C, H, W] "
                        "images of the size it declares (a default_input_size = (C, H, W) attribute, or timm's "
                        "pretrained_cfg), else --in-chans x --input-size; energy reads T from its T attribute")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="a run's best.pt/last.pt (train, mlm or glue: its model options are reused), a state_dict "
                        "saved with torch.save (.pt/.pth) or .safetensors; without it the model has random weights "
                        "and every figure is for an untrained model")
    p.add_argument("--num-classes", type=int, help="classifier size, to match a checkpoint (default: the model's)")
    add_time_steps_arg(p, "time steps T (default: the model's)")
    add_model_kwargs_arg(p)
    p.add_argument("--data", metavar="PATH",
                   help="real input. A run's checkpoint (or weights with --config): the dataset root; the "
                        "config rebuilds the validation split with its transform (images, or event frames). Otherwise "
                        "a class-folder image directory (torchvision ImageFolder), resized and normalised with "
                        "ImageNet mean/std. GLUE checkpoint: the GLUE data_dir; the split the "
                        "run evaluated on is rebuilt. MLM checkpoint: a text corpus file, cut into masked blocks. "
                        "Default: random N(0,1) images or random token ids, whose firing rates are not those of "
                        "real data")
    p.add_argument("--config", metavar="FILE|RECIPE",
                   help="vision weights that are not a run's checkpoint: a YAML recipe (a file, or a shipped recipe's "
                        "name such as cifar10) whose dataset, split and evaluation transform --data is read with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --data read as a run's config or --config recipe says: override one key of how it is "
                        "read (repeatable), e.g. holdout=100 or limit_val=500; model options go in --model-kwargs")
    p.add_argument("--vocab", metavar="FILE", help="text models with --data: the WordPiece vocabulary "
                   "(default: the one the checkpoint's run used)")
    p.add_argument("--batches", type=int, default=1,
                   help="number of batches to run (default 1); with --data they hold a seeded, class-balanced sample "
                        "of --batches x --batch-size images of it (all of it if that is more), named in the report")
    p.add_argument("--batch-size", type=int, default=2, help="images or sequences per batch (default 2)")
    p.add_argument("--input-size", type=int, metavar="H", help="square image size (default: the model's)")
    p.add_argument("--in-chans", type=int, metavar="C",
                   help="image channels of a --model FILE.py:FACTORY that does not declare its input size (default 3)")
    p.add_argument("--seq-len", type=int, default=64,
                   help="tokens per random sequence for text models without --data (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for weights, random input and the sample of --data (default 0)")


def resolve(checkpoint: str | None, model: str | None, recipe: str | None = None,
            unnamed: str = "give --model, or a --checkpoint written by a training run or `spikingformer export` "
                           "(which names its model)") -> tuple[dict | None, dict, str]:
    """``(state, build, name)``: the weights of ``checkpoint`` (None without one), what the file says of
    its model (``checkpoint.load_weights``; for a bare state_dict the classifier size read from its head)
    and the model name, from ``model`` or the file; a contradiction between them is an error, and so is
    no name at all (``unnamed`` says what to do).  A ``recipe`` (YAML config) stands in for a run's
    config: model name and options, data reading."""
    from ..train.config import load_config

    cfg = load_config(recipe) if recipe else None  # as in `eval --config`: the recipe decides how --data is read
    # the name asked for tells apart the official layouts whose tensor names are the same
    own = is_spec(model)  # a user's model: its keys are its own, whatever they look like
    state, build = load_weights(checkpoint, model or (cfg and cfg.model), official=not own) if checkpoint \
        else (None, {})
    if state is not None and "head.fc.weight" in state and "model_args" not in build and not own:
        # a bare state_dict says its classifier size; --num-classes still wins
        build = {**build, "model_args": {"num_classes": state["head.fc.weight"].shape[0]}}
    if cfg:
        margs = {**cfg.model_args, **({"img_size": cfg.img_size} if cfg.img_size else {}),
                 **build.get("model_args", {})}
        build = {**build, "config": cfg.to_dict(), "model_args": margs}
        model = model or cfg.model
    name = model or build.get("model")
    if not name and build.get("official"):  # no name asked for: the official run's training args may give one
        name, build = _recorded_model(build, checkpoint)
    if not name:
        raise ValueError(unnamed)
    if build.get("model") not in (None, name):  # the command line may not silently rebuild another model
        raise ValueError(f"{checkpoint} holds a {build['model']}, not a {name}")
    check_family(name, build.get("official"), checkpoint)
    return state, build, name


def _recorded_model(build: dict, source) -> tuple[str | None, dict]:
    """The named model, and its options, that official weights' training args record (``official.recorded_model``)."""
    from .official import recorded_model

    try:
        found = recorded_model(build["official"], build.get("recorded", {}))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if found is None:
        return None, build
    name, options = found
    notes = [*build.get("notes", []), f"model {name} {options}, as the checkpoint's training args record it"]
    return name, {**build, "notes": notes, "model_args": {**options, **build.get("model_args", {})}}


def _create(name: str, **kw) -> nn.Module:
    """A registered model (vision or text) by name, or a user's model by its import spec ``FILE.py:FACTORY`` /
    ``MODULE:CALLABLE`` (``user_model``)."""
    from .. import create_model

    return build_user_model(name, **kw) if is_spec(name) else create_model(name, **kw)


def load_into(model: nn.Module, path: str, state: dict, build: dict, name: str | None = None) -> nn.Module:
    """Load ``state`` into ``model`` (folded first when the file holds the deployed form); returns the
    model that holds the weights."""
    if build.get("folded"):
        from ..deploy.fold import fold_bn

        model = fold_bn(model)
    return load_checkpoint(model, path, state, name, build)


def build_model(checkpoint: str, model: str | None = None, overrides: dict | None = None, **resolve_kw):
    """``(model, name, model_args, notes, build)`` with the weights of ``checkpoint`` loaded, in eval mode
    (``build``: what the file says of the model; ``resolve``)."""
    state, build, name = resolve(checkpoint, model, **resolve_kw)
    margs = {**build.get("model_args", {}), **(overrides or {})}
    net = load_into(_create(name, **margs), checkpoint, state, build, name).eval()
    return net, name, margs, list(build.get("notes", [])), build


def load_model(checkpoint: str, model: str | None = None, **overrides) -> nn.Module:
    """The model of ``checkpoint``, weights loaded, in eval mode: a ``train``, ``mlm`` or ``glue`` run's
    ``best.pt``/``last.pt`` or a ``.safetensors`` from ``spikingformer export`` rebuild the model they
    record; a bare state_dict or official weights need its registry name ``model`` (and the options it
    was built with), or a user's model its import spec ``FILE.py:FACTORY`` (``user_model``).
    ``overrides``: model options, e.g. ``T=8``."""
    unnamed = f"{checkpoint} does not name its model: pass load_model(path, model='spikingformer_...', **options)"
    return build_model(checkpoint, model, overrides, unnamed=unnamed)[0]


def prepare(args: argparse.Namespace) -> Prepared:
    """Build the model ``args`` describe, load its weights and make its input batches."""
    from ..models import list_models, model_modality

    if args.batches < 1 or args.batch_size < 1:
        raise ValueError("--batches and --batch-size must be >= 1")
    if args.input_size is not None and args.input_size < 1:
        raise ValueError(f"--input-size must be >= 1, got {args.input_size}")
    torch.manual_seed(args.seed)
    state, build, name = resolve(args.checkpoint, args.model, getattr(args, "config", None))
    # both kinds are accepted here, so both are listed
    if not is_spec(name) and name not in list_models():
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models(modality='vision'))}; "
                         f"text models: {', '.join(list_models(modality='text'))}")
    prep = _text(args, name, build) if model_modality(name) == "text" else _vision(args, name, build)
    prep.notes += build.get("notes", [])
    if args.checkpoint:
        prep.model = load_into(prep.model, args.checkpoint, state, build, name).eval()
    else:
        calibrate_bn(prep.model, prep.batches)
        prep.notes.append("random weights (no --checkpoint): figures are for an untrained model "
                          "(BN statistics calibrated on the input so that neurons fire)")
    return prep


def add_model_kwargs_arg(p: argparse.ArgumentParser, as_set: bool = False) -> None:
    """``--model-kwargs KEY=VALUE ...``, every command's spelling of model options.  ``as_set``: for the commands
    whose config holds them (eval, predict), each becomes ``--set model_args.KEY=VALUE``."""
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   action=_ModelKwargsAsSet if as_set else "store",
                   help="model options, as timm's train.py takes them: depth=2 dim=256 T=8 (values read as YAML); "
                        "for weights that do not record them, e.g. a state_dict of another size" +
                        (", or to run at another T (the same as --set model_args.KEY=VALUE)" if as_set else ""))


class _ModelKwargsAsSet(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if not v.partition("=")[0] or "=" not in v]
        if bad:
            raise argparse.ArgumentError(self, f"expects KEY=VALUE, got {bad[0]!r}")
        setattr(namespace, "set", [*(getattr(namespace, "set", None) or []), *(f"model_args.{v}" for v in values)])


def add_time_steps_arg(p: argparse.ArgumentParser, help: str, default: int | None = None) -> None:
    """``--T``, the papers' name for the time steps (``args.t``); ``--t``, its old spelling, still reads."""
    p.add_argument("--T", dest="t", type=int, default=default, help=help)
    p.add_argument("--t", dest="t", type=int, default=default, help=argparse.SUPPRESS)


def model_overrides(args: argparse.Namespace) -> dict:
    """The model options a command line asks for: ``--model-kwargs``, then ``--T`` and ``--num-classes``."""
    import yaml

    out = {}
    for item in args.model_kwargs:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(raw)
    own = {k: v for k, v in (("T", args.t), ("num_classes", args.num_classes)) if v is not None}
    both = sorted(set(out) & set(own))
    if both:
        raise ValueError(f"--model-kwargs sets {both}, which --T / --num-classes set too: give each once")
    return {**out, **own}


# ---------------------------------------------------------------- vision

def _vision(args: argparse.Namespace, name: str, build: dict) -> Prepared:
    from ..data.sources import unread_data_note

    model = _create(name, **{**build.get("model_args", {}), **model_overrides(args)})
    c, h = _input_shape(model, name, args)
    config = build.get("config") or {}
    if args.set and not (args.data and config):
        raise ValueError("--set changes how --data is read by a run's config or a --config recipe: give both "
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
            raise ValueError(f"--data loads RGB images; {name} expects {c} input channels")
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
        raise ValueError(f"--in-chans must be >= 1, got {chans}")
    if declared is None:
        if args.input_size is None:
            raise ValueError(f"{name} does not declare its input size (a default_input_size = (C, H, W) attribute): "
                             f"give --input-size H (and --in-chans C, default 3)")
        return chans or 3, args.input_size
    if chans not in (None, declared[0]):
        raise ValueError(f"--in-chans {chans}: {name} takes {declared[0]}-channel images")
    return declared[0], declared[1]


def _run_val(args: argparse.Namespace, config: dict, model: nn.Module, size: int) -> tuple[list[Tensor], str, str]:
    """``(batches, split, sample)``: a seeded, class-balanced sample of ``--batches`` x ``--batch-size`` images of
    a validation split as a run (its stored config, or a ``--config`` recipe) reads it: its dataset format, split
    and evaluation transform (event data: frames at the model's ``T``); the split's name and the sample's."""
    from ..data import DataError, build_data
    from ..data.split import split_sample
    from ..train.config import TrainConfig, apply_overrides, from_dict, parse_overrides

    given = parse_overrides(args.set)
    if {"model", "model_args"} & set(given):
        raise ValueError("--set changes how --data is read; the model's options go in --model-kwargs and --T")
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

    from ..data.sources import DATASET_STATS, load_rgb
    from ..data.split import split_sample

    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data: no such directory: {root}")
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(*DATASET_STATS["folder"])])
    try:
        ds = datasets.ImageFolder(root, transform=tf, loader=load_rgb)  # an undecodable file: DataError
    except (FileNotFoundError, RuntimeError) as e:
        raise ValueError(f"--data {root} is not a class-folder image directory (root/CLASS/IMAGE): {e}") from e
    sample, named = split_sample(ds, n_batches * batch_size, seed)
    return [x for x, _ in torch.utils.data.DataLoader(sample, batch_size=batch_size)], f"{root}: {named}"


# ---------------------------------------------------------------- text

def _text(args: argparse.Namespace, name: str, build: dict) -> Prepared:
    from ..models import create_model

    if args.input_size is not None or getattr(args, "in_chans", None) or getattr(args, "config", None) or args.set:
        raise ValueError(f"--input-size, --in-chans, --config and --set are for image models; {name} reads token "
                         f"sequences (--seq-len, or --data with its run's checkpoint)")
    model = create_model(name, **{**build.get("model_args", {}), **model_overrides(args)})
    if args.data:
        batches, what = _text_data(args, build, model)
        return Prepared(model, batches, name, "sequence", what, [f"input: {what}"], what)
    n, vocab, pad = args.seq_len, model.cfg.vocab_size, model.cfg.pad_id
    if not 1 <= n <= model.cfg.max_len:
        raise ValueError(f"--seq-len {n} must be in 1..{model.cfg.max_len} (the model's max_len)")
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
    from ..data import glue as gdata
    from ..data import text as tdata
    from ..train import glue, mlm
    from ..train.config import from_dict

    config, task = build.get("config") or {}, build.get("task")
    if not config or not task:
        raise ValueError(f"--data with a text model needs an mlm/glue checkpoint (its config says how the "
                         f"data was read); {args.checkpoint or 'no --checkpoint'} has none")
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
