"""Fuzz every reader of outside bytes with hypothesis, seeded from the real files in ../shared/data.

Readers: N-MNIST ``.bs2``, AEDAT 3.1 and AEDAT 2 (written from real N-MNIST events: no real AEDAT file
is at hand), event ``.npz`` (SpikingJelly's and the event cache's), the N-MNIST ``#sample #class`` list and
Gesture label CSVs, GLUE TSVs (six tasks), a WordPiece vocabulary, a text corpus, YAML recipes, and
checkpoints in every accepted format (ours, timm's ``.pth.tar`` with official tensor names, a bare
state_dict in zip and legacy pickle form, ``.safetensors``).  Each input is a seed with a few mutations (bit flips, truncation,
inserted bytes, a splice of another seed, a 2/4/8-byte field overwritten by a huge or edge value).

A reader passes an input when it returns, or raises one of the library's own errors (``DataError``,
``CheckpointError``, ``ConfigError``, a ``ValueError``) whose message names the file, within ``LIMIT_S``
and without allocating more than ``MEMORY_LIMIT`` beyond its input (Python's and numpy's allocations, which
``tracemalloc`` traces; torch's C++ allocator it does not see).  Prints the inputs tried per reader.

    python benchmarks/fuzz_readers.py --examples 2000 [--readers npz,vocab] [--seed 0]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import tarfile
import tempfile
import time
import traceback
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LIMIT_S = 5.0                # per input: a reader that takes longer is hanging
MEMORY_LIMIT = 64 << 20      # bytes a reader may allocate on top of its input (seeds are a few KB)
BIG = (0, 0xFF, 0x7FFF, 0xFFFF, 2 ** 31, 2 ** 32 - 1, 2 ** 40, 2 ** 63, 2 ** 64 - 1)


class ReaderFailure(AssertionError):
    """A reader crashed, hung or over-allocated on an input."""


class Hang(BaseException):  # not an Exception: a reader's `except Exception` must not swallow it
    pass


@dataclass
class Reader:
    suffix: str
    read: Callable        # path -> anything; raises only the library's errors


# ----------------------------------------------------------------------------- seeds

def _members(tarball: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of the members ``names`` (paths inside the tarball, without ``./``) of ``tarball``."""
    if not tarball.is_file():
        raise FileNotFoundError(f"{tarball} not available")
    with tarfile.open(tarball) as tar:
        found = {m.name.removeprefix("./"): m for m in tar if m.isfile()}
        return {name: tar.extractfile(found[name]).read() for name in names}


def _lines(raw: bytes, n: int) -> bytes:
    return b"".join(raw.splitlines(keepends=True)[:n])


