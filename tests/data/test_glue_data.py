"""GLUE data: readers of the nine tasks' TSV layouts, batch padding and metrics."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from spikingformer.data import glue as G

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


# ---------------------------------------------------------------- GLUE readers

FIXTURES = {
    "cola": "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n",
    "sst2": "sentence\tlabel\ngood film \t1\nbad film \t0\n",
    "mrpc": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said \" yes \" .\tHe agreed .\n",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t3.800\n",
    "rte": "index\tsentence1\tsentence2\tlabel\n0\tA is B.\tB is A.\tnot_entailment\n1\tX.\tX.\tentailment\n",
    "wnli": "index\tsentence1\tsentence2\tlabel\n0\tI saw it.\tIt was seen.\t1\n",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
           "7\t15\t16\tHow do I learn?\tHow to learn?\t1\n8\t17\t18\tWhy?\tWhen?\t0\n",
    "qnli": "index\tquestion\tsentence\tlabel\n0\tWho won?\tBob won the race.\tentailment\n"
            "1\tWhen?\tIt rained.\tnot_entailment\n",
    # MNLI train: 12 columns, label1 then gold_label (a dev file's 16-column layout is tested below)
    "mnli": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
            "0\t31193\t31193n\tgovernment\t( A )\t( B )\t(ROOT A)\t(ROOT B)\tA man sleeps.\tA man rests.\t"
            "neutral\tneutral\n"
            "1\t101457\t101457e\ttelephone\t( C )\t( D )\t(ROOT C)\t(ROOT D)\tYes.\tNo.\tcontradiction\t"
            "contradiction\n",
}
EXPECTED = {
    "cola": [G.GlueExample("The cat sat.", None, 1.0), G.GlueExample("Cat the sat.", None, 0.0)],
    "sst2": [G.GlueExample("good film ", None, 1.0), G.GlueExample("bad film ", None, 0.0)],
    "mrpc": [G.GlueExample('He said " yes " .', "He agreed .", 1.0)],
    "stsb": [G.GlueExample("A plane.", "An air plane.", 3.8)],
    "rte": [G.GlueExample("A is B.", "B is A.", 1.0), G.GlueExample("X.", "X.", 0.0)],
    "wnli": [G.GlueExample("I saw it.", "It was seen.", 1.0)],
    "qqp": [G.GlueExample("How do I learn?", "How to learn?", 1.0), G.GlueExample("Why?", "When?", 0.0)],
    "qnli": [G.GlueExample("Who won?", "Bob won the race.", 0.0), G.GlueExample("When?", "It rained.", 1.0)],
    "mnli": [G.GlueExample("A man sleeps.", "A man rests.", 1.0), G.GlueExample("Yes.", "No.", 2.0)],
}


def test_mnli_dev_layout_and_header_errors(tmp_path):
    """Columns are found by header name: MNLI's dev files carry label1..label5 before gold_label."""
    head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *[f"label{i}" for i in range(1, 6)],
            "gold_label"]
    row = ["0", "1", "1e", "slate", "(", ")", "(", ")", "P.", "H.", "neutral", "neutral", "entailment",
           "entailment", "neutral", "entailment"]
    path = tmp_path / "dev_mismatched.tsv"
    path.write_text("\t".join(head) + "\n" + "\t".join(row) + "\n")
    assert G.read_glue("mnli", path) == [G.GlueExample("P.", "H.", 0.0)]  # gold_label, not label1
    path.write_text("\t".join(head[:-1]) + "\n" + "\t".join(row[:-1]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: MNLI header lacks column\(s\) \['gold_label'\]"):
        G.read_glue("mnli", path)
    path.write_text("\t".join(head) + "\n" + "\t".join(row[:-1] + ["maybe"]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: MNLI label 'maybe' is not one of "
                                         r"\['entailment', 'neutral', 'contradiction'\]"):
        G.read_glue("mnli", path)


def test_official_dev_files(tmp_path):
    assert G.official_dev_files(G.get_task("rte"), tmp_path) is None
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("x")
    assert G.official_dev_files(G.get_task("rte"), tmp_path) == [("", tmp_path / "RTE" / "dev.tsv")]
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "dev_matched.tsv").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"holds \['dev_matched.tsv'\] but not \['dev_mismatched.tsv'\]"):
        G.official_dev_files(G.get_task("mnli"), tmp_path)
    (tmp_path / "MNLI" / "dev_mismatched.tsv").write_text("x")
    assert [s for s, _ in G.official_dev_files(G.get_task("mnli"), tmp_path)] == ["m", "mm"]


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_glue_readers(tmp_path, task):
    path = tmp_path / "train.tsv"
    path.write_text(FIXTURES[task], encoding="utf-8")
    assert G.read_glue(task, path) == EXPECTED[task]
    # one column short, on the last line: the error names file and line
    lines = FIXTURES[task].rstrip("\n").split("\n")
    lines[-1] = lines[-1].rsplit("\t", 1)[0]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:{len(lines)}: malformed .* expected \d+ tab-separated"):
        G.read_glue(task, path)


def test_glue_bad_labels_and_names(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nok\t1\nfine\tpositive\n")
    with pytest.raises(ValueError, match=rf"{path}:3: SST-2 label 'positive' is not one of \['0', '1'\]"):
        G.read_glue("sst2", path)
    path.write_text(FIXTURES["stsb"].replace("3.800", "high"))
    with pytest.raises(ValueError, match=rf"{path}:2: STS-B score 'high' is not a number"):
        G.read_glue("stsb", path)
    with pytest.raises(ValueError, match="unknown GLUE task 'ax'; valid tasks: cola, sst2, mrpc, stsb, qqp, mnli, "
                                         "qnli, rte, wnli"):
        G.get_task("ax")
    assert G.get_task("SST-2") is G.get_task("sst2") and G.get_task("MNLI").num_classes == 3
    with pytest.raises(FileNotFoundError, match="RTE data file not found"):
        G.read_glue("rte", tmp_path / "missing.tsv")


def test_real_glue_files_parse(tmp_path):
    tarball = DATA / "glue-train.tar.gz"
    if not tarball.is_file():
        pytest.skip("../shared/data/glue-train.tar.gz not available")
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp_path, filter="data")
    sizes = {name: len(G.read_glue(name, next(tmp_path.rglob(f"{t.folder}/train.tsv"))))
             for name, t in G.GLUE_TASKS.items() if name not in ("qqp", "mnli", "qnli")}  # not offline
    assert sizes == dict(cola=8551, sst2=67349, mrpc=3667, stsb=5749, rte=2490, wnli=635)


def test_collate_pads_and_masks():
    b = G.collate([([2, 7, 3], [0, 0, 0], 1.0), ([2, 7, 8, 9, 3], [0, 0, 1, 1, 1], 0.0)], pad_id=0)
    assert b["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 7, 8, 9, 3]]
    assert b["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert b["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b["labels"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- metrics (hand-computed)

def test_metrics_on_hand_computed_examples():
    pred, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp 2, tn 1, fp 1, fn 1
    assert G.accuracy(pred, gold) == pytest.approx(3 / 5)
    assert G.f1_binary(pred, gold) == pytest.approx(4 / 6)
    assert G.matthews_corrcoef(pred, gold) == pytest.approx((2 * 1 - 1 * 1) / 6)
    assert G.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction: MCC 0, as scikit-learn
    assert G.f1_binary([0, 0], [1, 0]) == 0.0
    assert G.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / (2 ** 0.5 * (38 / 3) ** 0.5))
    # ties share the average rank: x ranks [1, 2.5, 2.5, 4]
    assert G.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert G.spearman([1, 5, 9], [10, 20, 1000]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_metrics_match_scikit_learn_and_scipy(seed):
    """Random labels with ties and imbalance: the same numbers as the libraries GLUE's own scripts use."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(seed)
    gold = (torch.rand(200, generator=g) < 0.3).long().tolist()
    pred = (torch.rand(200, generator=g) < 0.5).long().tolist()
    assert G.f1_binary(pred, gold) == pytest.approx(sklearn_metrics.f1_score(gold, pred))
    assert G.matthews_corrcoef(pred, gold) == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, pred))
    x = torch.randint(0, 6, (200,), generator=g).float().tolist()  # scores with many ties, as STS-B's
    y = (torch.tensor(x) + torch.randn(200, generator=g)).tolist()
    assert G.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-6)
    assert G.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-6)


def test_task_metrics_per_task():
    get = G.get_task
    assert G.task_metrics(get("cola"), [1, 0], [1, 0]) == dict(accuracy=1.0, mcc=1.0)
    assert G.task_metrics(get("mrpc"), [1, 0], [1, 1]) == dict(accuracy=0.5, f1=pytest.approx(2 / 3))
    assert set(G.task_metrics(get("sst2"), [1], [1])) == {"accuracy"}
    # QQP reports accuracy (its headline, as Table 4) and F1; MNLI accuracy over three classes
    assert G.task_metrics(get("qqp"), [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == dict(accuracy=pytest.approx(3 / 5),
                                                                               f1=pytest.approx(4 / 6))
    assert get("qqp").metric == "accuracy" and get("mrpc").metric == "f1" and get("cola").metric == "mcc"
    assert G.task_metrics(get("mnli"), [0, 1, 2, 2], [0, 2, 2, 1]) == dict(accuracy=0.5)
    m = G.task_metrics(get("stsb"), [0.5, 2.0, 4.0], [1.0, 2.0, 5.0])
    assert set(m) == {"pearson", "spearman"} and m["spearman"] == pytest.approx(1.0)
