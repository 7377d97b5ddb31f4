"""The language commands end to end on tiny fixtures: mlm -> glue from its checkpoint, resume, config errors."""
from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
import torch

from spikingformer.cli import main
from spikingformer.data import glue as gdata
from spikingformer.data import text as tdata
from spikingformer.models import create_model
from spikingformer.train import glue, mlm
from spikingformer.train.config import ConfigError, load_config
from spikingformer.weights import checkpoint as ckpt

POS, NEG = ["good", "great", "fine", "fun"], ["bad", "awful", "poor", "dull"]
FILLER = ["the", "film", "was", "a", "plot", "and", "very", "story", "cast", "."]
TINY_MODEL = "{depth: 1, dim: 32, num_heads: 2, T: 2, max_len: 32}"


@pytest.fixture
def files(tmp_path):
    rng = random.Random(0)
    words = POS + NEG + FILLER
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    rows = ["sentence\tlabel"]
    for i in range(80):
        label = i % 2
        rows.append(f"the film was {rng.choice(POS if label else NEG)} and {rng.choice(FILLER)} \t{label}")
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path


def cli(argv: list[str]) -> int:
    return main(argv)


def mlm_args(d, *extra) -> list[str]:
    return ["mlm", "--config", "configs/mlm_wikitext2.yaml", "--set", f"vocab={d}/vocab.txt",
            "--set", f"train_file={d}/corpus.txt", "--set", "val_file=", "--set", f"model_args={TINY_MODEL}",
            "--set", "block_len=16", "--set", "batch_size=8", "--set", "steps=4", "--set", "eval_every=2",
            "--set", "warmup_steps=1", "--set", "limit_val=8", "--set", f"output={d}/mlm",
            "--set", "progress=false", *extra]


def glue_args(d, *extra) -> list[str]:
    return ["glue", "--config", "configs/glue.yaml", "--set", f"vocab={d}/vocab.txt", "--set", f"data_dir={d}",
            "--set", "task=sst2", "--set", "batch_size=8", "--set", "steps=3", "--set", "eval_every=3",
            "--set", "warmup_steps=1", "--set", "max_len=32", "--set", "holdout_fraction=0.25",
            "--set", f"output={d}/glue", "--set", "progress=false", *extra]


