"""The options several commands share, spelled once: which model and weights, its options, its input, a run's
config.  Every parser of the command line is built from these and the commands' own options."""
from __future__ import annotations

import argparse

from ..train.config import parse_overrides
from ..utils.errors import InputError


def add_input_args(p: argparse.ArgumentParser) -> None:
    """The options ``energy`` and ``verify`` share: which model, which weights, which input."""
    p.add_argument("--model", metavar="NAME|FILE.py:FACTORY",
                   help="a name from `spikingformer models` / list_models(), or a models.text name; optional "
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
    bad = [item for item in args.model_kwargs if not item.partition("=")[0] or "=" not in item]
    if bad:
        raise InputError(f"--model-kwargs expects KEY=VALUE, got {bad[0]!r}")
    out = parse_overrides(args.model_kwargs)  # as --set reads its values: YAML
    own = {k: v for k, v in (("T", args.t), ("num_classes", args.num_classes)) if v is not None}
    both = sorted(set(out) & set(own))
    if both:
        raise InputError(f"--model-kwargs sets {both}, which --T / --num-classes set too: give each once")
    return {**out, **own}


def add_readout_arg(p: argparse.ArgumentParser) -> None:
    """``--readout NAME``, shared with ``energy``."""
    p.add_argument("--readout", metavar="NAME", action="append",
                   help="module that is the model's read-out head, exempt from the verdict as Eq. 20 exempts it "
                        "(repeatable; default: our ClassifierHead, or the last synaptic layer if a pooling or "
                        "mean feeds it)")


def add_run_args(parser, config_help: str, required: bool = True) -> None:
    """The options every training command shares: ``--config``, ``--set`` (repeatable), ``--resume``, ``--json``."""
    parser.add_argument("--config", required=required, metavar="FILE|RECIPE",
                        help=f"{config_help}, or a shipped recipe's name (`spikingformer recipes` lists them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable); values are parsed as YAML")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the config's output folder from last.pt (starts fresh if none) "
                             "with the run's own config: a key given another value (by --set or by the config file) "
                             "is refused, except those that may change on resume (workers, device, output, ...); "
                             "train and pretrain record their --set options, which need not be repeated")
    parser.add_argument("--json", metavar="FILE", help="also write the run's summary (summary.json) to FILE")
