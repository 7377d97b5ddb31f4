"""The ``spikingformer`` command line: every parser and every printed report of the package lives in ``cli/``.

Each module of ``cli/`` adds its subcommands with ``register(subparsers)``; the library below raises
``UserError`` for what a user gave wrong, and ``main`` reports it once, as ``error: ...`` with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..utils.errors import UserError
from . import compare, demo, energy, export, predict, pretrain, text, train, verify
from . import eval as eval_
from . import models as models_

# in the order `spikingformer --help` lists them
_COMMANDS = (models_, compare, energy, verify, train, eval_, pretrain, text, export, predict, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikingformer",
        description="Spike-driven transformer SNNs: build, train (images, event recordings, text), pre-train, "
                    "evaluate and audit Spikingformer, Spikingformer-dagger and Spikformer V1/V2.")
    parser.add_argument("--version", action="version", version=f"spikingformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.register(sub)
    return parser


# What `pip install "spikingformer[train]"` adds (import names); the models alone need only torch.
_TRAIN_EXTRAS = ("torchvision", "timm", "yaml", "tqdm", "matplotlib", "sklearn", "safetensors")


# Commands that split their work over torchrun's processes; the others would each do all of it.
_DISTRIBUTED = ("train", "pretrain", "mlm", "glue")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("WORLD_SIZE", "").strip() not in ("", "1") and args.command not in _DISTRIBUTED:
        print(f"error: `spikingformer {args.command}` runs in one process; start it without torchrun "
              f"(torchrun is for {', '.join(_DISTRIBUTED)})", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (UserError, FileNotFoundError, FileExistsError) as e:  # what the user gave: a file, an option, a key
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in _TRAIN_EXTRAS:
            raise
        print(f"error: `spikingformer {args.command}` needs {e.name!r}, one of the training extras: "
              f"pip install \"spikingformer[train]\"", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `spikingformer recipes | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, FloatingPointError) as e:  # the machine or the run, not the code: a full disk, a diverged loss
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # safe_stop.RunInterrupted says what the run saved, and carries its exit code
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
