"""Language path: masked-LM pre-training (``spikingformer mlm``) and GLUE fine-tuning (``spikingformer glue``).

The paper (section "Natural Language Understanding", Table 4) pre-trains Spikingformer by
masked language modelling (Devlin et al. 2019) and fine-tunes it on GLUE at ``T = 4``.  Both
commands train a ``models.text`` model for a fixed number of optimizer steps with AdamW and a
linear warm-up followed by a linear or cosine decay to zero, evaluate every ``eval_every``
steps, and write ``last.pt`` (atomic, resumable with ``--resume``), ``metrics.jsonl`` /
``metrics.png`` and ``summary.json`` to ``output``.  The batch of step ``s`` and its masks
depend only on ``(seed, s)``, so a resumed run reproduces the uninterrupted one exactly.

Evaluation split (``val_split``, as the vision engine's): ``auto`` evaluates on the official
GLUE dev file(s) when ``data_dir/TASK/`` holds them (MNLI: ``dev_matched.tsv`` and
``dev_mismatched.tsv``, both reported, as ``_m`` / ``_mm``) and trains on all of ``train.tsv``;
without them, or with ``holdout``, a seeded class-balanced fraction of ``train.tsv`` is held out.
Every report names the split it used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import ConfigError, load_config
from .data import text as tdata
from .data.split import balanced_split
from .metrics import MetricsLog
from .models.text import SpikingformerText, create_text_model, list_text_models

__all__ = ["MLMConfig", "GlueConfig", "GlueSplits", "glue_splits", "run_mlm", "run_glue", "register_cli"]

SCHEDS = ("linear", "cosine")
VAL_SPLITS = ("auto", "holdout")
RESUME_MUTABLE = {"progress", "output"}  # may differ between a run and its resumption


@dataclass
class _Common:
    model: str = "spikingformer_text_2_128"   # a name of models.text.list_text_models()
    model_args: dict = field(default_factory=dict)  # TextConfig overrides (depth, dim, T, ...)
    vocab: str = "~/.cache/spikingformer/text/bert-base-uncased-vocab.txt"
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01        # on matrices and embeddings only (nanoGPT's rule)
    warmup_steps: int = 100
    steps: int = 1000                 # optimizer steps in the whole run
    sched: str = "linear"             # linear | cosine decay to 0 after the warm-up
    clip_grad: float = 1.0            # >0: clip the global gradient norm
    eval_every: int = 200             # evaluate and checkpoint every this many steps (and at the end)
    limit_val: int = 0                # >0: evaluate on the first this many held-out items only
    seed: int = 0
    output: str = "runs/text"
    progress: bool = True

    def __post_init__(self):
        checks = [
            (self.model in list_text_models(), f"model must be one of {', '.join(list_text_models())}, "
                                               f"got {self.model!r}"),
            (self.sched in SCHEDS, f"sched must be one of {', '.join(SCHEDS)}, got {self.sched!r}"),
            (self.steps >= 1 and self.eval_every >= 1 and self.batch_size >= 1,
             "steps, eval_every and batch_size must be >= 1"),
            (min(self.warmup_steps, self.limit_val) >= 0, "warmup_steps and limit_val must be >= 0"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MLMConfig(_Common):
    train_file: str = "~/.cache/spikingformer/text/wikitext-2-valid.tokens"
    val_file: str = "~/.cache/spikingformer/text/wikitext-2-test.tokens"  # "": hold out the corpus tail
    val_fraction: float = 0.05        # share of blocks held out (the last ones) when val_file is ""
    block_len: int = 64               # tokens per block, [CLS] and [SEP] included
    mask_prob: float = 0.15
    output: str = "runs/mlm"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_prob < 1 or not 0 < self.val_fraction < 1:
            raise ConfigError("mask_prob and val_fraction must lie in (0, 1)")


@dataclass
class GlueConfig(_Common):
    task: str = "sst2"                # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli
    data_dir: str = "~/.cache/spikingformer/glue"  # holds TASK/train.tsv (CoLA/, SST-2/, ...) and TASK/dev*.tsv
    init: str = ""                    # MLM checkpoint to start from; "": from scratch
    max_len: int = 128
    val_split: str = "auto"           # auto: official dev file(s) if present, else holdout | holdout: always
    holdout_fraction: float = 0.1     # seeded, class-balanced share of train.tsv held out for evaluation
    limit_train: int = 0              # >0: train on a seeded class-balanced subset of this size
    lr: float = 2e-4
    output: str = "runs/glue"

    def __post_init__(self):
        super().__post_init__()
        try:
            tdata.get_task(self.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.val_split not in VAL_SPLITS:
            raise ConfigError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {self.val_split!r}")
        if not 0 < self.holdout_fraction < 1 or self.limit_train < 0:
            raise ConfigError("holdout_fraction must lie in (0, 1) and limit_train be >= 0")


# ---------------------------------------------------------------- shared training loop

def _path(p: str) -> Path:
    return Path(p).expanduser()


def _optimizer(model: torch.nn.Module, cfg: _Common, total: int):
    params = list(dict(model.named_parameters()).values())  # tied weights once
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return max(0.0, 1 - frac) if cfg.sched == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _epoch_order(n: int, batch_size: int, seed: int, step: int) -> tuple[int, torch.Tensor]:
    """``(epoch, indices)`` of the batch of global ``step``: a seeded permutation per epoch, the last
    partial batch dropped.  A function of ``step`` alone, so a resumed run draws the same batches."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return epoch, perm[k * batch_size:(k + 1) * batch_size]


