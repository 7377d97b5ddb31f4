"""Write ``wordpiece_golden.json``: reference encodings of Hugging Face's BERT tokenizer for
``bert-base-uncased``, which ``test_text.py`` checks our ``WordPieceTokenizer`` against.

Run it only where HF ``tokenizers`` is installed (it is no dependency of this project), with the
shared data beside the repository, from the repository root::

    pip install --target /tmp/hf tokenizers
    PYTHONPATH=/tmp/hf python tests/data/make_wordpiece_golden.py [--data ../shared/data]

The reference is ``tokenizers.BertWordPieceTokenizer`` configured as bert-base-uncased's
tokenizer (``do_lower_case=True``; accents stripped because ``strip_accents`` is unset and follows
lower-casing; CJK ideographs split; ``[UNK]`` for a word over 100 characters or with no
WordPiece cover), on ``bert-base-uncased-vocab.txt`` from ``text-corpus.tar.gz``.  The ids come
from HF alone; our code is used only to read GLUE columns and to detokenize WikiText, i.e. to
pick the texts.  The file holds

- ``texts``: hand-made hard cases, then sentences drawn with a fixed seed from WikiText-2 valid/test
  (detokenized, ``<unk>`` -> ``[UNK]``, as ``read_corpus`` feeds them) and from the CoLA and SST-2
  training sets; each with its ids without special tokens (``WordPieceTokenizer.encode``);
- ``encodings``: full ``[CLS] a [SEP] (b [SEP])`` encodings with ``token_type_ids``, cut
  ``longest_first`` to ``max_len`` (``WordPieceTokenizer.encode_pair``): pairs drawn from the
  MRPC, STS-B, RTE and WNLI training sets, single sentences, and a few hard cases.

Left out on purpose, being documented differences (see ``WordPieceTokenizer``): the first 256
ideographs of CJK Extension E (U+2B820..U+2B91F) and characters whose Unicode category is newer
than the tables compiled into ``tokenizers`` (Unicode 8.0).
"""
from __future__ import annotations

import argparse
import json
import random
import tarfile
import tempfile
from pathlib import Path

from tokenizers import BertWordPieceTokenizer
from tokenizers import __version__ as tokenizers_version

from spikingformer.data.glue import get_task, read_glue
from spikingformer.data.text import wikitext_detokenize

HERE = Path(__file__).resolve().parent
MAX_CHARS_PER_WORD = 100  # bert-base-uncased's max_input_chars_per_word, also tokenizers' default

HARD = [
    # accents and case
    "café", "naïve", "Ångström", "CAFÉ Crème brûlée à la mode", "Zoë Saldaña, señor; façade coöperate",
    "cafe\u0301 decomposed", "Hello WORLD MiXeD CaSe iPhone McDONALD's", "İstanbul", "ΟΔΟΣ ΣΙΣΥΦΟΣ", "Straße ẞ",
    # punctuation, quotes, dashes, numbers
    "Wait...!!! ?!?! --- ((nested)) [brackets] {braces} <angles>",
    "a+b=c; x*y/z % 100 $5 ^2 `code` ~tilde |pipe| \\back @user #tag http://example.com/a?b=c&d=e",
    "don't it's 'quoted' \"double\" rock 'n' roll", "‘curly single’ “curly double” «guillemets» „low“ don’t",
    "well-known — em dash – en dash ‐ hyphen − minus state-of-the-art",
    "1,000,000 3.14159 1 234 567 $1,234.56 10⁶ ½ ² 1e-5 2019-03-15 12:30pm",
    # emoji, CJK and other scripts
    "Don't you love 🤗 Transformers? 😀👍🏽 ❤️ 👨‍👩‍👧", "中文字符 日本語のテキスト 한국어 텍스트", "漢字かなカナ混じり文",
    "𠀀𪜀𫝀\U0002B81D𬺰 outside-the-blocks", "क्षत्रिय हिन्दी", "العربية", "עברית", "Привет, мир!",
    # control, format, private-use, unassigned characters and whitespace
    "ctrl\x00chars\x01here\x7f\x1b[0m", "zero\u200bwidth\u200cjoin\u200d\ufeffbom soft\u00adhyphen",
    "private\ue000use\U000f0000 replacement\ufffdchar unassigned\u0378 here",
    "tab\tseparated\nnew\r\nlines\x0bvt\x0cff\x85nel", "line\u2028sep\u2029para",
    "nbsp\u00a0thin\u2009ideo\u3000space", "   leading and trailing   ", "", "  \t\n ",
    # word length: the 100-character limit of WordPiece
    "a" * 100, "a" * 101, "a" * 150, "supercalifragilistic" * 5 + "x" * 50,
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    # symbols without a WordPiece cover, compatibility forms
    "☃ ★ ♪ ∑ ∞ ≠ ⊕ ⌘", "Ⅻ ⅷ ǅ ﬀ ﬁne Ⓐⓑ ＡＢＣ ｆｕｌｌｗｉｄｔｈ ℌ", "ʼ ʻ ˈ µ Ω K Å ç̧ i̇",
    # WikiText's own markup, raw and as read_corpus detokenizes it
    "<unk> @-@ @,@ @.@ = = Heading = =", wikitext_detokenize("the 15 @,@ <unk> @-@ strong <unk> crowd"),
    # special tokens written in the text
    "[SEP] [MASK] [CLS] [PAD] [UNK]", "[sep] [mask] [Mask] [ SEP ]", "foo[SEP]bar [MASK]. ([CLS])",
    "x[MASK]y", "[[MASK]]", "[MASK][MASK]",
]

