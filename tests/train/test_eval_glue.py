"""`eval` of a glue run's checkpoint: the run's own split, a GLUE dev folder or any TSV file scored whole and named,
with the task's metrics as the run reported them. Tiny runs on real GLUE rows and BERT's vocabulary (../shared/data)."""
import csv
import json
import tarfile
from pathlib import Path

import pytest
import torch

from spikingformer import cli
from spikingformer.data import glue as gdata

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GLUE, TEXT = DATA / "glue-train.tar.gz", DATA / "text-corpus.tar.gz"
TINY_MODEL = "{depth: 1, dim: 32, num_heads: 2, T: 2, max_len: 32}"

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(tarball: Path, member: str, n: int) -> list[str]:
    """The header and the first ``n`` rows of a TSV file in ``tarball``."""
    with tarfile.open(tarball) as tar:
        return tar.extractfile(member).read().decode("utf-8").splitlines()[:n + 1]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _glue(root: Path, task: str, out: str, *sets: str) -> dict:
    """A tiny `glue` run on ``root``'s data (one thread: tiny models gain nothing from more); its summary."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = ["glue", "--config", "configs/glue.yaml", "--set", f"vocab={root}/bert-base-uncased-vocab.txt",
            "--set", f"data_dir={root}/glue", "--set", f"task={task}", "--set", "batch_size=8",
            "--set", "warmup_steps=1", "--set", "max_len=32", "--set", f"model_args={TINY_MODEL}",
            "--set", f"output={root}/{out}", "--set", "progress=false", "--json", f"{root}/{out}.json"]
    try:
        assert cli.main(args + [a for s in sets for a in ("--set", s)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((root / f"{out}.json").read_text())


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """SST-2's first 80 training rows as train.tsv and the next 48 as dev.tsv, and an SST-2 run that evaluated on
    that dev.tsv (lr high enough that its answers differ from row to row)."""
    if not (GLUE.exists() and TEXT.exists()):
        pytest.skip(f"{GLUE} or {TEXT} not present")
    root = tmp_path_factory.mktemp("glue")
    with tarfile.open(TEXT) as tar:
        tar.extractall(root, members=[tar.getmember("./bert-base-uncased-vocab.txt")], filter="data")
    sst2 = _rows(GLUE, "./SST-2/train.tsv", 128)
    _write(root / "glue" / "SST-2" / "train.tsv", sst2[:81])
    _write(root / "glue" / "SST-2" / "dev.tsv", sst2[:1] + sst2[81:])
    summary = _glue(root, "sst2", "sst2", "steps=30", "eval_every=30", "lr=1e-2")
    return root, summary


def _eval(capsys, ckpt, out: Path, *args) -> tuple[dict, str]:
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--json", str(out), *map(str, args)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_a_dev_folder_or_file_is_scored_whole_with_the_metrics_the_run_reported(real, tmp_path, capsys):
    root, run = real
    ckpt, folder, dev = root / "sst2" / "last.pt", root / "glue" / "SST-2", root / "glue" / "SST-2" / "dev.tsv"
    name = "dev (official GLUE dev split, 48 examples)"
    assert run["val_split"] == name
    for data in (None, folder, root / "glue"):  # the run's own split, its task folder, a GLUE data root
        r, out = _eval(capsys, ckpt, tmp_path / "r.json", *(("--data", data) if data else ()))
        assert (r["task"], r["split"], r["val_split"], r["val_examples"]) == ("sst2", "dev", name, 48)
        assert (r["val_metrics"], r["per_step"], r["value"]) == (run["val_metrics"], run["per_step"], run["value"])
        assert f"(after step 30) on {name} of {data or root / 'glue'}: accuracy {run['value']:.4f}, loss" in out

    r, out = _eval(capsys, ckpt, tmp_path / "t.json", "--data", dev, "--predictions", tmp_path / "p.csv")
    assert (r["split"], r["val_split"], r["data_dir"]) == ("test", f"test ({dev}, 48 examples)", str(dev))
    assert r["val_metrics"] == run["val_metrics"] and f"on test ({dev}, 48 examples): accuracy" in out
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [row["path"] for row in rows] == [f"{dev}:{line}" for line in range(2, 50)]  # every row, by its line
    assert [row["label"] for row in rows] == [line.split("\t")[1] for line in dev.read_text().splitlines()[1:]]
    assert sum(int(row["correct"]) for row in rows) / 48 == pytest.approx(run["value"])
    assert {row["class_1"] for row in rows} == {"0", "1"}  # the answers differ: the equalities above say something
    assert all(float(row["prob_1"]) >= float(row["prob_2"]) for row in rows)


def test_the_held_out_split_of_a_regression_run_is_named_and_scored_as_the_run_did(real, tmp_path, capsys):
    root, _ = real
    stsb = _rows(GLUE, "./STS-B/train.tsv", 80)
    train = _write(root / "glue" / "STS-B" / "train.tsv", stsb)
    run = _glue(root, "stsb", "stsb", "steps=3", "eval_every=3", "holdout_fraction=0.25")
    r, out = _eval(capsys, root / "stsb" / "last.pt", tmp_path / "r.json", "--predictions", tmp_path / "p.json")
    name = "val (held-out 20 of 80 STS-B train examples, random, seed 0; no official dev.tsv found)"
    assert (run["val_split"], r["val_split"], r["split"], r["val_examples"]) == (name, name, "val", 20)
    assert (r["metric"], r["val_metrics"], r["per_step"]) == ("pearson", run["val_metrics"], run["per_step"])
    assert f"on {name} of {root / 'glue'}: pearson " in out
    records = json.loads((tmp_path / "p.json").read_text())["predictions"]
    lines = train.read_text().splitlines()
    for rec in records:  # each held-out row of train.tsv, found by its line, with its gold score and the model's
        path, line = rec["path"].rsplit(":", 1)
        assert path == str(train) and rec["label"] == float(lines[int(line) - 1].split("\t")[-1])
    assert len({rec["path"] for rec in records}) == 20
    assert gdata.pearson([p["score"] for p in records], [p["label"] for p in records]) == pytest.approx(
        r["val_metrics"]["pearson"])
    assert cli.main(["eval", "--checkpoint", str(root / "stsb" / "last.pt"), "--predictions",
                     str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "path,label,score"


def test_another_tasks_file_a_missing_column_or_an_image_option_is_one_clear_line(real, tmp_path, capsys):
    root, _ = real
    ckpt = root / "sst2" / "last.pt"
    rte = _write(tmp_path / "RTE" / "dev.tsv", _rows(GLUE, "./RTE/train.tsv", 10))
    sst2 = (root / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()
    unlabelled = _write(tmp_path / "nolabel.tsv", [line.split("\t")[0] for line in sst2])
    wrong = (f"error: {rte}:1: SST-2 header lacks column(s) ['sentence']; found ['index', 'sentence1', 'sentence2', "
             f"'label'] ({ckpt} was fine-tuned on SST-2: --data takes a dev folder or TSV file of SST-2)")
    cases = [
        (["--data", rte], wrong),
        (["--data", rte.parent], wrong),  # another task's dev folder
        (["--data", tmp_path], f"error: --data {tmp_path}: no SST-2 dev.tsv in it or in {tmp_path}/SST-2"),
        (["--data", unlabelled], f"error: {unlabelled}:1: SST-2 header lacks column(s) ['label']"),
        (["--data", tmp_path / "nothing"], f"error: --data {tmp_path / 'nothing'}: no such file or folder"),
        (["--early-exit", "0.9", "--plot", tmp_path / "x.png"], "error: --early-exit, --plot: for image and event "
                                                                f"classifiers; {ckpt} holds the text model"),
        (["--set", "val_split=holdout"], f"error: --set val_split: {ckpt} is scored on the split and task its run "
                                         "used"),
    ]
    for args, message in cases:
        assert cli.main(["eval", "--checkpoint", str(ckpt), *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err


def test_mnli_folders_give_both_dev_files_named_as_glue_names_them(tmp_path):
    from spikingformer.train.glue import _given

    mnli = gdata.get_task("mnli")
    head = "\t".join(["sentence1", "sentence2", "gold_label"])
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [head, "a\tb\tneutral"])
    with pytest.raises(FileNotFoundError, match=r"holds \['dev_matched.tsv'\] but not \['dev_mismatched.tsv'\]"):
        _given(mnli, tmp_path, 0)
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [head, "a\tb\tneutral", "c\td\tentailment"])
    for folder in (tmp_path, tmp_path / "MNLI"):
        split, files = _given(mnli, folder, 0)
        assert split == "dev" and [(sfx, name, len(rows)) for sfx, name, rows, _ in files] == [
            ("m", "dev_matched (official GLUE dev split, 1 examples)", 1),
            ("mm", "dev_mismatched (official GLUE dev split, 2 examples)", 2)]


def test_eval_help_names_glue(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "GLUE" in capsys.readouterr().out
