"""Text data for the language path: BERT WordPiece tokenizer, corpus reading and masked-LM blocks.

The tokenizer reproduces BERT's (Devlin et al. 2019) ``BasicTokenizer`` + ``WordpieceTokenizer``
from a vocabulary file alone, so ``bert-base-uncased-vocab.txt`` gives the same ids as the
reference implementation.  Masked-LM data follows BERT's recipe (15 % of tokens chosen; of
those 80 % ``[MASK]``, 10 % a random token, 10 % kept), seeded per block and epoch so a resumed
run sees the same masks.  GLUE readers, batching and metrics: ``data.glue``.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import torch
from torch import Tensor

from ..utils.errors import InputError

__all__ = ["WordPieceTokenizer", "read_corpus", "read_text", "wikitext_detokenize", "MLMBlocks", "mask_tokens"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")  # keeps the matches
IGNORE_INDEX = -100  # label of positions the MLM loss skips (torch's cross_entropy default)


def read_text(path: Path, error: type[Exception] = ValueError, encoding: str = "utf-8") -> str:
    """The text of a file a user brings; bytes that are not ``encoding`` raise ``error`` naming the file and the
    first bad byte (Python's own message names neither the file nor what to check)."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise error(f"{path} is not {encoding.upper().replace('-SIG', '')} text: byte {data[e.start]:#04x} at "
                    f"offset {e.start} ({e.reason}); is it a binary or differently encoded file?") from None


# ---------------------------------------------------------------- tokenizer

def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # Control, format and private-use characters are dropped; unassigned code points (Cn) are kept, as HF does.
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Co")


def _is_punctuation(ch: str) -> bool:
    # BERT counts every non-alphanumeric ASCII character as punctuation ("$", "^", "`"), not only category P*.
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    # The CJK Unified Ideographs blocks, as the original BERT (HF tokenizers starts Extension E at U+2B920).
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT tokenizer: basic split (clean, CJK, whitespace, lower-case + strip accents,
    punctuation), then greedy longest-match-first WordPiece with ``##`` continuations.

    Special tokens (``[CLS]``, ``[MASK]``, ...) written in the text, exactly so cased, are kept
    whole wherever they stand, even inside a word (``"15,[UNK]"``), and the text between them is
    tokenized on its own, as Hugging Face's tokenizer does.  A word longer than
    ``max_chars_per_word`` or with no WordPiece cover becomes ``[UNK]``.

    Checked against HF ``tokenizers`` (``tests/data/wordpiece_golden.json``).  It differs only on rare
    characters: the first 256 ideographs of CJK Extension E (U+2B820..U+2B91F) are split out here as
    in the original BERT and the Unicode block, where HF's range starts at U+2B920 by a typo; and
    character categories come from Python's ``unicodedata``, newer than the tables compiled into HF
    (Unicode 8.0), so the few hundred marks and punctuation added since, or re-categorised, differ.
    """

    def __init__(self, vocab_file: str | Path, lowercase: bool = True, max_chars_per_word: int = 100):
        path = Path(vocab_file)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        tokens = read_text(path).split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.vocab]
        if missing:
            raise InputError(f"{path} is not a BERT WordPiece vocabulary: it lacks {missing}")
        self.inv_vocab = tokens
        self.lowercase = lowercase
        self.max_chars_per_word = max_chars_per_word
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset(self.vocab[t] for t in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.inv_vocab)

    def basic_tokenize(self, text: str) -> list[str]:
        """Words and punctuation marks of ``text``, special tokens among them untouched."""
        parts = _SPECIAL_SPLIT.split(text)  # text, special, text, ..., text
        return [w for i, part in enumerate(parts) for w in ([part] if i % 2 else self._split_words(part))]

    def _split_words(self, text: str) -> list[str]:
        text = "".join(" " if _is_whitespace(c) else c for c in text
                       if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
        text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        words = []
        for word in text.split():
            if self.lowercase:  # character by character, as HF: a word-final "Σ" becomes "σ", not "ς"
                word = "".join(c for c in unicodedata.normalize("NFD", "".join(c.lower() for c in word))
                               if unicodedata.category(c) != "Mn")
            piece = ""
            for c in word:
                if _is_punctuation(c):
                    words += [piece, c] if piece else [c]
                    piece = ""
                else:
                    piece += c
            if piece:
                words.append(piece)
        return words

    def wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    break
                end -= 1
            if end == start:  # no cover: the whole word is unknown, as BERT does
                return ["[UNK]"]
            pieces.append(sub)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self.basic_tokenize(text) for p in
                ([w] if w in SPECIAL_TOKENS else self.wordpiece(w))]

    def encode(self, text: str) -> list[int]:
        return [self.vocab[t] for t in self.tokenize(text)]

    def decode(self, ids) -> list[str]:
        return [self.inv_vocab[int(i)] for i in ids]

    def encode_pair(self, a: list[int], b: list[int] | None, max_len: int) -> tuple[list[int], list[int]]:
        """``[CLS] a [SEP] (b [SEP])`` and its segment ids, cut longest-first to ``max_len``.

        As HF's ``longest_first``: when a pair is too long, the shorter text (``a`` on a tie) keeps
        its length up to half the room, rounded down, and the other text gets the rest, so an odd
        token of room goes to the longer text.
        """
        budget = max_len - (3 if b is not None else 2)
        if budget < 1:
            raise InputError(f"max_len {max_len} leaves no room for text beside the special tokens")
        if b is None:
            a = a[:budget]
        elif len(a) + len(b) > budget:
            short = min(len(a), len(b), budget // 2)
            n_a = short if len(a) <= len(b) else budget - short
            a, b = a[:n_a], b[:budget - n_a]
        ids = [self.cls_id, *a, self.sep_id]
        segs = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            segs += [1] * (len(b) + 1)
        return ids, segs


# ---------------------------------------------------------------- masked-LM data

def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's ``@-@`` / ``@,@`` / ``@.@`` splits and map ``<unk>`` to ``[UNK]``."""
    for src, dst in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), ("<unk>", "[UNK]")):
        text = text.replace(src, dst)
    return text


