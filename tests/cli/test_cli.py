import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from spikingformer import cli
from spikingformer.utils.errors import InputError


def test_models_command_reports_counts_and_verdicts(tmp_path, capsys):
    out = tmp_path / "new" / "m.json"  # the folder is made, as export makes its own
    assert cli.main(["models", "spik*former_4_384", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"spikingformer_4_384", "spikformer_4_384"}
    assert rows["spikingformer_4_384"]["params"] == 9_320_122 and rows["spikingformer_4_384"]["spike_driven"]
    assert not rows["spikformer_4_384"]["spike_driven"] and rows["spikformer_4_384"]["non_spike_layers"]
    assert rows["spikingformer_4_384"]["proven"] and not rows["spikformer_4_384"]["proven"]
    assert rows["spikformer_4_384"]["unproven_layers"] == rows["spikformer_4_384"]["non_spike_layers"]
    assert rows["spikingformer_4_384"]["silent_layers"] == []  # train mode: batch statistics, every layer fires
    assert "spikingformer_4_384" in capsys.readouterr().out


def test_models_command_lists_the_text_models_too(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert cli.main(["models", "spikingformer_text_2_*", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert (row["model"], row["params"], row["input_size"], row["spike_driven"]) == (
        "spikingformer_text_2_128", 4_323_330, [64], True)
    assert "64 tokens" in capsys.readouterr().out


def test_models_command_rejects_a_pattern_that_matches_nothing(capsys):
    assert cli.main(["models", "resnet*"]) == 2
    assert "no model matches 'resnet*'" in capsys.readouterr().err


def test_models_command_rejects_zero_time_steps_or_batch(capsys):
    for flag in ("--T", "--t"):  # --t: the old spelling, kept for scripts
        assert cli.main(["models", "spikingformer_4_256", flag, "0"]) == 2
        assert "error: --T and --batch-size must be >= 1, got --T 0 --batch-size 2" in capsys.readouterr().err
    assert cli.main(["models", "spikingformer_4_256", "--batch-size", "0"]) == 2
    assert "got --T 1 --batch-size 0" in capsys.readouterr().err


def test_a_missing_training_extra_names_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if installed without [train]
    (tmp_path / "c.yaml").write_text("epochs: 1\n")
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`spikingformer train` needs 'yaml'" in err and 'pip install "spikingformer[train]"' in err


@pytest.mark.parametrize("raised, code, said", [
    (OSError("cannot write out.json: No space left on device"), 1, "error: cannot write out.json: No space left"),
    (FloatingPointError("the training loss became nan by epoch 1 step 10: lower lr"), 1,
     "error: the training loss became nan"),
    (KeyboardInterrupt(), 130, "interrupted")])
def test_what_the_machine_or_the_run_raises_is_one_line_not_a_traceback(monkeypatch, capsys, raised, code, said):
    def command(args):
        raise raised

    monkeypatch.setattr(cli.models, "_cmd_recipes", command)
    assert cli.main(["recipes"]) == code
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1


def test_recipes_command_lists_and_prints_the_shipped_recipes(capsys):
    from spikingformer.train.config import recipe_dir

    assert cli.main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "imagenet_8_512             train     Spikingformer-8-512 on ImageNet-1k, the paper's recipe (SPEC §8)\n" \
        in listing
    commands = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:] if line.strip()
                and not line.startswith("(")}
    assert commands["glue"] == "glue" and commands["mlm_wikitext2"] == "mlm" and commands["nmnist"] == "train"
    assert commands["imagenet_v2_mae_pretrain"] == "pretrain" and commands["cifar10_speedrun"] == "benchmark"
    assert "--config NAME" in listing
    assert cli.main(["recipes", "nmnist"]) == 0
    assert capsys.readouterr().out == (recipe_dir() / "nmnist.yaml").read_text()
    assert cli.main(["recipes", "nmnst"]) == 2
    assert "no shipped recipe nmnst (shipped: cifar10, " in capsys.readouterr().err


def test_recipes_prints_the_shipped_recipe_even_over_a_file_of_that_name(tmp_path, monkeypatch, capsys):
    """`spikingformer recipes cifar10.yaml > cifar10.yaml`: the shell empties the file before the command runs."""
    from spikingformer.train.config import recipe_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10.yaml").write_text("")
    assert cli.main(["recipes", "cifar10.yaml"]) == 0
    assert capsys.readouterr().out == (recipe_dir() / "cifar10.yaml").read_text()
    (tmp_path / "hostname").write_text("vm\n")
    assert cli.main(["recipes", "hostname"]) == 2


def test_single_process_commands_refuse_torchrun(monkeypatch, capsys):
    """Under torchrun every process would evaluate (or predict, export...) everything and write the same files."""
    def evaluated(*args, **kwargs):
        raise InputError("evaluated")

    monkeypatch.setattr("spikingformer.train.scoring.evaluate_checkpoint", evaluated)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["eval", "--checkpoint", "run.pt"]) == 2
    assert "`spikingformer eval` runs in one process; start it without torchrun" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.main(["eval", "--checkpoint", "run.pt"]) == 2
    assert capsys.readouterr().err.strip() == "error: evaluated"


def test_version(capsys):
    import spikingformer

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"spikingformer {spikingformer.__version__}\n"


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["models", "energy", "verify", "export"])
def test_time_steps_are_spelled_T_and_the_old_t_still_reads(command, capsys):
    p, required = _command(command), {"export": ["--checkpoint", "x.pt", "--out", "x.safetensors"]}.get(command, [])
    usage = p.format_help()
    assert "--T T" in usage and "--t " not in usage  # --t is hidden: one documented spelling
    for flag in ("--T", "--t"):
        assert p.parse_args([*required, flag, "3"]).t == 3


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_take_model_kwargs_as_their_set(command, capsys):
    """Every command sets model options with --model-kwargs; here each is --set model_args.KEY=VALUE."""
    p, inputs = _command(command), ["in.jpg"] if command == "predict" else []
    args = p.parse_args([*inputs, "--checkpoint", "c.pt", "--set", "limit_val=5", "--model-kwargs", "T=2", "depth=1",
                         "--set", "img_size=32"])
    assert args.set == ["limit_val=5", "model_args.T=2", "model_args.depth=1", "img_size=32"]
    assert p.parse_args([*inputs, "--checkpoint", "c.pt"]).set == []
    with pytest.raises(SystemExit) as e:
        p.parse_args([*inputs, "--checkpoint", "c.pt", "--model-kwargs", "T"])
    assert e.value.code == 2 and "argument --model-kwargs: expects KEY=VALUE, got 'T'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "pretrain", "mlm", "glue"])
def test_every_training_command_writes_its_summary_with_json(command):
    assert _command(command).parse_args(["--config", "c.yaml", "--json", "s.json"]).json == "s.json"


def test_the_readme_documents_every_command_in_one_table():
    """The command table of the README: one row per command, which names its main flags."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `spikingformer (\w+)` \|.*$", readme, re.M)}
    assert set(rows) == set(sub.choices)
    for name, p in sub.choices.items():
        documented = {a.option_strings[0] for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS}
        named = set(re.findall(r"`(--[\w-]+)", rows[name]))
        assert named <= documented and (named or not documented - {"-h"}), (name, named - documented)
