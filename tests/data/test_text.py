"""Text data: WordPiece tokenizer and masked-LM blocks."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from spikingformer.data import text as T

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GOLDEN = Path(__file__).with_name("wordpiece_golden.json")  # written by make_wordpiece_golden.py with HF tokenizers
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
        pytest.skip("needs the real 30,522-entry bert-base-uncased vocabulary: "
                    "../shared/data/text-corpus.tar.gz (beside the repository) is not available")
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
    ("a\U0002B820b", ["a", "[UNK]", "b"]),  # CJK Ext. E starts at U+2B820 (BERT, Unicode); HF's typo: U+2B920
    ("a\u00a0b\tc\x00", ["a", "b", "[UNK]"]),                 # Zs whitespace, control characters dropped
    ("ca\u200bfe th\ue000e cat\u0378", ["cafe", "the", "[UNK]"]),  # format, private use dropped; unassigned kept
    ("the [MASK] cat [SEP]", ["the", "[MASK]", "cat", "[SEP]"]),  # special tokens stay whole
    ("a,[UNK]b[MASK].", ["a", ",", "[UNK]", "b", "[MASK]", "."]),  # ... even inside a word (WikiText "15,<unk>")
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
    assert bert.tokenize("ΟΔΟΣ") == ["ο", "##δ", "##ο", "##σ"]  # lower-cased per character: no final "ς"
    assert len(bert) == 30522 and (bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id) == \
        (0, 100, 101, 102, 103)


def test_reproduces_hf_reference_texts(bert):
    # Hard cases and corpus sentences: our ids equal HF tokenizers' for bert-base-uncased, from the vocabulary alone.
    cases = json.loads(GOLDEN.read_text(encoding="utf-8"))["texts"]
    wrong = [(c["text"], bert.tokenize(c["text"]), bert.decode(c["ids"]))
             for c in cases if bert.encode(c["text"]) != c["ids"]]
    assert len(cases) > 60 and not wrong, f"{len(wrong)} of {len(cases)} texts differ (text, ours, HF): {wrong}"


def test_reproduces_hf_reference_encodings(bert):
    # [CLS] a [SEP] (b [SEP]) with token_type_ids, cut longest-first to max_len, as HF encodes GLUE pairs.
    cases = json.loads(GOLDEN.read_text(encoding="utf-8"))["encodings"]
    wrong = []
    for c in cases:
        b = bert.encode(c["b"]) if c["b"] is not None else None
        ids, segs = bert.encode_pair(bert.encode(c["a"]), b, c["max_len"])
        if (ids, segs) != (c["ids"], c["token_type_ids"]):
            wrong.append((c["a"], c["b"], c["max_len"], bert.decode(ids), bert.decode(c["ids"])))
    assert len(cases) > 40 and not wrong, f"{len(wrong)} of {len(cases)} encodings differ: {wrong}"


def test_encode_pair_truncates_longest_first(toy):
    ids, segs = toy.encode_pair([10, 11, 12, 13, 14], [20, 21], max_len=7)
    assert ids == [2, 10, 11, 3, 20, 21, 3] and segs == [0, 0, 0, 0, 1, 1, 1]
    # both cut: the shorter text gets half the room rounded down, the longer (b on a tie) the odd token, as HF
    assert toy.encode_pair(list(range(10, 16)), list(range(20, 25)), max_len=10)[0] == \
        [2, 10, 11, 12, 13, 3, 20, 21, 22, 3]
    assert toy.encode_pair(list(range(10, 15)), list(range(20, 25)), max_len=10)[0] == \
        [2, 10, 11, 12, 3, 20, 21, 22, 23, 3]
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
