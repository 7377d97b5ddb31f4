"""The writers every output file goes through: atomic, and into folders that do not exist yet."""
import json

from spikingformer.utils.outputs import output_path, pyplot, save_figure, write_json


def test_output_path_makes_the_missing_folders(tmp_path):
    path = output_path(str(tmp_path / "a" / "b" / "r.json"))
    assert path == tmp_path / "a" / "b" / "r.json" and path.parent.is_dir() and not path.exists()


def test_writers_create_folders_and_leave_no_temporary_file(tmp_path):
    write_json(str(tmp_path / "j" / "r.json"), {"a": 1})
    write_json(tmp_path / "l" / "m.jsonl", [{"e": 1}, {"e": 2}], lines=True)
    fig = pyplot().figure()
    save_figure(fig, tmp_path / "p" / "f.png")
    assert json.loads((tmp_path / "j" / "r.json").read_text()) == {"a": 1}
    assert [json.loads(x) for x in (tmp_path / "l" / "m.jsonl").read_text().splitlines()] == [{"e": 1}, {"e": 2}]
    assert (tmp_path / "p" / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["f.png", "m.jsonl", "r.json"]


def test_json_is_strict_a_diverged_loss_is_null(tmp_path):
    write_json(tmp_path / "r.json", {"val_loss": float("nan"), "ppl": [float("inf"), 2.5], "n": 3})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val_loss": None, "ppl": [None, 2.5], "n": 3}


def test_a_failed_write_names_the_file_asked_for_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    import pytest

    from spikingformer.weights.checkpoint import save_checkpoint

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    for write, name in ((lambda p: write_json(p, {"a": 1}), "r.json"),
                        (lambda p: save_figure(pyplot().figure(), p), "f.png"),
                        (lambda p: save_checkpoint({"a": 1}, p), "last.pt")):
        with pytest.raises(OSError, match=f"^cannot write {tmp_path / name}: No space left on device$"):
            write(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == []
