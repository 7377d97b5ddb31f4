"""Every reader of outside bytes, fuzzed (benchmarks/fuzz_readers.py, seeded from ../shared/data): only the
library's own errors, naming the file, may escape; no hang, no allocation a header merely claims."""
from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from spikingformer.checkpoint import CheckpointError, load_weights, save_checkpoint
from spikingformer.config import ConfigError, load_config
from spikingformer.data.event_formats import read_npz_events
from spikingformer.data.events import nmnist_label_list
from spikingformer.data.glue import read_glue
from spikingformer.data.sources import DataError
from spikingformer.data.text import WordPieceTokenizer, read_corpus

from .benchmarks import load_script

READERS = ["nmnist_bs2", "aedat3", "aedat2", "npz", "nmnist_labels", "gesture_labels", "glue_cola", "glue_sst2",
           "glue_mrpc", "glue_stsb", "glue_rte", "glue_wnli", "vocab", "corpus", "config", "checkpoint", "weights_pt",
           "weights_safetensors"]


@pytest.fixture(scope="module")
def fuzzer():
    with load_script("fuzz_readers") as module:
        try:
            seeds = module.build_seeds()
        except FileNotFoundError as e:
            pytest.skip(str(e))
        yield module, seeds, module._readers()


def test_every_reader_is_fuzzed(fuzzer):
    module, seeds, readers = fuzzer
    assert sorted(readers) == sorted(READERS) and all(seeds[name] for name in READERS)


@pytest.mark.parametrize("name", READERS)
def test_reader_survives_mutated_real_bytes(fuzzer, name, tmp_path):
    module, seeds, readers = fuzzer
    for data in seeds[name]:  # the unmutated seeds pass too
        module.check(name, readers[name], data, tmp_path)
    assert module.fuzz(name, seeds[name], examples=150, seed=0, readers=readers, deadline_ms=2000) >= 150


def test_script_reports_inputs_tried(fuzzer, capsys):
    module, *_ = fuzzer
    assert module.main(["--examples", "5", "--readers", "npz,vocab"]) == 0
    assert "10 inputs tried over 2 readers; 0 reader(s) failed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- what the fuzzer found

def _bad_utf8(path, text: str):
    path.write_bytes(b"\x80" + text.encode())
    return path


@pytest.mark.parametrize("what", ["glue", "vocab", "corpus", "label list", "config"])
def test_text_that_is_not_utf8_is_named_with_its_file(tmp_path, what):
    # each raised Python's bare UnicodeDecodeError: "'utf-8' codec can't decode byte 0x80 in position 0"
    good = tmp_path / "vocab.txt"
    good.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    read, text, error = {
        "glue": (lambda p: read_glue("sst2", p), "sentence\tlabel\nfine .\t1\n", ValueError),
        "vocab": (WordPieceTokenizer, good.read_text(), ValueError),
        "corpus": (lambda p: read_corpus(p, WordPieceTokenizer(good)), "the the\n", ValueError),
        "label list": (nmnist_label_list, "#sample #class\n1\t5\n", DataError),
        "config": (load_config, "epochs: 1\n", ConfigError),
    }[what]
    path = _bad_utf8(tmp_path / "input.txt", text)
    with pytest.raises(error, match="is not UTF-8 text: byte 0x80 at offset 0") as e:
        read(path)
    assert str(path) in str(e.value) and type(e.value) is not UnicodeDecodeError


def test_checkpoint_whose_zip_names_do_not_decode_is_damaged_not_a_crash(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    raw = bytearray(path.read_bytes())
    raw[30] = 0xFF  # the first member's name in its local header: torch's reader never looks, zipfile's does
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is damaged: its zip archive does not read back") as e:
        load_weights(path)
    assert str(path) in str(e.value)


def _forged_npz(n_events: int) -> bytes:
    """An .npz whose arrays hold 3 events but whose .npy headers claim ``n_events``."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(3, "<i8"))
    header["shape"] = (n_events,)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    npy.write(np.zeros(3, "<i8").tobytes())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for k in "txyp":
            z.writestr(f"{k}.npy", npy.getvalue())
    return out.getvalue()


@pytest.mark.parametrize("n_events", [2 ** 31, 2 ** 40])
def test_npz_header_claiming_huge_arrays_is_refused_before_allocating(tmp_path, n_events):
    # numpy allocates the claimed shape before reading: 16 GiB reserved for 2**31 events, a MemoryError for 2**40
    path = tmp_path / "sample.npz"
    path.write_bytes(_forged_npz(n_events))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"t.npy claims shape \({n_events},\) .* holds at most 24 bytes"):
            read_npz_events(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
