"""One rule for every command's progress: a bar on a terminal, plain periodic lines in a log, never a carriage
return in a redirected log."""
import io
import json
import sys

import pytest
import torch

from spikingformer import cli, create_model
from spikingformer.utils import progress
from spikingformer.utils.progress import progress_bar

from ..train.test_glue import cli as text_cli
from ..train.test_glue import files, glue_args, mlm_args  # noqa: F401  (files: the fixture of tiny vocabulary and corpus)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_plain_lines_in_a_log(monkeypatch, capsys):
    from tqdm import tqdm

    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert isinstance(progress_bar([1, 2], "x"), tqdm)
    assert not isinstance(progress_bar([1, 2], "x", enabled=False), tqdm)
    monkeypatch.undo()

    bar = progress_bar(range(3, 5), "mlm", initial=3, total=5, every=0)
    bar.set_postfix(loss="2.113", refresh=False)
    assert list(bar) == [3, 4]
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[0].startswith("mlm: 4/5 (80 %), ")
    assert err.splitlines()[1].startswith("mlm: 5/5 (100 %), ") and err.splitlines()[1].endswith(", loss=2.113")
    assert list(progress_bar([1, 2], "x", every=0, enabled=False)) == [1, 2]
    assert list(progress_bar(iter([1]), "x", every=0)) == [1] and capsys.readouterr().err.startswith("x: 1, ")
    progress_bar([], "x").write("written either way")
    assert capsys.readouterr().out == "written either way\n"


def test_energy_with_progress_counts_as_without():
    from spikingformer.analysis.energy import estimate_energy

    two = [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)]
    model = create_model("spikingformer_4_256", depth=1, dim=32, num_heads=2, T=1)
    a, b = estimate_energy(model, two), estimate_energy(model, two, progress=True)
    assert (a.images, a.total_mJ) == (b.images, b.total_mJ) == (2, a.total_mJ)


def test_mlm_glue_and_eval_write_lines_not_carriage_returns_into_a_log(files, tmp_path, monkeypatch, capsys):
    """Their output redirected (not a terminal), with progress on: periodic lines, as train's."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    assert text_cli(mlm_args(files, "--set", "progress=true")) == 0
    assert text_cli(glue_args(files, "--set", "progress=true")) == 0
    logged = capsys.readouterr()
    assert "\r" not in logged.err + logged.out
    assert "mlm: 4/4 (100 %)" in logged.err and "glue: 3/3 (100 %)" in logged.err and "step 4: " in logged.out

    from ..train.test_train import tiny_config, write_class_tree

    tree = write_class_tree(tmp_path / "data" / "train", per_class=10).parent
    from spikingformer.train.classify import run

    run(tiny_config(tree, tmp_path / "run", epochs=1, warmup_epochs=0, cooldown_epochs=0, progress=True))
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", str(tmp_path / "e.json")]) == 0
    logged = capsys.readouterr()
    assert "\r" not in logged.err + logged.out
    assert "epoch 1/1: 6/6 (100 %)" in logged.err and "eval: 1/1 (100 %)" in logged.err
    assert json.loads((tmp_path / "e.json").read_text())["val_images"] == 6
