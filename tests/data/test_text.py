"""Text data: WordPiece tokenizer, masked-LM blocks, GLUE readers and metrics."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from spikingformer.data import text as T

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: Path, words) -> Path:
    path.write_text("\n".join([*SPECIALS, *words]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def toy(tmp_path):
    words = ["un", "##aff", "##able", "runn", "##ing", "cafe", "a", "b", ",", ".", "!", "中", "国", "the", "cat"]
    return T.WordPieceTokenizer(write_vocab(tmp_path / "vocab.txt", words))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tarball = DATA / "text-corpus.tar.gz"
    if not tarball.is_file():
        pytest.skip("../shared/data/text-corpus.tar.gz not available")
    out = tmp_path_factory.mktemp("corpus")
    with tarfile.open(tarball) as tf:
        member = next(m for m in tf.getmembers() if Path(m.name).name == "bert-base-uncased-vocab.txt")
        tf.extract(member, out, filter="data")
    return T.WordPieceTokenizer(out / member.name)


# ---------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("text, pieces", [
    ("unaffable", ["un", "##aff", "##able"]),                 # BERT's own WordPiece docstring example
    ("Running, the CAT!", ["runn", "##ing", ",", "the", "cat", "!"]),
    ("Café", ["cafe"]),                                       # lower-case + accent stripping (NFD, drop Mn)
    ("a,b.", ["a", ",", "b", "."]),                           # punctuation splits inside a word
    ("中国", ["中", "国"]),                                    # CJK characters are words of their own
    ("a\u00a0b\tc\x00", ["a", "b", "[UNK]"]),                 # Zs whitespace, control characters dropped
    ("the [MASK] cat [SEP]", ["the", "[MASK]", "cat", "[SEP]"]),  # special tokens stay whole
    ("unaffableness", ["[UNK]"]),                             # no WordPiece cover: the whole word is [UNK]
])
def test_toy_tokenizations(toy, text, pieces):
    assert toy.tokenize(text) == pieces


def test_long_words_are_unknown_and_ids_round_trip(toy):
    assert toy.tokenize("a" * 101) == ["[UNK]"]
    ids = toy.encode("the cat")
    assert ids == [5 + 13, 5 + 14] and toy.decode(ids) == ["the", "cat"]
    assert (toy.pad_id, toy.unk_id, toy.cls_id, toy.sep_id, toy.mask_id) == (0, 1, 2, 3, 4)


def test_known_bert_base_uncased_tokenizations(bert):
    # Reference outputs of the original BERT tokenizer (Hugging Face documentation examples).
    assert bert.encode_pair(bert.encode("Hello, my dog is cute"), None, 32)[0] == \
        [101, 7592, 1010, 2026, 3899, 2003, 10140, 102]
    assert bert.tokenize("I have a new GPU!") == ["i", "have", "a", "new", "gp", "##u", "!"]
    assert bert.tokenize("Don't you love 🤗 Transformers? We sure do.") == \
        ["don", "'", "t", "you", "love", "[UNK]", "transformers", "?", "we", "sure", "do", "."]
    assert len(bert) == 30522 and (bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id) == \
        (0, 100, 101, 102, 103)


def test_encode_pair_truncates_longest_first(toy):
    ids, segs = toy.encode_pair([10, 11, 12, 13, 14], [20, 21], max_len=7)
    assert ids == [2, 10, 11, 3, 20, 21, 3] and segs == [0, 0, 0, 0, 1, 1, 1]
    ids, segs = toy.encode_pair([10, 11, 12], None, max_len=4)
    assert ids == [2, 10, 11, 3] and segs == [0] * 4
    with pytest.raises(ValueError, match="no room"):
        toy.encode_pair([1], [2], max_len=3)


def test_bad_vocab_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        T.WordPieceTokenizer(tmp_path / "nope.txt")
    (tmp_path / "v.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"not a BERT WordPiece vocabulary: it lacks \['\[PAD\]'"):
        T.WordPieceTokenizer(tmp_path / "v.txt")


def test_wikitext_detokenize():
    assert T.wikitext_detokenize("1 @,@ 000 km @-@ long , <unk> 3 @.@ 5") == "1,000 km-long , [UNK] 3.5"


# ---------------------------------------------------------------- masked-LM blocks

def test_mlm_masking_rates_layout_and_seeding(toy):
    stream = torch.randint(5, 20, (62 * 400,), generator=torch.Generator().manual_seed(0))
    ds = T.MLMBlocks(stream, 64, toy, seed=3)
    assert len(ds) == 400
    items = [ds[i] for i in range(len(ds))]
    ids = torch.stack([it["input_ids"] for it in items])
    labels = torch.stack([it["labels"] for it in items])
    orig = torch.cat([torch.full((400, 1), toy.cls_id), stream.view(400, 62), torch.full((400, 1), toy.sep_id)], 1)
    chosen = labels != -100
    assert (labels[chosen] == orig[chosen]).all()                    # labels: the original token
    assert not chosen[:, [0, -1]].any()                              # [CLS] and [SEP] are never targets
    assert (ids[~chosen] == orig[~chosen]).all()                     # unchosen tokens are untouched
    rate = chosen[:, 1:-1].float().mean().item()
    assert 0.14 < rate < 0.16
    masked = (ids[chosen] == toy.mask_id).float().mean().item()
    kept = (ids[chosen] == orig[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.125              # keep: 10 % + random draws of the same id
    swapped = ids[chosen][(ids[chosen] != toy.mask_id) & (ids[chosen] != orig[chosen])]
    assert not torch.isin(swapped, torch.tensor(sorted(toy.special_ids))).any()
    assert ((ids[chosen] != toy.mask_id) & (ids[chosen] != orig[chosen])).float().mean().item() > 0.07
    again = T.MLMBlocks(stream, 64, toy, seed=3)
    assert torch.equal(again[5]["input_ids"], items[5]["input_ids"])
    again.set_epoch(1)
    assert not torch.equal(again[5]["labels"], items[5]["labels"])
    assert items[0]["attention_mask"].all() and (items[0]["token_type_ids"] == 0).all()


def test_mlm_blocks_errors(toy):
    with pytest.raises(ValueError, match="fewer than one block"):
        T.MLMBlocks(torch.arange(5, 10), 64, toy)
    with pytest.raises(ValueError, match="block_len must be >= 3"):
        T.MLMBlocks(torch.arange(5, 10), 2, toy)


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
    "cola": [T.GlueExample("The cat sat.", None, 1.0), T.GlueExample("Cat the sat.", None, 0.0)],
    "sst2": [T.GlueExample("good film ", None, 1.0), T.GlueExample("bad film ", None, 0.0)],
    "mrpc": [T.GlueExample('He said " yes " .', "He agreed .", 1.0)],
    "stsb": [T.GlueExample("A plane.", "An air plane.", 3.8)],
    "rte": [T.GlueExample("A is B.", "B is A.", 1.0), T.GlueExample("X.", "X.", 0.0)],
    "wnli": [T.GlueExample("I saw it.", "It was seen.", 1.0)],
    "qqp": [T.GlueExample("How do I learn?", "How to learn?", 1.0), T.GlueExample("Why?", "When?", 0.0)],
    "qnli": [T.GlueExample("Who won?", "Bob won the race.", 0.0), T.GlueExample("When?", "It rained.", 1.0)],
    "mnli": [T.GlueExample("A man sleeps.", "A man rests.", 1.0), T.GlueExample("Yes.", "No.", 2.0)],
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
    assert T.read_glue("mnli", path) == [T.GlueExample("P.", "H.", 0.0)]  # gold_label, not label1
    path.write_text("\t".join(head[:-1]) + "\n" + "\t".join(row[:-1]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: MNLI header lacks column\(s\) \['gold_label'\]"):
        T.read_glue("mnli", path)
    path.write_text("\t".join(head) + "\n" + "\t".join(row[:-1] + ["maybe"]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: MNLI label 'maybe' is not one of "
                                         r"\['entailment', 'neutral', 'contradiction'\]"):
        T.read_glue("mnli", path)


def test_official_dev_files(tmp_path):
    assert T.official_dev_files(T.get_task("rte"), tmp_path) is None
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("x")
    assert T.official_dev_files(T.get_task("rte"), tmp_path) == [("", tmp_path / "RTE" / "dev.tsv")]
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "dev_matched.tsv").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"holds \['dev_matched.tsv'\] but not \['dev_mismatched.tsv'\]"):
        T.official_dev_files(T.get_task("mnli"), tmp_path)
    (tmp_path / "MNLI" / "dev_mismatched.tsv").write_text("x")
    assert [s for s, _ in T.official_dev_files(T.get_task("mnli"), tmp_path)] == ["m", "mm"]


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_glue_readers(tmp_path, task):
    path = tmp_path / "train.tsv"
    path.write_text(FIXTURES[task], encoding="utf-8")
    assert T.read_glue(task, path) == EXPECTED[task]
    # one column short, on the last line: the error names file and line
    lines = FIXTURES[task].rstrip("\n").split("\n")
    lines[-1] = lines[-1].rsplit("\t", 1)[0]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:{len(lines)}: malformed .* expected \d+ tab-separated"):
        T.read_glue(task, path)


def test_glue_bad_labels_and_names(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nok\t1\nfine\tpositive\n")
    with pytest.raises(ValueError, match=rf"{path}:3: SST-2 label 'positive' is not one of \['0', '1'\]"):
        T.read_glue("sst2", path)
    path.write_text(FIXTURES["stsb"].replace("3.800", "high"))
    with pytest.raises(ValueError, match=rf"{path}:2: STS-B score 'high' is not a number"):
        T.read_glue("stsb", path)
    with pytest.raises(ValueError, match="unknown GLUE task 'ax'; valid tasks: cola, sst2, mrpc, stsb, qqp, mnli, "
                                         "qnli, rte, wnli"):
        T.get_task("ax")
    assert T.get_task("SST-2") is T.get_task("sst2") and T.get_task("MNLI").num_classes == 3
    with pytest.raises(FileNotFoundError, match="RTE data file not found"):
        T.read_glue("rte", tmp_path / "missing.tsv")


def test_real_glue_files_parse(tmp_path):
    tarball = DATA / "glue-train.tar.gz"
    if not tarball.is_file():
        pytest.skip("../shared/data/glue-train.tar.gz not available")
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp_path, filter="data")
    sizes = {name: len(T.read_glue(name, next(tmp_path.rglob(f"{t.folder}/train.tsv"))))
             for name, t in T.GLUE_TASKS.items() if name not in ("qqp", "mnli", "qnli")}  # not offline
    assert sizes == dict(cola=8551, sst2=67349, mrpc=3667, stsb=5749, rte=2490, wnli=635)


def test_collate_pads_and_masks():
    b = T.collate([([2, 7, 3], [0, 0, 0], 1.0), ([2, 7, 8, 9, 3], [0, 0, 1, 1, 1], 0.0)], pad_id=0)
    assert b["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 7, 8, 9, 3]]
    assert b["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert b["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b["labels"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- metrics (hand-computed)

def test_metrics_on_hand_computed_examples():
    pred, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp 2, tn 1, fp 1, fn 1
    assert T.accuracy(pred, gold) == pytest.approx(3 / 5)
    assert T.f1_binary(pred, gold) == pytest.approx(4 / 6)
    assert T.matthews_corrcoef(pred, gold) == pytest.approx((2 * 1 - 1 * 1) / 6)
    assert T.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction: MCC 0, as scikit-learn
    assert T.f1_binary([0, 0], [1, 0]) == 0.0
    assert T.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / (2 ** 0.5 * (38 / 3) ** 0.5))
    # ties share the average rank: x ranks [1, 2.5, 2.5, 4]
    assert T.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert T.spearman([1, 5, 9], [10, 20, 1000]) == pytest.approx(1.0)


def test_task_metrics_per_task():
    get = T.get_task
    assert T.task_metrics(get("cola"), [1, 0], [1, 0]) == dict(accuracy=1.0, mcc=1.0)
    assert T.task_metrics(get("mrpc"), [1, 0], [1, 1]) == dict(accuracy=0.5, f1=pytest.approx(2 / 3))
    assert set(T.task_metrics(get("sst2"), [1], [1])) == {"accuracy"}
    # QQP reports accuracy (its headline, as Table 4) and F1; MNLI accuracy over three classes
    assert T.task_metrics(get("qqp"), [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == dict(accuracy=pytest.approx(3 / 5),
                                                                               f1=pytest.approx(4 / 6))
    assert get("qqp").metric == "accuracy" and get("mrpc").metric == "f1" and get("cola").metric == "mcc"
    assert T.task_metrics(get("mnli"), [0, 1, 2, 2], [0, 2, 2, 1]) == dict(accuracy=0.5)
    m = T.task_metrics(get("stsb"), [0.5, 2.0, 4.0], [1.0, 2.0, 5.0])
    assert set(m) == {"pearson", "spearman"} and m["spearman"] == pytest.approx(1.0)