def _fit(cfg: _Common, model: SpikingformerText, meta: dict, batch_at: Callable[[int], dict],
         loss_fn: Callable, evaluate: Callable[[], dict], per_epoch: int, resume: bool) -> list[dict]:
    """Train ``cfg.steps`` steps; evaluate + checkpoint every ``eval_every``; return the history."""
    from tqdm import tqdm

    out = _path(cfg.output)
    log = MetricsLog(out, title=f"{type(cfg).__name__[:-6]} {cfg.model}")
    opt, sched = _optimizer(model, cfg, cfg.steps)
    step, history, last = 0, [], out / "last.pt"
    if resume and last.is_file():
        state = ckpt.load_checkpoint(last)
        stored = {k: v for k, v in state["config"].items() if k not in RESUME_MUTABLE}
        now = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE}
        changed = sorted(k for k in now if stored.get(k) != now[k])
        if changed:
            raise ConfigError(f"cannot resume {last}: config keys {changed} differ from the run's")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step, history = state["step"], state["history"]
        log.restore(history)
    sums = [0.0, 0]
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, disable=not cfg.progress,
               desc=out.name, dynamic_ncols=True)
    for step in bar:
        model.train()
        loss = loss_fn(model, batch_at(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        sched.step()
        sums[0] += loss.item()
        sums[1] += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            model.eval()
            with torch.no_grad():
                record = dict(epoch=round(done / per_epoch, 4), step=done, train_loss=sums[0] / sums[1],
                              **evaluate())
            history.append(record)
            sums = [0.0, 0]
            ckpt.save_checkpoint(dict(model=model.state_dict(), optimizer=opt.state_dict(),
                                      scheduler=sched.state_dict(), rng=ckpt.rng_state(), step=done,
                                      history=history, config=cfg.to_dict(), meta=meta), last)
            log.write(history)
            bar.write("step {step}: ".format(**record) + ", ".join(
                f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "step")))
    return history


def _finish(cfg: _Common, summary: dict, json_path: str | None) -> dict:
    MetricsLog(_path(cfg.output)).summary(summary)
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------- masked-LM pre-training

def run_mlm(cfg: MLMConfig, resume: bool = False, json_path: str | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    tok = tdata.WordPieceTokenizer(_path(cfg.vocab))
    stream = tdata.read_corpus(_path(cfg.train_file), tok)
    if cfg.val_file:
        val_stream, val_name = tdata.read_corpus(_path(cfg.val_file), tok), Path(cfg.val_file).name
    else:  # the tail, not random blocks: neighbouring text would leak into training
        cut = int(len(stream) * (1 - cfg.val_fraction))
        stream, val_stream = stream[:cut], stream[cut:]
        val_name = f"last {cfg.val_fraction:.0%} of {Path(cfg.train_file).name} (held out)"
    train = tdata.MLMBlocks(stream, cfg.block_len, tok, cfg.seed, cfg.mask_prob)
    val = tdata.MLMBlocks(val_stream, cfg.block_len, tok, cfg.seed + 1, cfg.mask_prob)
    n_val = min(len(val), cfg.limit_val or len(val))
    val_name += f": {n_val} of its {len(val)} blocks"
    model_args = dict(cfg.model_args, head="mlm", vocab_size=len(tok), pad_id=tok.pad_id)
    model = create_text_model(cfg.model, **model_args)
    if model.cfg.max_len < cfg.block_len:
        raise ConfigError(f"block_len {cfg.block_len} exceeds the model's max_len {model.cfg.max_len}")
    # Unigram baseline: always predict the corpus's most frequent ordinary token.
    counts = torch.bincount(stream, minlength=len(tok))
    counts[list(tok.special_ids)] = 0
    top = int(counts.argmax())

    def batch_at(step: int) -> dict:
        epoch, idx = _epoch_order(len(train), cfg.batch_size, cfg.seed, step)
        train.set_epoch(epoch)
        return _stack([train[int(i)] for i in idx])

    def loss_fn(model, b):
        x, _ = model.forward_features(b["input_ids"], b["token_type_ids"], b["attention_mask"])
        target = b["labels"] >= 0  # logits only where the loss looks: 15 % of the vocab-sized read-out
        return F.cross_entropy(model.head(x[:, target]), b["labels"][target])

    def evaluate() -> dict:
        loss, correct, hits, copies, n = 0.0, 0, 0, 0, 0
        for s in range(0, n_val, cfg.batch_size):
            b = _stack([val[i] for i in range(s, min(n_val, s + cfg.batch_size))])
            x, _ = model.forward_features(b["input_ids"], b["token_type_ids"], b["attention_mask"])
            target = b["labels"] >= 0
            logits, gold = model.head(x[:, target]), b["labels"][target]
            loss += float(F.cross_entropy(logits, gold, reduction="sum"))
            correct += int((logits.argmax(-1) == gold).sum())
            hits += int((gold == top).sum())
            copies += int((b["input_ids"][target] == gold).sum())
            n += len(gold)
        # copy_acc: echoing the visible input token scores on the 10 % of targets BERT leaves unmasked.
        return dict(val_loss=loss / n, val_acc=correct / n, val_ppl=math.exp(loss / n), unigram_acc=hits / n,
                    copy_acc=copies / n)

    meta = dict(model=cfg.model, model_args=dataclasses.asdict(model.cfg), task="mlm")
    history = _fit(cfg, model, meta, batch_at, loss_fn, evaluate, max(1, len(train) // cfg.batch_size), resume)
    summary = dict(command="mlm", model=cfg.model, params=sum(p.numel() for p in model.parameters()),
                   steps=cfg.steps, train_blocks=len(train), block_len=cfg.block_len, val_split=val_name,
                   val_blocks=n_val, masked_token_acc=history[-1]["val_acc"], masked_lm_loss=history[-1]["val_loss"],
                   unigram_baseline_acc=history[-1]["unigram_acc"], unigram_token=tok.inv_vocab[top],
                   copy_baseline_acc=history[-1]["copy_acc"],
                   checkpoint=str(_path(cfg.output) / "last.pt"))
    print(f"masked-token accuracy {summary['masked_token_acc']:.4f} (loss {summary['masked_lm_loss']:.3f}; "
          f"always {tok.inv_vocab[top]!r}: {summary['unigram_baseline_acc']:.4f}; copy the input token: "
          f"{summary['copy_baseline_acc']:.4f}) on {val_name}")
    return _finish(cfg, summary, json_path)


def _stack(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# ---------------------------------------------------------------- GLUE fine-tuning

def _load_backbone(model: SpikingformerText, state: dict, path: str) -> None:
    """Copy an MLM checkpoint's embedding and blocks into ``model`` (its head stays freshly initialised)."""
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: another vocabulary, width or max_len
        raise ckpt.CheckpointError(f"{path} does not fit {type(model).__name__}: {e}") from None
    bad = [k for k in missing if not k.startswith("head.")]
    if bad or unexpected:
        raise ckpt.CheckpointError(f"{path} does not fit {type(model).__name__} {model.cfg}: missing "
                                   f"{bad[:5]}, unexpected {unexpected[:5]}")


@dataclass
class GlueSplits:
    """The training examples and every evaluation split of one GLUE run."""

    train: tdata.GlueDataset
    evals: list[tuple[str, str, tdata.GlueDataset]]  # (metric suffix, name for reports, examples)

    @property
    def name(self) -> str:
        return "; ".join(name for _, name, _ in self.evals)


def glue_splits(cfg: GlueConfig, task: tdata.GlueTask, tok: tdata.WordPieceTokenizer) -> GlueSplits:
    """``cfg.val_split``: the official dev file(s) (``auto``, when present) or a seeded held-out share of train."""
    folder = _path(cfg.data_dir) / task.folder
    examples = tdata.read_glue(task, folder / "train.tsv")
    dev = tdata.official_dev_files(task, _path(cfg.data_dir)) if cfg.val_split == "auto" else None
    if dev:
        train_idx = list(range(len(examples)))
        evals = []
        for suffix, path in dev:
            held = tdata.read_glue(task, path)[:cfg.limit_val or None]
            evals.append((suffix, f"{path.stem} (official GLUE dev split, {len(held)} examples)", held))
    else:
        n_val = max(1, round(len(examples) * cfg.holdout_fraction))
        if task.is_regression:  # no classes to balance: a seeded permutation
            perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            train_idx, val_idx = sorted(perm[n_val:]), sorted(perm[:n_val])
        else:
            train_idx, val_idx = balanced_split([int(e.label) for e in examples], n_val, cfg.seed)
        val_idx = val_idx[:cfg.limit_val or len(val_idx)]
        why = "" if cfg.val_split == "holdout" else f"; no official {' + '.join(task.dev)} found"
        evals = [("", f"val (held-out {len(val_idx)} of {len(examples)} {task.folder} train examples, "
                      f"{'random' if task.is_regression else 'class-balanced'}, seed {cfg.seed}{why})",
                  [examples[i] for i in val_idx])]
    if cfg.limit_train and cfg.limit_train < len(train_idx):
        sub = [int(examples[i].label) if not task.is_regression else 0 for i in train_idx]
        _, keep = balanced_split(sub, cfg.limit_train, cfg.seed + 1)
        train_idx = [train_idx[i] for i in keep]
    return GlueSplits(tdata.GlueDataset([examples[i] for i in train_idx], tok, cfg.max_len),
                      [(sfx, name, tdata.GlueDataset(held, tok, cfg.max_len)) for sfx, name, held in evals])


def _key(name: str, suffix: str) -> str:
    """``accuracy`` for a single evaluation split, ``accuracy_m`` / ``accuracy_mm`` for MNLI's two."""
    return f"{name}_{suffix}" if suffix else name


def _suffixed(metrics: dict, suffix: str) -> dict:
    return {_key(k, suffix): v for k, v in metrics.items()}


def run_glue(cfg: GlueConfig, resume: bool = False, json_path: str | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    task = tdata.get_task(cfg.task)
    tok = tdata.WordPieceTokenizer(_path(cfg.vocab))
    splits = glue_splits(cfg, task, tok)
    train, val_name = splits.train, splits.name

    if cfg.init:  # the checkpoint's architecture, under a fresh sequence head
        init_state, build = ckpt.load_weights(_path(cfg.init))
        model_args = {**build.get("model_args", {}), **cfg.model_args}
    else:
        model_args = {"max_len": cfg.max_len, **cfg.model_args}
    model_args.update(head="sequence", num_classes=task.num_classes, vocab_size=len(tok), pad_id=tok.pad_id)
    model = create_text_model(cfg.model, **model_args)
    if model.cfg.max_len < cfg.max_len:
        raise ConfigError(f"max_len {cfg.max_len} exceeds the model's max_len {model.cfg.max_len}")
    if cfg.init and not (resume and (_path(cfg.output) / "last.pt").is_file()):
        _load_backbone(model, init_state, cfg.init)

    def criterion(out, labels):
        if task.is_regression:
            return F.mse_loss(out.squeeze(-1), labels.float())
        return F.cross_entropy(out, labels.long())

    def loss_fn(model, b):
        return criterion(model(b["input_ids"], b["token_type_ids"], b["attention_mask"]), b["labels"])

    def predict(ds) -> tuple[list, float]:
        preds, loss = [], 0.0
        for s in range(0, len(ds), cfg.batch_size):
            b = tdata.collate([ds[i] for i in range(s, min(len(ds), s + cfg.batch_size))], tok.pad_id)
            out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])
            loss += float(criterion(out, b["labels"])) * len(b["labels"])
            preds += out.squeeze(-1).tolist() if task.is_regression else out.argmax(-1).tolist()
        return preds, loss / len(ds)

    def evaluate() -> dict:
        out = {}
        for suffix, _, ds in splits.evals:
            preds, loss = predict(ds)
            out.update(_suffixed(dict(loss=loss, **tdata.task_metrics(task, preds, [y for _, _, y in ds.items])),
                                 suffix))
        # val_acc / val_loss feed MetricsLog's curves: the first split's (MNLI-m); Pearson stands in on STS-B.
        first = splits.evals[0][0]
        return {"val_acc": out.get(_key("accuracy", first), out.get("pearson")),
                "val_loss": out[_key("loss", first)], **{f"val_{k}": v for k, v in out.items()}}

    def batch_at(step: int) -> dict:
        _, idx = _epoch_order(len(train), cfg.batch_size, cfg.seed, step)
        return tdata.collate([train[int(i)] for i in idx], tok.pad_id)

    meta = dict(model=cfg.model, model_args=dataclasses.asdict(model.cfg), task=task.name, init=cfg.init)
    history = _fit(cfg, model, meta, batch_at, loss_fn, evaluate, max(1, len(train) // cfg.batch_size), resume)
    aliases = {"val_acc", "val_loss" if splits.evals[0][0] else ""}  # the curves' copies of a split's figures
    final = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_") and k not in aliases}
    headline = [_key(task.metric, sfx) for sfx, _, _ in splits.evals]
    summary = dict(command="glue", task=task.name, metric=task.metric, value=final[headline[0]],
                   val_metrics=final, model=cfg.model, init=cfg.init or "scratch", steps=cfg.steps,
                   train_examples=len(train), val_split=val_name, checkpoint=str(_path(cfg.output) / "last.pt"))
    if not task.is_regression:  # what predicting the training split's most frequent class scores here
        labels = [int(y) for _, _, y in train.items]
        majority = max(set(labels), key=labels.count)
        summary["majority_baseline"] = {}
        for suffix, _, ds in splits.evals:
            gold = [y for _, _, y in ds.items]
            summary["majority_baseline"].update(_suffixed(tdata.task_metrics(task, [majority] * len(gold), gold),
                                                          suffix))
    scores = " / ".join(f"{k} {final[k]:.4f}" for k in headline)
    base = summary.get("majority_baseline", {})
    print(f"{task.name} {scores} on {val_name}"
          + ("; majority class: " + " / ".join(f"{base[k]:.4f}" for k in headline) if base else ""))
    return _finish(cfg, summary, json_path)


# ---------------------------------------------------------------- command line

def _cmd(runner, cls):
    def cmd(args: argparse.Namespace) -> int:
        try:  # bad config, missing or malformed data files, unreadable init checkpoint: one clear line
            runner(load_config(args.config, args.set, cls=cls), resume=args.resume, json_path=args.json)
        except (ValueError, FileNotFoundError, ckpt.CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    return cmd


def register_cli(sub) -> None:
    for name, runner, cls, helptext, desc in (
        ("mlm", run_mlm, MLMConfig, "pre-train a text Spikingformer by masked language modelling",
         "Masked-LM pre-training (BERT recipe: 15 %% of tokens chosen, 80/10/10 [MASK]/random/keep) of a "
         "models.text Spikingformer on contiguous token blocks of a text corpus; reports masked-token accuracy "
         "and loss on a held-out corpus beside the always-most-frequent-token baseline. See "
         "configs/mlm_wikitext2.yaml."),
        ("glue", run_glue, GlueConfig, "fine-tune a text Spikingformer on a GLUE task",
         "Fine-tune on one GLUE task's train.tsv (--set task=sst2; cola, mrpc, stsb, qqp, mnli, qnli, rte, wnli), "
         "from an MLM checkpoint (--set init=runs/mlm/last.pt) or from scratch, and report every GLUE metric of "
         "the task (MCC, accuracy, F1, Pearson/Spearman) beside the majority-class baseline: on the official dev "
         "file(s) when DATA_DIR/TASK/dev.tsv exists (MNLI: dev_matched.tsv and dev_mismatched.tsv, both "
         "reported), else on a seeded held-out split of train (--set val_split=holdout forces it). See "
         "configs/glue.yaml."),
    ):
        p = sub.add_parser(name, help=helptext, description=desc)
        p.add_argument("--config", metavar="FILE", help="YAML file of config keys (default: built-in defaults)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (repeatable); values are parsed as YAML")
        p.add_argument("--resume", action="store_true",
                       help="continue the run in the config's output folder from last.pt (starts fresh if none)")
        p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
        p.set_defaults(func=_cmd(runner, cls))
