"""``spikingformer export`` writes a new ``.safetensors`` file: it replaces an existing file only when asked, and a
training run's checkpoint never (the run could no longer resume)."""
import pytest

from spikingformer import cli, create_model
from spikingformer.deploy.export import export
from spikingformer.weights.checkpoint import (
    is_run_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

SMALL = dict(depth=1, dim=32, num_heads=4)


@pytest.fixture
def run(tmp_path):
    """A run's folder with its training checkpoint ``last.pt``."""
    last = tmp_path / "runs" / "x" / "last.pt"
    save_checkpoint({"model": create_model("spikingformer_4_256", **SMALL).state_dict(), "config": {},
                     "meta": {"model": "spikingformer_4_256", "model_args": SMALL}, "progress": {"epoch": 3}}, last)
    return last


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_runs_checkpoint_is_never_replaced(run, capsys, force):
    before = run.read_bytes()
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(run), *force]) == 2
    assert (f"error: --out {run} is a training run's checkpoint (its run resumes from it); export never replaces "
            f"one, even with --force") in capsys.readouterr().err
    assert run.read_bytes() == before and load_checkpoint(run)["progress"] == {"epoch": 3}
    renamed = run.with_suffix(".safetensors")  # by its bytes, whatever its name
    run.rename(renamed)
    with pytest.raises(ValueError, match="is a training run's checkpoint"):
        export(str(renamed), str(renamed), force=True)
    assert is_run_checkpoint(renamed) and renamed.read_bytes() == before


def test_an_existing_file_is_replaced_only_with_force(run, capsys):
    out = run.parent / "model.safetensors"
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    first = out.read_bytes()
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(out), "--fold-bn"]) == 2
    assert f"error: --out {out} exists; export replaces a file only when asked (--force" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(out), "--fold-bn", "--force"]) == 0
    assert out.read_bytes() != first and "BatchNorm folded" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model"])
def test_the_out_suffix_is_the_format_written(run, capsys, name):
    out = run.parent / name
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert f"error: --out {out}: the file's name must end in .safetensors" in capsys.readouterr().err
    assert not out.exists()
