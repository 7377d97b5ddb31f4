"""Masked-LM pre-training: ``spikingformer mlm`` (the paper's NLU section, after Devlin et al. 2019).

BERT's recipe on contiguous token blocks of a text corpus: 15 % of the tokens chosen, of those
80 % replaced by ``[MASK]``, 10 % by a random token, 10 % kept (``data.text.MLMBlocks``, masks
drawn per ``(seed, epoch, block)``).  The loss reads the model's features at the chosen tokens
only, so the vocabulary-sized read-out runs on 15 % of the positions.  Training, devices,
``torchrun`` and resume: ``spikingformer.train.text_engine``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import text as tdata
from ..models import create_model
from ..utils.errors import ConfigError
from .distributed import all_reduce_sum, session
from .text_engine import (
    TextTask,
    TextTrainConfig,
    epoch_order,
    eval_shard,
    expand,
    finish,
    fit,
    stack,
    to_device,
)

__all__ = ["MLMConfig", "run_mlm"]


@dataclass
class MLMConfig(TextTrainConfig):
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


def masked_lm_loss(model, b: dict):
    """Summed cross-entropy at the chosen tokens (``labels >= 0``) and those tokens' logits and gold ids."""
    x, _ = model.forward_features(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    target = b["labels"] >= 0
    logits, gold = model.head(x[:, target]), b["labels"][target]
    return F.cross_entropy(logits.float(), gold, reduction="sum"), logits, gold, target


def run_mlm(cfg: MLMConfig, resume: bool = False, json_path: str | None = None) -> dict:
    """Pre-train ``cfg`` (or continue ``cfg.output``'s run with ``resume``); return the summary."""
    with session(cfg.device) as info:
        return _run(cfg, info, resume, json_path)


def _run(cfg: MLMConfig, info, resume: bool, json_path: str | None) -> dict:
    torch.manual_seed(cfg.seed)
    tok = tdata.WordPieceTokenizer(expand(cfg.vocab))
    stream = tdata.read_corpus(expand(cfg.train_file), tok)
    if cfg.val_file:
        val_stream, val_name = tdata.read_corpus(expand(cfg.val_file), tok), Path(cfg.val_file).name
    else:  # the tail, not random blocks: neighbouring text would leak into training
        cut = int(len(stream) * (1 - cfg.val_fraction))
        stream, val_stream = stream[:cut], stream[cut:]
        val_name = f"last {cfg.val_fraction:.0%} of {Path(cfg.train_file).name} (held out)"
    train = tdata.MLMBlocks(stream, cfg.block_len, tok, cfg.seed, cfg.mask_prob)
    val = tdata.MLMBlocks(val_stream, cfg.block_len, tok, cfg.seed + 1, cfg.mask_prob)
    n_val = min(len(val), cfg.limit_val or len(val))
    val_name += f": {n_val} of its {len(val)} blocks"
    model_args = dict(cfg.model_args, head="mlm", vocab_size=len(tok), pad_id=tok.pad_id)
    model = create_model(cfg.model, **model_args)
    if model.cfg.max_len < cfg.block_len:
        raise ConfigError(f"block_len {cfg.block_len} exceeds the model's max_len {model.cfg.max_len}")
    # Unigram baseline: always predict the corpus's most frequent ordinary token.
    counts = torch.bincount(stream, minlength=len(tok))
    counts[list(tok.special_ids)] = 0
    top = int(counts.argmax())

    def batch_at(step: int) -> dict:
        epoch, idx = epoch_order(len(train), cfg.batch_size, cfg.seed, step)
        train.set_epoch(epoch)
        return stack([train[int(i)] for i in idx])

    def evaluate(model) -> dict:
        part = eval_shard(n_val, info)
        sums = torch.zeros(5, dtype=torch.float64, device=info.device)  # loss, correct, hits, copies, n
        for s in range(part.start, part.stop, cfg.batch_size):
            b = to_device(stack([val[i] for i in range(s, min(part.stop, s + cfg.batch_size))]), info.device)
            loss, logits, gold, target = masked_lm_loss(model, b)
            sums += torch.stack([loss.double(), (logits.argmax(-1) == gold).sum().double(),
                                 (gold == top).sum().double(), (b["input_ids"][target] == gold).sum().double(),
                                 torch.tensor(float(len(gold)), dtype=torch.float64, device=info.device)])
        loss, correct, hits, copies, n = all_reduce_sum(sums).tolist()
        # copy_acc: echoing the visible input token scores on the 10 % of targets BERT leaves unmasked.
        ppl = math.exp(loss / n) if loss / n < 709 else math.inf  # exp(710) overflows a float: a diverged run
        return dict(val_loss=loss / n, val_acc=correct / n, val_ppl=ppl, unigram_acc=hits / n, copy_acc=copies / n)

    task = TextTask(model=model, meta=dict(model=cfg.model, model_args=dataclasses.asdict(model.cfg), task="mlm"),
                    batch_at=batch_at, loss=lambda m, b: masked_lm_loss(m, b)[0],
                    units=lambda b: int((b["labels"] >= 0).sum()), evaluate=evaluate,
                    per_epoch=max(1, len(train) // cfg.batch_size))
    last = fit(cfg, info, task, resume)[-1]
    summary = dict(command="mlm", model=cfg.model, params=sum(p.numel() for p in model.parameters()),
                   steps=cfg.steps, train_blocks=len(train), block_len=cfg.block_len, val_split=val_name,
                   val_blocks=n_val, masked_token_acc=last["val_acc"], masked_lm_loss=last["val_loss"],
                   unigram_baseline_acc=last["unigram_acc"], unigram_token=tok.inv_vocab[top],
                   copy_baseline_acc=last["copy_acc"], checkpoint=str(expand(cfg.output) / "last.pt"))
    if info.is_main:
        print(f"masked-token accuracy {summary['masked_token_acc']:.4f} (loss {summary['masked_lm_loss']:.3f}; "
              f"always {tok.inv_vocab[top]!r}: {summary['unigram_baseline_acc']:.4f}; copy the input token: "
              f"{summary['copy_baseline_acc']:.4f}) on {val_name}")
    return finish(cfg, info, summary, json_path)