HARD_PAIRS = [  # (a, b, max_len)
    ("café [SEP] naïve", "Ångström!", 16),
    ("one two three four five", "six seven eight nine ten", 10),    # a tie cut with an odd token of room
    ("one two three four five six", "seven eight nine ten eleven", 10),
    ("a b c d e f g h i j k l", "x", 8),
    ("[MASK] is here", None, 5),
]


def reference(vocab: Path) -> BertWordPieceTokenizer:
    return BertWordPieceTokenizer(str(vocab), unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]",
                                  pad_token="[PAD]", mask_token="[MASK]", clean_text=True,
                                  handle_chinese_chars=True, strip_accents=None, lowercase=True,
                                  wordpieces_prefix="##")


def unpack(data: Path, out: Path) -> Path:
    for name in ("text-corpus.tar.gz", "glue-train.tar.gz"):
        with tarfile.open(data / name) as tf:
            tf.extractall(out, filter="data")
    return out


def find(root: Path, name: str) -> Path:
    return next(p for p in sorted(root.rglob(name)))


def train_file(root: Path, task) -> Path:
    return find(root, f"{task.folder}/train.tsv")


def pick_texts(root: Path, rng: random.Random) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Texts to encode alone, and pairs (or single sentences) to encode in full."""
    texts = []
    for split in ("valid", "test"):
        lines = find(root, f"wikitext-2-{split}.tokens").read_text(encoding="utf-8").split("\n")
        short = [wikitext_detokenize(s) for s in lines if 8 <= len(s.split()) <= 45]
        texts += rng.sample([s for s in short if "[UNK]" in s], 4) + rng.sample(short, 3)
    for name in ("cola", "sst2"):
        task = get_task(name)
        texts += [ex.text_a for ex in rng.sample(read_glue(task, train_file(root, task)), 8)]
    pairs = []
    for name in ("mrpc", "stsb", "rte", "wnli"):
        task = get_task(name)
        pairs += [(ex.text_a, ex.text_b) for ex in rng.sample(read_glue(task, train_file(root, task)), 8)]
    for name in ("cola", "sst2"):
        task = get_task(name)
        pairs += [(ex.text_a, None) for ex in rng.sample(read_glue(task, train_file(root, task)), 3)]
    return texts, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data",
                    help="folder holding text-corpus.tar.gz and glue-train.tar.gz (default: ../shared/data)")
    ap.add_argument("--out", type=Path, default=HERE / "wordpiece_golden.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(args.data, Path(tmp))
        ref = reference(find(root, "bert-base-uncased-vocab.txt"))
        texts, pairs = pick_texts(root, random.Random(0))
        singles = [dict(text=t, ids=ref.encode(t, add_special_tokens=False).ids) for t in HARD + texts]
        full = []
        cut = [*HARD_PAIRS, *((a, b, 32) for a, b in pairs[:16]), *((a, b, 128) for a, b in pairs[16:])]
        for a, b, max_len in cut:  # MRPC and STS-B pairs at 32 tokens (most get cut), the rest at 128
            ref.enable_truncation(max_len, strategy="longest_first")
            enc = ref.encode(a, b) if b is not None else ref.encode(a)
            full.append(dict(a=a, b=b, max_len=max_len, ids=enc.ids, token_type_ids=enc.type_ids))
        ref.no_truncation()
    header = dict(
        about="Hugging Face reference encodings for bert-base-uncased; written by make_wordpiece_golden.py",
        reference=dict(tokenizers=tokenizers_version, cls="tokenizers.BertWordPieceTokenizer",
                       vocab="bert-base-uncased-vocab.txt (30,522 entries)", lowercase=True,
                       strip_accents="unset (follows lowercase)", clean_text=True, handle_chinese_chars=True,
                       unk_token="[UNK]", wordpieces_prefix="##", max_input_chars_per_word=MAX_CHARS_PER_WORD,
                       truncation="longest_first"))
    body = ["{", f'  "about": {json.dumps(header["about"])},', f'  "reference": {json.dumps(header["reference"])},',
            '  "texts": [', ",\n".join(f"    {json.dumps(c)}" for c in singles), "  ],",
            '  "encodings": [', ",\n".join(f"    {json.dumps(c)}" for c in full), "  ]", "}"]
    args.out.write_text("\n".join(body) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(singles)} texts, {len(full)} full encodings")


if __name__ == "__main__":
    main()