def read_corpus(path: str | Path, tokenizer: WordPieceTokenizer) -> Tensor:
    """Token ids of a whole text file (WikiText ``.tokens`` files are detokenized first), as one 1-d tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text corpus not found: {path}")
    text = read_text(path)
    if path.suffix == ".tokens":
        text = wikitext_detokenize(text)
    ids = [i for line in text.split("\n") if line.strip() for i in tokenizer.encode(line)]
    if not ids:
        raise InputError(f"{path} holds no text")
    return torch.tensor(ids, dtype=torch.long)


def mask_tokens(ids: Tensor, generator: torch.Generator, mask_id: int, maskable: Tensor, replacements: Tensor,
                mask_prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT masking: each ``maskable`` position is chosen with ``mask_prob``; a chosen token becomes
    ``[MASK]`` (80 %), a random token from ``replacements`` (10 %) or stays (10 %).

    Returns ``(inputs, labels)``; ``labels`` holds the original id at chosen positions and
    ``IGNORE_INDEX`` elsewhere.
    """
    chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & maskable
    fate = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (fate < 0.8)] = mask_id
    swap = chosen & (fate >= 0.8) & (fate < 0.9)
    inputs[swap] = replacements[torch.randint(len(replacements), ids.shape, generator=generator)][swap]
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


class MLMBlocks(torch.utils.data.Dataset):
    """Contiguous blocks ``[CLS] t_1 .. t_{L-2} [SEP]`` cut from a token stream, masked per ``(seed, epoch, index)``.

    Blocks never overlap; the stream's tail shorter than a block is dropped.  Call
    ``set_epoch`` to draw fresh masks: the same ``(seed, epoch, index)`` always gives the same block.
    """

    def __init__(self, stream: Tensor, block_len: int, tokenizer: WordPieceTokenizer, seed: int = 0,
                 mask_prob: float = 0.15):
        if block_len < 3:
            raise InputError(f"block_len must be >= 3 (two special tokens + text), got {block_len}")
        body = block_len - 2
        n = len(stream) // body
        if n < 1:
            raise InputError(f"the corpus has {len(stream)} tokens, fewer than one block of {body}")
        self.blocks = stream[:n * body].view(n, body)
        self.tok, self.seed, self.mask_prob, self.epoch = tokenizer, seed, mask_prob, 0
        self.special = torch.tensor(sorted(tokenizer.special_ids))
        self.replacements = torch.tensor([i for i in range(len(tokenizer)) if i not in tokenizer.special_ids])
        self.maskable = torch.ones(block_len, dtype=torch.bool)
        self.maskable[[0, -1]] = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = torch.cat([torch.tensor([self.tok.cls_id]), self.blocks[i], torch.tensor([self.tok.sep_id])])
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i) % 2 ** 63)
        maskable = self.maskable & ~torch.isin(ids, self.special)  # a literal [UNK] in the corpus is no target
        inputs, labels = mask_tokens(ids, g, self.tok.mask_id, maskable, self.replacements, self.mask_prob)
        return dict(input_ids=inputs, token_type_ids=torch.zeros_like(ids),
                    attention_mask=torch.ones_like(ids, dtype=torch.bool), labels=labels)
