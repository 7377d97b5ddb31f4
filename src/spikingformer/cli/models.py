"""``spikingformer models`` and ``recipes``: the named models (parameters, spike-driven verdict) and the shipped
paper recipes."""
from __future__ import annotations

import argparse
import itertools
import sys
import textwrap

import torch

from ..analysis.probe import SynapticProbe, verdict
from ..models import create_model, list_models, model_modality, paper_facts
from ..train.config import TrainConfig, from_dict, list_recipes, recipe_dir, resolve_config_path
from ..train.glue import GlueConfig
from ..train.mlm import MLMConfig
from ..train.pretrain import PretrainConfig
from ..utils.errors import ConfigError, InputError, MissingDependency
from ..utils.outputs import check_output, write_json
from .args import add_time_steps_arg

def _cmd_models(args: argparse.Namespace) -> int:
    if args.t < 1 or args.batch_size < 1:
        raise InputError(f"--T and --batch-size must be >= 1, got --T {args.t} --batch-size {args.batch_size}")
    check_output("--json", args.json)
    torch.manual_seed(args.seed)
    rows = []
    names = list_models(args.pattern, "vision") + list_models(args.pattern, "text")  # the vision ones first
    if not names:
        raise InputError(f"no model matches {args.pattern!r}; available: "
                         f"{', '.join(list_models(modality='vision') + list_models(modality='text'))}")
    print(f"{'model':28s} {'params':>10s} {'paper':>8s} {'input':>12s}  {'spike-driven':16s}  "
          "(layers not fed spikes)")
    for name in names:
        # train mode: batch statistics, with which BN at initialisation makes the neurons fire
        try:
            model = create_model(name, T=args.t).train()
        except MissingDependency as e:  # an optional package's model: listed, not built
            print(f"{name:28s} {'-':>10s} {'-':>8s} {'-':>12s}  {'-':16s}  ({e})", flush=True)
            continue
        if model_modality(name) == "text":  # random token ids, every one a real token (no [PAD])
            size = [min(64, model.cfg.max_len)]
            ids = torch.randint(model.cfg.pad_id + 1, model.cfg.vocab_size, (args.batch_size, *size))
            inputs, shown = dict(input_ids=ids), f"{size[0]} tokens"
        else:
            size = list(model.default_input_size)
            inputs, shown = dict(x=torch.randn(args.batch_size, *size)), "x".join(map(str, size))
        n_params = sum(p.numel() for p in model.parameters())
        with SynapticProbe(model, provenance=True) as probe, torch.no_grad():
            model(**inputs)
        row = dict(model=name, params=n_params, paper_params_M=paper_facts(name).params_M, input_size=size, T=args.t,
                   encoding_layer=probe.encoding_layer.name if probe.encoding_layer else None, **probe.verdict())
        rows.append(row)
        paper = f"{row['paper_params_M']:.2f}M" if row["paper_params_M"] else "-"
        said = verdict(probe.spike_driven, row["proven"])
        named = row["non_spike_layers"] or row["unproven_layers"]
        print(f"{name:28s} {n_params / 1e6:9.2f}M {paper:>8s} {shown:>12s}  {said:16s}  "
              f"{f'({len(named)} layers)' if named else ''}", flush=True)
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    if args.name:  # print one, to copy and edit: spikingformer recipes cifar10 > mine.yaml
        sys.stdout.write(resolve_config_path(args.name, files=False).read_text())
        return 0
    print(f"{'recipe':26s} {'command':9s} what")
    for name in list_recipes():
        text = (recipe_dir() / f"{name}.yaml").read_text()
        lines = itertools.takewhile(lambda s: s.startswith("#"), text.splitlines())
        header = " ".join(line.lstrip("# ") for line in lines).split(". ")[0]
        print(f"{name:26s} {_recipe_command(text):9s} {textwrap.shorten(header, 80, placeholder=' ...')}")
    print(f"\n(in {recipe_dir()}; `spikingformer COMMAND --config NAME` runs one, `spikingformer recipes NAME` "
          "prints it)")
    return 0


def _recipe_command(text: str) -> str:
    """The command whose config class takes every key of a recipe (the speed run's is a benchmark's)."""
    import yaml


    data = yaml.safe_load(text)
    for command, cls in (("train", TrainConfig), ("pretrain", PretrainConfig), ("mlm", MLMConfig),
                         ("glue", GlueConfig)):
        try:
            from_dict(cls, data)
            return command
        except (ConfigError, ValueError):
            continue
    return "benchmark"


def register(sub) -> None:
    p = sub.add_parser("models",
                       help="list every named model with its parameter count and spike-driven verdict",
                       description="Build every named model, vision and text (or those matching PATTERN), print "
                                   "its parameter count beside the paper's, and probe one forward pass on random "
                                   "input (images, or token ids) to say whether every synaptic layer after the "
                                   "encoding layer receives only spikes: 'yes, proven' when each is also built to (0/1 "
                                   "for any input and weights), 'NO' when one received something else, "
                                   "'yes on this data' when none did but some are not built to.")
    p.add_argument("pattern", nargs="?", default=None, help="shell glob over model names, e.g. 'spikingformer_*'")
    add_time_steps_arg(p, "time steps T of the probe pass (default 1: fast)", default=1)
    p.add_argument("--batch-size", type=int, default=2, help="batch size of the probe pass (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and input (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("recipes", help="list the shipped paper recipes (YAML configs), or print one",
                       description="The recipes of configs/ ship with the package: `--config NAME` of train, "
                                   "pretrain, mlm, glue, eval, energy and verify takes a recipe's name as well as "
                                   "a file. Without NAME, list them; with NAME, print that YAML, e.g. "
                                   "`spikingformer recipes cifar10 > mine.yaml` to edit a copy.")
    p.add_argument("name", nargs="?", default=None, help="a recipe to print, e.g. cifar10")
    p.set_defaults(func=_cmd_recipes)