def _event_seeds(recordings: list[bytes], n_events: int = 300) -> dict[str, list[bytes]]:
    """Real N-MNIST recordings cut to ``n_events`` events, and the same events in the other event formats."""
    from spikingformer.data.event_formats import read_nmnist_bin

    bs2 = [r[:5 * n_events] for r in recordings]
    out = {"nmnist_bs2": bs2, "aedat3": [], "aedat2": [], "npz": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, raw in enumerate(bs2):
            (Path(tmp) / f"{i}.bs2").write_bytes(raw)
            ev = read_nmnist_bin(Path(tmp) / f"{i}.bs2")
            out["aedat3"].append(_aedat3(ev))
            out["aedat2"].append(_aedat2(ev))
            for compressed, cached in ((False, False), (True, True)):
                buf = io.BytesIO()
                arrays = {"events": ev} if cached else {k: ev[k] for k in ("t", "x", "y", "p")}
                (np.savez_compressed if compressed else np.savez)(buf, **arrays)
                out["npz"].append(buf.getvalue())
    return out


def _aedat3(ev: np.ndarray, per_packet: int = 100) -> bytes:
    chunks = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"]
    for i in range(0, len(ev), per_packet):
        e = ev[i:i + per_packet]
        header = np.array([(1, 1, 8, 4, 0, len(e), len(e), len(e))], "<u2,<u2,<u4,<u4,<u4,<u4,<u4,<u4")
        body = np.empty(len(e), [("data", "<u4"), ("ts", "<u4")])
        body["data"] = (e["x"].astype(np.uint32) << 17) | (e["y"].astype(np.uint32) << 2) | (e["p"].astype(np.uint32) << 1)
        body["ts"] = e["t"]
        chunks += [header.tobytes(), body.tobytes()]
    return b"".join(chunks)


def _aedat2(ev: np.ndarray) -> bytes:
    addr = ((127 - ev["x"].astype(np.uint32)) << 8) | ((127 - ev["y"].astype(np.uint32)) << 1) | (1 - ev["p"])
    words = np.stack([addr, ev["t"].astype(np.uint32)], 1).astype(">u4")
    return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + words.tobytes()


def _checkpoint_seeds() -> dict[str, list[bytes]]:
    """Small real checkpoints: ours (save_checkpoint), timm's with official tensor names and args, a bare
    state_dict (zip, and torch's legacy pickle format), and safetensors with and without ``spikingformer export``
    metadata."""
    import argparse as ap

    import torch
    from safetensors.torch import save as st_save

    from spikingformer.weights.checkpoint import METADATA_FORMAT
    from spikingformer.weights.checkpoint import save_checkpoint

    g = torch.Generator().manual_seed(0)
    ours = {"stem.weight": torch.randn(4, 2, generator=g), "head.fc.bias": torch.zeros(3)}
    official = {"patch_embed.proj_conv.weight": torch.randn(4, 2, 3, 3, generator=g),
                "block.0.attn.q_conv.weight": torch.randn(4, 4, 1, generator=g), "head.weight": torch.randn(3, 4)}

    def saved(obj, zipped: bool = True) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
        return buf.getvalue()

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint({"model": ours, "meta": {"model": "spikingformer_2_64", "model_args": {"T": 2},
                                                   "classes": ["a", "b", "c"]}, "config": {"lr": 0.1}, "epoch": 3},
                        Path(tmp) / "last.pt")
        run = (Path(tmp) / "last.pt").read_bytes()
    timm = saved({"state_dict": official, "epoch": 9, "args": ap.Namespace(dim=4, layer=1, time_step=2)})
    meta = {"format": METADATA_FORMAT, "model": "spikingformer_2_64", "model_args": '{"T": 2}', "bn_folded": "false"}
    return {"checkpoint": [run], "weights_pt": [run, timm, saved(ours), saved(official, zipped=False)],
            "weights_safetensors": [st_save(ours, meta), st_save(official)]}


def build_seeds(data: Path = DATA) -> dict[str, list[bytes]]:
    """Seed inputs of every reader (``READERS``), cut from the real files in ``data``."""
    nmnist = _members(data / "nmnist-small-train.tar.gz",
                      [f"nmnist-small/{n}" for n in ("1.bs2", "2.bs2", "3.bs2", "train1K.txt")])
    glue = _members(data / "glue-train.tar.gz", [f"{folder}/train.tsv" for folder in GLUE_FOLDERS.values()])
    text = _members(data / "text-corpus.tar.gz", ["bert-base-uncased-vocab.txt", "wikitext-2-valid.tokens"])
    seeds = _event_seeds([nmnist[f"nmnist-small/{i}.bs2"] for i in (1, 2, 3)])
    seeds["nmnist_labels"] = [_lines(nmnist["nmnist-small/train1K.txt"], 30)]
    seeds["gesture_labels"] = [  # rows as in IBM's DvsGesture release, which is not at handb"class,startTime_usec,endTime_usec\r\n1,80048239,85092709\r\n2,89431170,95231007\r\n"
                               b"11,323370727,330073484\r\n"]
    for task, folder in GLUE_FOLDERS.items():
        seeds[f"glue_{task}"] = [_lines(glue[f"{folder}/train.tsv"], 12)]
    seeds["vocab"] = [_lines(text["bert-base-uncased-vocab.txt"], 300)]
    seeds["corpus"] = [_lines(text["wikitext-2-valid.tokens"], 6)]
    recipes = Path(__file__).resolve().parents[1] / "configs"
    seeds["config"] = [(recipes / f"{r}.yaml").read_bytes() for r in ("nmnist", "cifar10_cpu", "cifar10_dvs")]
    seeds.update(_checkpoint_seeds())
    return seeds


# ----------------------------------------------------------------------------- readers

GLUE_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "wnli": "WNLI"}
_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "##s", ",", ".", "@", "-", "<", ">", "unk"]


def _tokenizer():
    from spikingformer.data.text import WordPieceTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
        return WordPieceTokenizer(Path(tmp) / "vocab.txt")


def _weights(path: Path):
    from spikingformer.weights.checkpoint import is_run_checkpoint, load_weights

    if not isinstance(is_run_checkpoint(path), bool):
        raise ReaderFailure(f"is_run_checkpoint({path}) returned no bool")
    return load_weights(path)


def _readers() -> dict[str, Reader]:
    from spikingformer.data import event_formats as ef
    from spikingformer.data.events import nmnist_label_list
    from spikingformer.data.glue import read_glue
    from spikingformer.data.text import WordPieceTokenizer, read_corpus
    from spikingformer.train.config import load_config
    from spikingformer.weights.checkpoint import load_checkpoint

    tok = _tokenizer()
    readers = {
        "nmnist_bs2": Reader(".bs2", ef.read_nmnist_bin),
        "aedat3": Reader(".aedat", ef.read_aedat3),
        "aedat2": Reader(".aedat", ef.read_cifar10_dvs_aedat),
        "npz": Reader(".npz", ef.read_npz_events),
        "nmnist_labels": Reader(".txt", nmnist_label_list),
        "gesture_labels": Reader(".csv", ef.read_gesture_labels),
        **{f"glue_{t}": Reader(".tsv", lambda p, t=t: read_glue(t, p)) for t in GLUE_FOLDERS},
        "vocab": Reader(".txt", WordPieceTokenizer),
        "corpus": Reader(".tokens", lambda p: read_corpus(p, tok)),
        "config": Reader(".yaml", load_config),
        "checkpoint": Reader(".pt", load_checkpoint),
        "weights_pt": Reader(".pth.tar", _weights),
        "weights_safetensors": Reader(".safetensors", _weights),
    }
    return readers


