"""GLUE data: the nine tasks' layouts, readers, the encoded dataset, batch padding and metrics.

GLUE readers parse the official TSV layouts of all nine tasks (Wang et al. 2018; train and dev
files, columns found by header name) and report a malformed row by file and line.  Examples are
encoded with ``data.text.WordPieceTokenizer`` as ``[CLS] a [SEP] (b [SEP])``; ``task_metrics``
gives every metric GLUE reports for a task (accuracy, F1, MCC, Pearson, Spearman).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..utils.errors import InputError
from .text import WordPieceTokenizer, read_text

__all__ = ["GlueTask", "GlueExample", "GLUE_TASKS", "get_task", "dev_files", "official_dev_files", "read_glue",
           "GlueDataset", "collate", "accuracy", "f1_binary", "matthews_corrcoef", "pearson", "spearman", "task_metrics"]


# ---------------------------------------------------------------- GLUE

@dataclass(frozen=True)
class GlueTask:
    """One GLUE task's official TSV layout (Wang et al. 2018), label vocabulary and metrics.

    Columns are named as in each file's header row, so a task's train and dev files may differ
    in width (MNLI's dev files carry five annotator labels, its train file one).  CoLA's files
    have no header: its columns are indices and ``columns`` is the row width.
    """

    name: str
    folder: str
    text_a: str | int
    text_b: str | int | None
    label: str | int
    labels: tuple[str, ...]          # label strings in class order; () for regression (STS-B)
    metrics: tuple[str, ...]         # every metric GLUE reports for the task, the headline first
    dev: tuple[str, ...] = ("dev.tsv",)      # the official dev file(s) in TASK/
    dev_names: tuple[str, ...] = ("",)       # their suffixes in metric names (MNLI: "m", "mm")
    columns: int = 0                 # row width of a headerless file (CoLA)

    @property
    def header(self) -> bool:
        return isinstance(self.label, str)

    @property
    def metric(self) -> str:
        """The headline metric (Table 4 of the paper: F1 for MRPC, accuracy for QQP, MCC for CoLA)."""
        return self.metrics[0]

    @property
    def num_classes(self) -> int:
        return len(self.labels) or 1  # a regression task has one output

    @property
    def is_regression(self) -> bool:
        return not self.labels


_ACC = ("accuracy",)
_NLI = ("entailment", "not_entailment")
GLUE_TASKS = {t.name: t for t in (
    GlueTask("cola", "CoLA", 3, None, 1, ("0", "1"), ("mcc", "accuracy"), columns=4),  # source, label, mark, text
    GlueTask("sst2", "SST-2", "sentence", None, "label", ("0", "1"), _ACC),
    GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy")),
    GlueTask("stsb", "STS-B", "sentence1", "sentence2", "score", (), ("pearson", "spearman")),
    GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), ("accuracy", "f1")),
    # class order as the GLUE/HF datasets release: entailment 0, neutral 1, contradiction 2
    GlueTask("mnli", "MNLI", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
             _ACC, dev=("dev_matched.tsv", "dev_mismatched.tsv"), dev_names=("m", "mm")),
    GlueTask("qnli", "QNLI", "question", "sentence", "label", _NLI, _ACC),
    GlueTask("rte", "RTE", "sentence1", "sentence2", "label", _NLI, _ACC),
    GlueTask("wnli", "WNLI", "sentence1", "sentence2", "label", ("0", "1"), _ACC),
)}


def get_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise InputError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def dev_files(task: GlueTask, folder: str | Path) -> list[tuple[str, Path]] | None:
    """``[(suffix, path)]`` of the task's official dev file(s) in the task folder ``folder``, or ``None`` when
    absent.  MNLI needs both of its dev files: one without the other is an error, not a quiet fallback."""
    paths = [Path(folder) / f for f in task.dev]
    found = [p.is_file() for p in paths]
    if not any(found):
        return None
    if not all(found):
        missing = [p.name for p, ok in zip(paths, found) if not ok]
        raise FileNotFoundError(f"{paths[0].parent} holds {[p.name for p, ok in zip(paths, found) if ok]} but "
                                f"not {missing}: {task.folder} is evaluated on all of {list(task.dev)}")
    return list(zip(task.dev_names, paths))


def official_dev_files(task: GlueTask, data_dir: str | Path) -> list[tuple[str, Path]] | None:
    """``dev_files`` of ``data_dir/TASK/``, the layout GLUE's download script writes."""
    return dev_files(task, Path(data_dir) / task.folder)


@dataclass(frozen=True)
class GlueExample:
    text_a: str
    text_b: str | None
    label: float  # class index, or the similarity score for STS-B
    line: int = field(default=0, compare=False)  # where in its file, for per-row reports; not part of the example


def _column_indices(task: GlueTask, header: list[str], path: Path) -> list[int | None]:
    wanted = [task.text_a, task.text_b, task.label]
    missing = [c for c in wanted if c is not None and c not in header]
    if missing:
        raise InputError(f"{path}:1: {task.folder} header lacks column(s) {missing}; found {header}")
    return [header.index(c) if c is not None else None for c in wanted]


def read_glue(task: GlueTask | str, path: str | Path) -> list[GlueExample]:
    """Parse a GLUE ``train.tsv`` / ``dev*.tsv`` (no quoting: GLUE text holds bare ``"``); the text and
    label columns are found by name in the header row.  A bad row raises naming file and line."""
    task = get_task(task) if isinstance(task, str) else task
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{task.folder} data file not found: {path}")
    lines = read_text(path, encoding="utf-8-sig").split("\n")  # utf-8-sig: MRPC starts with a byte-order mark
    while lines and not lines[-1].strip():
        lines.pop()
    if task.header:
        if not lines:
            raise InputError(f"{path} is empty: expected a {task.folder} header row")
        header = lines[0].rstrip("\r").split("\t")
        width, (a, b, y), rows = len(header), _column_indices(task, header, path), lines[1:]
    else:
        width, (a, b, y), rows = task.columns, (task.text_a, task.text_b, task.label), lines
    out = []
    for lineno, line in enumerate(rows, start=2 if task.header else 1):
        cols = line.rstrip("\r").split("\t")
        where = f"{path}:{lineno}"
        if len(cols) != width:
            raise InputError(f"{where}: malformed {task.folder} row: expected {width} tab-separated "
                             f"columns, found {len(cols)}")
        raw = cols[y].strip()
        if task.is_regression:
            try:
                label = float(raw)
            except ValueError:
                raise InputError(f"{where}: {task.folder} score {raw!r} is not a number") from None
        elif raw in task.labels:
            label = float(task.labels.index(raw))
        else:
            raise InputError(f"{where}: {task.folder} label {raw!r} is not one of {list(task.labels)}")
        out.append(GlueExample(cols[a], cols[b] if b is not None else None, label, lineno))
    if not out:
        raise InputError(f"{path} holds no examples")
    return out


class GlueDataset(torch.utils.data.Dataset):
    """Examples as ``[CLS] a [SEP] (b [SEP])`` with segment ids, cut to ``max_len``; each is encoded on
    first use and kept, so a split nobody reads (MNLI's 393k training pairs, for an energy estimate)
    costs no tokenization.  ``source``: the file they were read from, which per-row reports name."""

    def __init__(self, examples: list[GlueExample], tokenizer: WordPieceTokenizer, max_len: int,
                 source: Path | None = None):
        self.examples, self.tokenizer, self.max_len, self.source = examples, tokenizer, max_len, source
        self.pad_id = tokenizer.pad_id
        self.labels = [ex.label for ex in examples]
        self._encoded: list[tuple | None] = [None] * len(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], float]:
        item = self._encoded[i]
        if item is None:
            ex, tok = self.examples[i], self.tokenizer
            b = tok.encode(ex.text_b) if ex.text_b is not None else None
            item = self._encoded[i] = (*tok.encode_pair(tok.encode(ex.text_a), b, self.max_len), ex.label)
        return item


