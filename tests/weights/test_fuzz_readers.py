"""Every reader of outside bytes, fuzzed (benchmarks/fuzz_readers.py, seeded from ../shared/data): only the
library's own errors, naming the file, may escape; no hang, no allocation a header merely claims."""
from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from spikingformer.data import DataError
from spikingformer.data.event_formats import read_npz_events
from spikingformer.data.events import nmnist_label_list
from spikingformer.data.glue import read_glue
from spikingformer.data.text import WordPieceTokenizer, read_corpus
from spikingformer.train.config import ConfigError, load_config
from spikingformer.weights.checkpoint import (
    CheckpointError,
    load_weights,
    save_checkpoint,
)

from ..benchmarks import load_script

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


def test_npz_of_arrays_that_are_not_numbers_is_refused(tmp_path):
    path = tmp_path / "sample.npz"
    np.savez(path, t=np.array(["a", "b"]), x=np.array([1, 2]), y=np.array([1, 2]), p=np.array([1, 0]))
    with pytest.raises(DataError, match=r"event arrays must hold numbers; \{'t': '<U1'\} do not"):
        read_npz_events(path)  # was numpy's "invalid literal for int() with base 10", naming no file


def _billion_laughs(levels: int = 8) -> str:
    lines = ["model_args:", "  a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(levels - 1)]
    return "\n".join(lines + [f"lr: *{chr(97 + levels - 1)}"]) + "\n"


@pytest.mark.parametrize("text, message", [
    ("lr: " + "[" * 5000, "nested deeper than 32 levels"),       # was a RecursionError in PyYAML's composer
    (_billion_laughs(), r"YAML aliases \(\*a\) are not supported"),  # was a 226 MB error message (9**8 'x'), 7 s
], ids=["deep", "billion-laughs"])
def test_recipe_that_would_not_end_is_refused(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(path)
    assert str(path) in str(e.value) and len(str(e.value)) < 300


def test_config_anchors_without_aliases_still_load(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: &e 3\nmodel_args: {depth: 1}\n")
    assert load_config(path).epochs == 3


def test_safetensors_metadata_nested_thousands_deep_is_malformed(tmp_path):
    from safetensors.torch import save_file

    from spikingformer.weights.checkpoint import METADATA_FORMAT

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), {"format": METADATA_FORMAT, "model": "spikingformer_2_64",
                                                 "model_args": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match="malformed spikingformer metadata"):
        load_weights(path)  # was json's RecursionError


@pytest.mark.parametrize("state, message", [
    ({1: torch.zeros(1), "a": torch.zeros(1)}, "holds no state_dict of tensors"),  # was AttributeError: startswith
    ({"model": {1: torch.zeros(1)}}, "holds no state_dict of tensors"),
    ({"format": "spikingformer.checkpoint", "version": 1, "model": {"w": torch.zeros(1)}, "meta": [1]},
     r"its record of the model \(meta\) is a list"),                               # was AttributeError: get
])
def test_checkpoint_of_odd_python_values_is_refused_by_name(tmp_path, state, message):
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message):
        load_weights(path)


def test_run_checkpoint_reader_lists_keys_of_any_type(tmp_path):
    from spikingformer.weights.checkpoint import load_checkpoint

    torch.save({1: 2, "a": 3}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"not a spikingformer checkpoint .*found \['1', 'a'\]"):
        load_checkpoint(tmp_path / "odd.pt")  # was TypeError: '<' not supported between 'str' and 'int'


def _spanning_disks(archive: bytes) -> bytes:
    """``archive`` with a zip64 locator saying it spans 2 disks, just before its end record: Python's
    ``zipfile.is_zipfile`` then raises BadZipFile itself instead of answering."""
    end = archive.rindex(b"PK\x05\x06")
    return archive[:end] + b"PK\x06\x07" + (0).to_bytes(4, "little") + (0).to_bytes(8, "little") + \
        (2).to_bytes(4, "little") + archive[end:]


def test_zip_that_zipfile_cannot_even_recognise_is_reported_by_every_reader(tmp_path):
    from spikingformer.weights.checkpoint import is_run_checkpoint

    ckpt, npz = tmp_path / "last.pt", tmp_path / "sample.npz"
    save_checkpoint({"model": {"w": torch.zeros(3)}}, ckpt)
    ckpt.write_bytes(_spanning_disks(ckpt.read_bytes()))
    np.savez(npz, t=np.arange(3), x=np.arange(3), y=np.arange(3), p=np.arange(3))
    npz.write_bytes(_spanning_disks(npz.read_bytes()))
    # all three raised BadZipFile ("zipfiles that span multiple disks"); torch's reader ignores the locator
    assert is_run_checkpoint(ckpt) is True
    with pytest.raises(CheckpointError, match="is damaged: its zip archive does not read back"):
        load_weights(ckpt)
    with pytest.raises(DataError, match="cannot read event file .*BadZipFile"):
        read_npz_events(npz)


def test_legacy_pickle_claiming_a_huge_string_is_not_allocated(tmp_path):
    path = tmp_path / "tiny.pt"
    path.write_bytes(b"\x80\x02X\xff\xff\xff\x3f")  # protocol 2, BINUNICODE of 2**30 bytes, then nothing
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="truncated or not a PyTorch file"):
            load_weights(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # was 1 GiB: the unpickler's read(n) on a file reserves n bytes before reading
