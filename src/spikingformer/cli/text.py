"""``spikingformer mlm`` and ``glue``: masked-LM pre-training and GLUE fine-tuning of the text Spikingformer."""
from __future__ import annotations

import argparse

from ..train.config import load_config
from ..train.glue import GlueConfig, run_glue
from ..train.mlm import MLMConfig, run_mlm
from ..utils.outputs import check_output
from .args import add_run_args


def register(sub) -> None:
    add_command(
        sub, "mlm", run_mlm, MLMConfig, "pre-train a text Spikingformer by masked language modelling",
        "Masked-LM pre-training (BERT recipe: 15 % of tokens chosen, 80/10/10 [MASK]/random/keep) of a "
        "models.text Spikingformer on contiguous token blocks of a text corpus; reports masked-token accuracy "
        "and loss on a held-out corpus beside the always-most-frequent-token baseline. Runs on CUDA with bf16 "
        "autocast and torch.compile by default when a GPU is present (config keys device, amp, fast). See "
        "configs/mlm_wikitext2.yaml.")
    add_command(
        sub, "glue", run_glue, GlueConfig, "fine-tune a text Spikingformer on a GLUE task",
        "Fine-tune on one GLUE task's train.tsv (--set task=sst2; cola, mrpc, stsb, qqp, mnli, qnli, rte, wnli), "
        "from an MLM checkpoint (--set init=runs/mlm/last.pt) or from scratch, and report every GLUE metric of "
        "the task (MCC, accuracy, F1, Pearson/Spearman) beside the majority-class baseline: on the official dev "
        "file(s) when DATA_DIR/TASK/dev.tsv exists (MNLI: dev_matched.tsv and dev_mismatched.tsv, both "
        "reported), else on a seeded held-out split of train (--set val_split=holdout forces it). Runs on CUDA "
        "with bf16 autocast and torch.compile by default when a GPU is present (config keys device, amp, "
        "fast). See configs/glue.yaml.")


def _cmd(runner, cls):
    def cmd(args: argparse.Namespace) -> int:
        check_output("--json", args.json)
        runner(load_config(args.config, args.set, cls=cls), resume=args.resume, json_path=args.json)
        return 0
    return cmd


def add_command(sub, name: str, runner, cls, helptext: str, description: str) -> None:
    """The ``mlm`` / ``glue`` subcommand: ``--config``, ``--set``, ``--resume``, ``--json`` (``add_run_args``)."""
    p = sub.add_parser(name, help=helptext, description=description + " Several GPUs: torchrun "
                       f"--nproc_per_node=N -m spikingformer.cli {name} ... (batch_size is the global batch).")
    add_run_args(p, "YAML file of config keys (default: built-in defaults)", required=False)
    p.set_defaults(func=_cmd(runner, cls))