def collate(batch: list[tuple[list[int], list[int], float]], pad_id: int) -> dict[str, Tensor]:
    """Pad a batch to its longest sequence; ``attention_mask`` marks the real tokens."""
    n = max(len(ids) for ids, _, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    segs = torch.zeros((len(batch), n), dtype=torch.long)
    for r, (x, s, _) in enumerate(batch):
        ids[r, :len(x)] = torch.tensor(x)
        segs[r, :len(s)] = torch.tensor(s)
    mask = torch.arange(n) < torch.tensor([len(x) for x, _, _ in batch])[:, None]
    return dict(input_ids=ids, token_type_ids=segs, attention_mask=mask,
                labels=torch.tensor([y for _, _, y in batch]))


# ---------------------------------------------------------------- metrics

def accuracy(pred, gold) -> float:
    pred, gold = list(pred), list(gold)
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1_binary(pred, gold) -> float:
    """F1 of the positive class 1 (MRPC's "paraphrase")."""
    tp = sum(p == 1 and g == 1 for p, g in zip(pred, gold))
    fp = sum(p == 1 and g != 1 for p, g in zip(pred, gold))
    fn = sum(p != 1 and g == 1 for p, g in zip(pred, gold))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(pred, gold) -> float:
    """Binary MCC (CoLA); 0 when a row or column of the confusion matrix is empty, as scikit-learn."""
    tp = sum(p == 1 and g == 1 for p, g in zip(pred, gold))
    tn = sum(p == 0 and g == 0 for p, g in zip(pred, gold))
    fp = sum(p == 1 and g == 0 for p, g in zip(pred, gold))
    fn = sum(p == 0 and g == 1 for p, g in zip(pred, gold))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def pearson(x, y) -> float:
    x, y = torch.as_tensor(list(x), dtype=torch.float64), torch.as_tensor(list(y), dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den else 0.0


def _ranks(x) -> Tensor:
    """1-based ranks, ties sharing their average rank (Spearman's convention)."""
    x = torch.as_tensor(list(x), dtype=torch.float64)
    ranks = torch.empty_like(x)
    vals, inverse = torch.unique(x, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(vals)).double()
    first = torch.cumsum(counts, 0) - counts  # how many smaller values precede each distinct value
    ranks[:] = (first + (counts + 1) / 2)[inverse]
    return ranks


def spearman(x, y) -> float:
    return pearson(_ranks(x), _ranks(y))


def task_metrics(task: GlueTask, pred, gold) -> dict[str, float]:
    """Every metric GLUE reports for ``task`` (``task.metrics``): MCC + accuracy (CoLA), F1 + accuracy
    (MRPC, QQP), Pearson + Spearman (STS-B), accuracy.  ``pred`` are class indices, or scores for STS-B."""
    pred, gold = list(pred), list(gold)
    if not task.is_regression:
        pred, gold = [int(p) for p in pred], [int(g) for g in gold]
    fns = dict(accuracy=accuracy, f1=f1_binary, mcc=matthews_corrcoef, pearson=pearson, spearman=spearman)
    return {m: fns[m](pred, gold) for m in task.metrics}
