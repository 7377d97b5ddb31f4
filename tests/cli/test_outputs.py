"""Every command checks the files it is asked to write (--json, --csv, --plot, --out, --output) before its
work, not after it: a path that cannot be written is a usage error (2) that names the option and the path."""
import pytest

from spikingformer import cli
from spikingformer.utils.outputs import check_output

# each command, how it is started, and the function that does its work (which must never run)
COMMANDS = {
    "models": (["models", "spikingformer_4_256"], "spikingformer.create_model"),
    "eval": (["eval", "--checkpoint", "run.pt"], "spikingformer.train.scoring.evaluate_checkpoint"),
    "energy": (["energy", "--model", "spikingformer_4_256"], "spikingformer.cli.energy.prepare"),
    "verify": (["verify", "--model", "spikingformer_4_256"], "spikingformer.cli.verify.prepare"),
    "predict": (["predict", "cat.png", "--checkpoint", "run.pt"], "spikingformer.train.predict.load_predictor"),
    "export": (["export", "--checkpoint", "run.pt"], "spikingformer.deploy.export.export"),
    "demo": (["demo"], "spikingformer.cli.demo._train"),
    "mlm": (["mlm"], "spikingformer.train.mlm.run_mlm"),
    "glue": (["glue"], "spikingformer.train.glue.run_glue"),
    "pretrain": (["pretrain", "--config", "mae.yaml"], "spikingformer.train.pretrain.run"),
}
FILES = [("models", "--json"), ("eval", "--json"), ("eval", "--plot"), ("eval", "--predictions"),
         ("energy", "--json"), ("energy", "--csv"), ("energy", "--plot"),
         ("verify", "--json"), ("predict", "--json"), ("predict", "--csv"), ("export", "--out"), ("demo", "--json"),
         ("mlm", "--json"), ("glue", "--json"), ("pretrain", "--json")]
FOLDERS = [("verify", "--plot"), ("demo", "--output")]


def _refused(monkeypatch, capsys, command: str, option: str, path) -> str:
    """Run ``command`` with ``option path``, its work made to fail the test; return its error line."""
    argv, work = COMMANDS[command]
    monkeypatch.setattr(work, lambda *a, **k: pytest.fail(f"{command} worked before checking {option}"))
    assert cli.main(argv + [option, str(path)]) == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("command,option", FILES + FOLDERS)
def test_a_path_under_a_file_is_refused_before_the_work(command, option, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes").write_text("a file, not a folder")
    out = tmp_path / "notes" / "out" / "result"
    assert _refused(monkeypatch, capsys, command, option, out) == (
        f"error: {option} {out}: {tmp_path / 'notes'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # nothing written or created


@pytest.mark.parametrize("command,option", FILES)
def test_a_folder_given_for_a_file_is_refused_before_the_work(command, option, tmp_path, monkeypatch, capsys):
    assert _refused(monkeypatch, capsys, command, option, tmp_path) == (
        f"error: {option} {tmp_path}: is a folder, not a file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command,option", FOLDERS)
def test_a_file_given_for_a_folder_is_refused_before_the_work(command, option, tmp_path, monkeypatch, capsys):
    given = tmp_path / "figs"
    given.write_text("a file, not a folder")
    assert _refused(monkeypatch, capsys, command, option, given) == f"error: {option} {given}: is a file, not a folder"


def test_writable_paths_pass_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("out.json", tmp_path / "new" / "deeper" / "out.json", tmp_path / "existing.json"):
        check_output("--json", path)
    (tmp_path / "existing.json").write_text("{}")
    check_output("--json", tmp_path / "existing.json")  # an existing file is replaced
    check_output("--plot", tmp_path, folder=True)
    check_output("--plot", tmp_path / "new", folder=True)
    check_output("--json", None)
    assert [p.name for p in tmp_path.iterdir()] == ["existing.json"]


@pytest.mark.parametrize("command", ["eval", "energy"])
def test_a_figure_is_named_by_a_format_it_can_be_written_in(command, tmp_path, monkeypatch, capsys):
    out = tmp_path / "steps.xyz"
    assert _refused(monkeypatch, capsys, command, "--plot", out) == (
        f"error: --plot {out}: the file's name must end in .png, .pdf, .svg")


def test_a_figure_is_written_in_its_suffixs_format(tmp_path):
    from spikingformer.utils.outputs import pyplot, save_figure

    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")):
        fig, _ = pyplot().subplots()
        save_figure(fig, tmp_path / f"f{suffix}")
        assert (tmp_path / f"f{suffix}").read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png", "f.svg"]  # no temporary left