def test_mlm_then_glue_from_its_checkpoint(files):
    d = files
    assert cli(mlm_args(d, "--json", f"{d}/mlm.json")) == 0
    mlm = json.loads((d / "mlm.json").read_text())
    assert mlm["command"] == "mlm" and 0 <= mlm["masked_token_acc"] <= 1 and mlm["masked_lm_loss"] > 0
    assert "held out" in mlm["val_split"] and mlm["unigram_token"] in POS + NEG + FILLER
    history = [json.loads(line) for line in (d / "mlm" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    assert (d / "mlm" / "metrics.png").is_file() and (d / "mlm" / "summary.json").is_file()

    assert cli(glue_args(d, "--set", f"init={d}/mlm/last.pt", "--json", f"{d}/glue.json")) == 0
    out = json.loads((d / "glue.json").read_text())
    assert out["task"] == "sst2" and out["metric"] == "accuracy" and out["init"].endswith("last.pt")
    assert out["val_split"] == ("val (held-out 20 of 80 SST-2 train examples, class-balanced, seed 0; "
                                "no official dev.tsv found)")
    assert out["train_examples"] == 60 and 0 <= out["value"] <= 1
    assert out["majority_baseline"] == {"accuracy": 0.5}  # the held-out split is balanced
    steps = out["per_step"]["accuracy"]  # the read-out after each of the T = 2 steps, the last the model's
    assert len(steps) == 2 and steps[-1] == pytest.approx(out["value"]) and all(0 <= a <= 1 for a in steps)
    state = ckpt.load_checkpoint(d / "glue" / "last.pt")
    assert state["meta"]["model_args"]["head"] == "sequence" and state["meta"]["model_args"]["depth"] == 1

    # The backbone comes from the MLM checkpoint, the sequence head does not.
    mlm_state, build = ckpt.load_weights(d / "mlm" / "last.pt")
    model = create_model("spikingformer_text_2_128", **{**build["model_args"], "head": "sequence"})
    head_before = model.head.fc.weight.clone()
    assert ckpt.load_backbone(model, mlm_state, "mlm/last.pt") == ["head.fc.bias", "head.fc.weight"]
    assert torch.equal(model.embed.tok.weight, mlm_state["embed.tok.weight"])
    assert torch.equal(model.blocks[0].mlp.fc2.bn.running_var, mlm_state["blocks.0.mlp.fc2.bn.running_var"])
    assert torch.equal(model.head.fc.weight, head_before)


def test_glue_from_scratch_regression_task(files):
    d = files
    rows = ["\t".join(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                       "sentence1", "sentence2", "score"])]
    rows += [f"{i}\tg\tf\ty\t{i}\tnone\tnone\tthe film was good\tthe plot was {w}\t{i % 5}.0"
             for i, w in enumerate(POS * 5)]
    (d / "STS-B").mkdir()
    (d / "STS-B" / "train.tsv").write_text("\n".join(rows) + "\n")
    assert cli(glue_args(d, "--set", "task=stsb", "--set", f"model_args={TINY_MODEL}",
                         "--json", f"{d}/stsb.json")) == 0
    out = json.loads((d / "stsb.json").read_text())
    assert out["metric"] == "pearson" and set(out["val_metrics"]) == {"loss", "pearson", "spearman"}
    assert out["init"] == "scratch" and "majority_baseline" not in out and "random" in out["val_split"]
    # the same predictions as the trained model's, up to the rounding of its other path through the head
    pearson = out["per_step"]["pearson"]
    assert len(pearson) == 2 and pearson[-1] == pytest.approx(out["value"], rel=1e-4)


def test_resume_reproduces_the_uninterrupted_run(files, monkeypatch, capsys):
    d = files
    assert cli(mlm_args(d, "--set", f"output={d}/straight")) == 0

    real = ckpt.save_checkpoint

    def crash_after_saving(state, path):
        real(state, path)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt, "save_checkpoint", crash_after_saving)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli(mlm_args(d, "--set", f"output={d}/resumed"))
    assert ckpt.load_checkpoint(d / "resumed" / "last.pt")["step"] == 2
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    assert cli(mlm_args(d, "--set", f"output={d}/resumed", "--resume")) == 0

    a, b = ckpt.load_checkpoint(d / "straight" / "last.pt"), ckpt.load_checkpoint(d / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"] == b["history"]

    assert cli(mlm_args(d, "--set", f"output={d}/resumed", "--set", "lr=0.1", "--resume")) == 2
    assert re.search(r"error: --resume: the config differs from the checkpoint's in \['lr'\]", capsys.readouterr().err)


def test_config_errors(files, capsys):
    assert cli(glue_args(files, "--set", "nosuchkey=1")) == 2
    assert "unknown config key(s) ['nosuchkey']" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown GLUE task 'ax'"):
        load_config("configs/glue.yaml", ["task=ax"], cls=glue.GlueConfig)
    with pytest.raises(ConfigError, match="val_split must be one of auto, holdout, got 'dev'"):
        load_config("configs/glue.yaml", ["val_split=dev"], cls=glue.GlueConfig)
    assert cli(glue_args(files, "--set", "task=qnli")) == 2  # no QNLI/train.tsv: one clear line, no traceback
    assert "QNLI data file not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model must be one of spikingformer_text_12_768, spikingformer_text_2_128"):
        load_config("configs/mlm_wikitext2.yaml", ["model=spikingformer_4_384"], cls=mlm.MLMConfig)
    with pytest.raises(ConfigError, match="sched must be one of linear, cosine"):
        load_config(None, ["sched=step"], cls=mlm.MLMConfig)
    # the shipped configs load as they are
    assert load_config("configs/glue.yaml", cls=glue.GlueConfig).task == "sst2"
    assert load_config("configs/mlm_wikitext2.yaml", cls=mlm.MLMConfig).block_len == 64


def test_help_explains_itself(capsys):
    for cmd, words in (("mlm", "Masked-LM pre-training"), ("glue", "official dev file(s)")):
        with pytest.raises(SystemExit):
            cli([cmd, "--help"])
        text = capsys.readouterr().out
        assert words in text and "--resume" in text and "--json FILE" in text


# ---------------------------------------------------------------- official dev files (val_split: auto | holdout)

def write_pairs(path, header: list[str], n: int, labels: list[str], fill) -> None:
    """``n`` rows of a sentence-pair task whose label shows in the second sentence's word."""
    rows = ["\t".join(header)]
    for i in range(n):
        y = labels[i % len(labels)]
        rows.append("\t".join(fill(i, f"the film was {y} indeed", y)))
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


MNLI_HEAD = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2"]


def mnli_row(extra_labels: int):
    return lambda i, text, y: [str(i), "1", "1e", "fiction", "(", ")", "(", ")", "the plot", text,
                               *[y] * extra_labels, y]