def allowed_errors() -> tuple[type, ...]:
    from spikingformer.data import DataError
    from spikingformer.train.config import ConfigError
    from spikingformer.weights.checkpoint import CheckpointError

    return DataError, CheckpointError, ConfigError, ValueError


# ----------------------------------------------------------------------------- mutations and the check

@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with 0-4 mutations: flip a bit, truncate, insert bytes, splice another seed, write a big field."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op, pos = draw(st.sampled_from(("flip", "truncate", "insert", "splice", "field"))), draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[pos:] = other[draw(st.integers(0, len(other))):]
        elif op == "field":
            width = draw(st.sampled_from((2, 4, 8)))
            value = draw(st.sampled_from(BIG)) % 2 ** (8 * width)
            data[pos:pos + width] = value.to_bytes(width, draw(st.sampled_from(("little", "big"))))
    return bytes(data)


@contextlib.contextmanager
def _time_limit(seconds: float):
    def expire(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check(name: str, reader: Reader, data: bytes, folder: Path) -> None:
    """Run ``reader`` on ``data`` written to a file; raise ``ReaderFailure`` unless it passes (module docstring)."""
    path = folder / f"input{reader.suffix}"
    path.write_bytes(data)
    try:
        with _time_limit(LIMIT_S), _traced() as peak, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's and numpy's remarks on odd bytes (pickle protocol 0, NaN casts)
            reader.read(path)
    except Hang:
        raise ReaderFailure(f"{name}: no answer within {LIMIT_S:g} s on {len(data)} bytes") from None
    except allowed_errors() as e:
        if str(path) not in str(e):
            raise ReaderFailure(f"{name}: {type(e).__name__} does not name the file: {e}") from e
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise ReaderFailure(f"{name}: {type(e).__name__} escaped ({Path(where.filename).name}:{where.lineno}): {e} "
                            f"(input begins {data[:48]!r})") from e
    if peak[0] > MEMORY_LIMIT + 64 * len(data):
        raise ReaderFailure(f"{name}: allocated {peak[0] / 2 ** 20:.0f} MiB for a {len(data)}-byte input")


def fuzz(name: str, seeds: list[bytes], examples: int, seed: int = 0, readers: dict | None = None,
         deadline_ms: float | None = 2000) -> int:
    """Fuzz one reader with ``examples`` inputs (hypothesis, seeded: the same inputs every run); returns how many
    it tried.  A failure raises ``ReaderFailure`` (shrunk to a small input, as hypothesis does; ``tried`` on it)."""
    reader = (readers or _readers())[name]
    tried = 0

    @hyp_seed(seed)
    @settings(max_examples=examples, deadline=deadline_ms, database=None, suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False, verbosity=Verbosity.quiet)
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        nonlocal tried
        tried += 1
        check(name, reader, data, folder)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            run()
        except ReaderFailure as e:
            e.tried = tried
            raise
        except Exception as e:  # hypothesis's DeadlineExceeded
            raise ReaderFailure(f"{name}: {type(e).__name__}: {e}") from e
    return tried


@contextlib.contextmanager
def _traced():
    """Yields a list that holds, on exit, the peak bytes allocated inside (numpy's included).  Tracing only the
    reader, not hypothesis's engine, keeps the cost small."""
    peak = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1000, help="inputs per reader")
    p.add_argument("--readers", default="", help="comma-separated names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=DATA, help="folder of the real data tarballs")
    args = p.parse_args(argv)
    seeds, readers = build_seeds(args.data), _readers()
    names = args.readers.split(",") if args.readers else list(readers)
    unknown = sorted(set(names) - set(readers))
    if unknown:
        p.error(f"unknown reader(s) {unknown}; valid: {', '.join(readers)}")
    total, failed = 0, 0
    for name in names:
        t0, tried, verdict = time.perf_counter(), 0, "ok"
        try:
            tried = fuzz(name, seeds[name], args.examples, args.seed, readers)
        except ReaderFailure as e:
            failed, tried, verdict = failed + 1, e.tried, f"FAIL {e}".splitlines()[0]
        total += tried
        print(f"{name:22s} {tried:7d} inputs  {time.perf_counter() - t0:6.1f} s  {verdict}", flush=True)
    print(f"{total} inputs tried over {len(names)} readers; {failed} reader(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