def test_mnli_official_dev_files_both_reported(files):
    d = files
    labels = ["entailment", "neutral", "contradiction"]
    write_pairs(d / "MNLI" / "train.tsv", MNLI_HEAD + ["label1", "gold_label"], 24, labels, mnli_row(1))
    dev_head = MNLI_HEAD + [f"label{i}" for i in range(1, 6)] + ["gold_label"]
    write_pairs(d / "MNLI" / "dev_matched.tsv", dev_head, 6, labels, mnli_row(5))
    write_pairs(d / "MNLI" / "dev_mismatched.tsv", dev_head, 9, labels, mnli_row(5))
    assert cli(glue_args(d, "--set", "task=mnli", "--set", f"model_args={TINY_MODEL}", "--json", f"{d}/m.json")) == 0
    out = json.loads((d / "m.json").read_text())
    assert out["val_split"] == ("dev_matched (official GLUE dev split, 6 examples); "
                                "dev_mismatched (official GLUE dev split, 9 examples)")
    assert out["train_examples"] == 24  # all of train.tsv: nothing held out
    assert set(out["val_metrics"]) == {"loss_m", "accuracy_m", "loss_mm", "accuracy_mm"}
    assert out["metric"] == "accuracy" and out["value"] == out["val_metrics"]["accuracy_m"]
    # the training labels are balanced, so "the most frequent class" is the first: entailment
    assert out["majority_baseline"] == {"accuracy_m": pytest.approx(2 / 6), "accuracy_mm": pytest.approx(3 / 9)}
    history = [json.loads(line) for line in (d / "glue" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_acc"] == history[-1]["val_accuracy_m"]

    # val_split=holdout ignores the dev files and names the held-out split
    assert cli(glue_args(d, "--set", "task=mnli", "--set", f"model_args={TINY_MODEL}", "--set", "val_split=holdout",
                         "--set", f"output={d}/hold", "--json", f"{d}/h.json")) == 0
    out = json.loads((d / "h.json").read_text())
    assert out["val_split"] == "val (held-out 6 of 24 MNLI train examples, class-balanced, seed 0)"
    assert set(out["val_metrics"]) == {"loss", "accuracy"} and out["train_examples"] == 18


def test_qqp_dev_file_reports_accuracy_and_f1(files):
    d = files
    head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    row = lambda i, text, y: [str(i), "1", "2", "is the film good", text, y]  # noqa: E731
    write_pairs(d / "QQP" / "train.tsv", head, 16, ["0", "1"], row)
    write_pairs(d / "QQP" / "dev.tsv", head, 5, ["0", "1"], row)
    assert cli(glue_args(d, "--set", "task=qqp", "--set", f"model_args={TINY_MODEL}", "--json", f"{d}/q.json")) == 0
    out = json.loads((d / "q.json").read_text())
    assert out["val_split"] == "dev (official GLUE dev split, 5 examples)"
    assert set(out["val_metrics"]) == {"loss", "accuracy", "f1"} and out["value"] == out["val_metrics"]["accuracy"]
    # a tie between the classes goes to class 0: accuracy 3/5 on the dev labels 0 1 0 1 0, F1 0
    assert out["majority_baseline"] == {"accuracy": pytest.approx(3 / 5), "f1": 0.0}


def test_limit_val_keeps_the_held_out_split_and_says_so(files):
    """limit_val evaluates on part of the split; the name still gives the whole held-out share (training
    never sees it) and adds the limit, as the vision splits' names do."""
    tok = tdata.WordPieceTokenizer(files / "vocab.txt")
    sst2 = gdata.get_task("sst2")
    cfg = glue.GlueConfig(task="sst2", data_dir=str(files), holdout_fraction=0.25, limit_val=8)
    splits = glue.glue_splits(cfg, sst2, tok)
    assert splits.name == ("val (held-out 20 of 80 SST-2 train examples, class-balanced, seed 0; no official "
                           "dev.tsv found), limited to 8 val examples")
    assert len(splits.evals[0][2]) == 8 and len(splits.train) == 60
    write_pairs(files / "SST-2" / "dev.tsv", ["sentence", "label"], 5, ["0", "1"], lambda i, text, y: [text, y])
    splits = glue.glue_splits(dataclasses.replace(cfg, limit_val=3), sst2, tok)
    assert splits.name == "dev (official GLUE dev split, 5 examples), limited to 3 val examples"
    assert len(splits.evals[0][2]) == 3
    assert glue.glue_splits(dataclasses.replace(cfg, limit_val=5), sst2, tok).name == \
        "dev (official GLUE dev split, 5 examples)"


def test_init_from_a_vision_checkpoint_is_a_clear_error(files, capsys):
    from spikingformer import create_model

    args = dict(depth=1, dim=64, num_heads=2, num_classes=3, img_size=32, in_chans=3)
    vision = files / "vision.pt"
    ckpt.save_checkpoint({"model": create_model("spikingformer_4_256", **args).state_dict(),
                          "meta": {"model": "spikingformer_4_256", "model_args": args}}, vision)
    assert cli(glue_args(files, "--set", f"init={vision}")) == 2
    assert (f"error: init {vision} holds a vision model (spikingformer_4_256), not a text model"
            in capsys.readouterr().err)
    assert not (files / "glue").exists()  # nothing trained
