"""`spikingformer energy` from the command line: totals, plots, checkpoints of every kind and the data
they were trained on (images, event frames, GLUE and corpus text)."""
import json
import re

import pytest
import torch

import spikingformer as sf
from spikingformer.analysis.energy import estimate_energy
from spikingformer.cli import main
from spikingformer.weights.loading import load_weights_into

from ..helpers import calibrate_bn


def test_cli_total_is_e_ac_times_ac_plus_e_mac_times_mac(tmp_path, capsys):
    # each output into a folder not yet there: made, not a crash after the work
    js, cs, png = tmp_path / "j" / "e.json", tmp_path / "c" / "e.csv", tmp_path / "p" / "e.png"
    rc = main(["energy", "--model", "spikformer_4_384", "--t", "1", "--batch-size", "1",
               "--e-mac", "3.1", "--e-ac", "0.7", "--json", str(js), "--csv", str(cs), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(js.read_text())
    assert {"total_mJ", "mac", "ac", "layers", "readout_mJ", "backbone_mJ"} <= set(data)
    assert data["total_mJ"] == pytest.approx((0.7 * data["ac"] + 3.1 * data["mac"]) * 1e-9, rel=1e-12)
    assert (data["e_ac_pJ"], data["e_mac_pJ"]) == (0.7, 3.1)
    printed = float(re.search(r"= ([0-9.e+-]+) mJ", out).group(1))
    assert printed == pytest.approx(data["total_mJ"], rel=1e-5)
    assert "untrained model" in out and "random N(0,1) input" in out
    rows = cs.read_text().splitlines()
    assert rows[0] == "name,op,kind,readout,fr,nonzero,flops,ac,mac,uJ"
    assert len(rows) == 1 + len(data["layers"])
    assert {"name", "kind", "fr", "flops", "ac", "mac", "uJ"} <= set(data["layers"][0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_each_layer_firing_rate_and_energy(tmp_path, monkeypatch):
    """One bar per synaptic product in each panel, in network order: its input firing rate (0 where the
    input is not spikes) and its energy, coloured by AC or MAC."""
    import spikingformer.analysis.energy as energy_module

    model = sf.create_model("spikingformer_4_256", depth=1, dim=32, num_heads=4, T=2).eval()
    report = estimate_energy(model, torch.randn(2, 3, 32, 32))
    figures = []
    monkeypatch.setattr(energy_module, "save_figure", lambda fig, path: figures.append(fig))
    report.write_plot(str(tmp_path / "e.png"))
    ax_fr, ax_e = figures[0].axes
    fr_bars, e_bars = ax_fr.patches, ax_e.patches
    assert len(fr_bars) == len(e_bars) == len(report.layers)
    assert [b.get_height() for b in fr_bars] == pytest.approx([r.fr or 0.0 for r in report.layers])
    assert [b.get_height() for b in e_bars] == pytest.approx([r.uJ for r in report.layers])
    assert [t.get_text() for t in ax_e.get_xticklabels()][0] == report.layers[0].name
    spike = [b.get_facecolor() for b, r in zip(e_bars, report.layers) if r.kind == "spike"]
    real = [b.get_facecolor() for b, r in zip(e_bars, report.layers) if r.kind == "real"]
    assert spike and real and len(set(spike)) == 1 and set(spike).isdisjoint(real)


def test_cli_unknown_model(capsys):
    assert main(["energy", "--model", "spikingformer_9_999"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'spikingformer_9_999'" in err and "text models: spikingformer_text_12_768" in err


@pytest.mark.parametrize("content,msg", [(None, "checkpoint not found"), (b"not a checkpoint", "not a readable checkpoint"),
                                         ("wrong", "does not fit")])
def test_cli_bad_checkpoint(tmp_path, capsys, content, msg):
    path = tmp_path / "ck.pt"
    if content == "wrong":
        torch.save(sf.create_model("spikingformer_4_256", depth=1).state_dict(), path)
    elif content is not None:
        path.write_bytes(content)
    assert main(["energy", "--model", "spikingformer_4_256", "--checkpoint", str(path)]) == 2
    assert msg in capsys.readouterr().err


def test_checkpoint_formats_load_the_same_weights(tmp_path):
    from safetensors.torch import save_file

    src = sf.create_model("spikingformer_4_256", depth=1, dim=64, num_heads=2)
    state = src.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    save_file(state, tmp_path / "plain.safetensors")
    for name in ("wrapped.pth", "plain.safetensors"):
        dst = load_weights_into(sf.create_model("spikingformer_4_256", depth=1, dim=64, num_heads=2),
                              str(tmp_path / name))
        for k, v in dst.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)


def test_cli_with_a_checkpoint_reports_trained_weights(tmp_path, capsys):
    model = sf.create_model("spikingformer_4_256", T=1)
    calibrate_bn(model, torch.randn(4, 3, 32, 32))
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    js = tmp_path / "e.json"
    assert main(["energy", "--model", "spikingformer_4_256", "--t", "1", "--checkpoint", str(tmp_path / "ck.pth"),
                 "--json", str(js)]) == 0
    assert "untrained" not in capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["spike_driven"] and data["ac"] > 0


def test_cli_reads_an_image_folder(tmp_path, capsys):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(tmp_path / cls / "a.png")
    js = tmp_path / "e.json"
    assert main(["energy", "--model", "spikingformer_4_256", "--t", "1", "--data", str(tmp_path),
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["images"] == 2 and not any("random N(0,1)" in n for n in data["notes"])
    assert main(["energy", "--model", "spikingformer_4_256", "--data", str(tmp_path / "cat")]) == 2
    assert "class-folder" in capsys.readouterr().err


def test_cli_rebuilds_the_model_a_training_checkpoint_describes(tmp_path, capsys):
    from spikingformer.weights.checkpoint import save_checkpoint

    args = {"depth": 1, "dim": 64, "num_heads": 2, "num_classes": 3, "T": 1}
    model = sf.create_model("spikingformer_4_256", **args)
    calibrate_bn(model, torch.randn(4, 3, 32, 32))
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "meta": {"model": "spikingformer_4_256", "model_args": args}},
                    path)
    js = tmp_path / "e.json"
    assert main(["energy", "--model", "spikingformer_4_256", "--checkpoint", str(path), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["T"] == 1 and data["layers"][-1]["flops"] == 64 * 3  # the 3-class head of the checkpoint
    assert main(["energy", "--model", "spikformer_4_384", "--checkpoint", str(path)]) == 2
    assert "holds a spikingformer_4_256, not a spikformer_4_384" in capsys.readouterr().err


# ---------------------------------------------------------------- text and event-data checkpoints

TEXT_ARGS = dict(depth=1, dim=32, num_heads=2, T=2, max_len=32, vocab_size=17, num_classes=2, attn_scale=0.5)
WORDS = ["good", "bad", "the", "film", "was", "very", "plot", "."]


def text_checkpoint(d, task: str = "sst2"):
    """A glue (or mlm) run's checkpoint, saved in the engine's format, beside its vocabulary and data."""
    from spikingformer.analysis.batches import calibrate_bn
    from spikingformer.models import create_model
    from spikingformer.train.glue import GlueConfig
    from spikingformer.train.mlm import MLMConfig
    from spikingformer.weights.checkpoint import save_checkpoint

    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    (d / "SST-2").mkdir(exist_ok=True)
    rows = [f"the film was {'very ' * (i % 4)}{'good' if i % 2 else 'bad'} ." for i in range(20)]
    (d / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    (d / "corpus.txt").write_text(" ".join(WORDS * 12) + "\n")
    head = "mlm" if task == "mlm" else "sequence"
    model = create_model("spikingformer_text_2_128", **TEXT_ARGS, head=head)
    calibrate_bn(model, [torch.randint(5, 13, (4, 12))])
    common = dict(vocab=str(d / "vocab.txt"), model_args={})
    cfg = (MLMConfig(train_file=str(d / "corpus.txt"), block_len=16, **common) if task == "mlm" else
           GlueConfig(task="sst2", data_dir="/nonexistent", holdout_fraction=0.25, max_len=32, **common))
    path = d / f"{task}.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "step": 1,
                     "meta": {"model": "spikingformer_text_2_128", "model_args": dict(TEXT_ARGS, head=head),
                              "task": task}}, path)
    return path


def test_text_checkpoint_on_random_token_ids_is_per_sequence(tmp_path, capsys):
    ck, js = text_checkpoint(tmp_path), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--seq-len", "10", "--batch-size", "3", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["unit"] == "sequence" and data["images"] == 3 and data["T"] == 2
    assert "total per sequence:" in out and "per image" not in out and "3 sequence(s)" in out
    assert any("random token ids, 3 x 1 sequences of 10 tokens (seed 0)" in n for n in data["notes"])
    q = data["layers"][0]
    assert q["name"] == "blocks.0.attn.q.linear" and q["kind"] == "spike" and q["flops"] == 10 * 32 * 32
    assert data["layers"][-1]["name"] == "head.fc" and data["layers"][-1]["readout"]
    assert data["spike_driven"] and data["readout_mJ"] > 0
    assert main(["energy", "--checkpoint", str(ck), "--seq-len", "40"]) == 2
    assert "--seq-len 40 must be in 1..32" in capsys.readouterr().err


def test_text_checkpoint_on_the_held_out_glue_sequences(tmp_path):
    from spikingformer.data import glue as gdata
    from spikingformer.data import text as tdata
    from spikingformer.train import glue
    from spikingformer.train.config import from_dict

    ck, js = text_checkpoint(tmp_path), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path), "--batch-size", "4",
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    # the split the run evaluated on: 5 of 20, rebuilt from the stored config with --data as data_dir
    cfg = from_dict(glue.GlueConfig, dict(glue.GlueConfig(task="sst2", holdout_fraction=0.25, max_len=32,
                                                          vocab=str(tmp_path / "vocab.txt")).to_dict(),
                                          data_dir=str(tmp_path)))
    (_, name, ds), = glue.glue_splits(cfg, gdata.get_task("sst2"), tdata.WordPieceTokenizer(cfg.vocab)).evals
    longest = max(len(ds[i][0]) for i in range(4))
    assert data["images"] == 4 and data["layers"][0]["flops"] == longest * 32 * 32
    assert any(n.startswith(f"input: the first 4 sequences of {name}") for n in data["notes"])
    assert not any("random" in n or "untrained" in n for n in data["notes"])


def test_mlm_checkpoint_on_masked_corpus_blocks(tmp_path, capsys):
    ck, js = text_checkpoint(tmp_path, "mlm"), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "corpus.txt"), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["images"] == 2 and data["layers"][0]["flops"] == 16 * 32 * 32  # block_len 16
    head = data["layers"][-1]
    # the tied read-out runs once per sequence (on the T-mean): 16 tokens x D 32 x 17-word vocabulary MACs
    assert head["name"] == "head.fc" and head["kind"] == "real" and head["mac"] == 16 * 32 * 17
    # --data on a bare text state_dict cannot know how the data was read
    torch.save(torch.load(ck, weights_only=True)["model"], tmp_path / "bare.pt")
    assert main(["energy", "--model", "spikingformer_text_2_128", "--checkpoint", str(tmp_path / "bare.pt"),
                 "--data", str(tmp_path)]) == 2
    assert "needs an mlm/glue checkpoint" in capsys.readouterr().err


def event_checkpoint(d):
    """An nmnist run's checkpoint in the training engine's format, beside its (synthetic) recordings."""
    from spikingformer.analysis.batches import calibrate_bn
    from spikingformer.train.config import TrainConfig
    from spikingformer.weights.checkpoint import save_checkpoint

    from ..data.test_events import write_nmnist_subset

    write_nmnist_subset(d / "nmnist", per_class=2)
    margs = dict(depth=1, dim=32, num_heads=2, T=2, downsample=[False, False, True, True])
    cfg = TrainConfig(model="spikingformer_dvs_2_256", dataset="nmnist", data_dir="/elsewhere", model_args=margs,
                      img_size=32, val_split="holdout", holdout=3, workers=0)
    margs = dict(margs, img_size=32, num_classes=10)
    model = sf.create_model("spikingformer_dvs_2_256", **margs)
    calibrate_bn(model, [torch.rand(2, 3, 2, 32, 32).round()])
    path = d / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"model": "spikingformer_dvs_2_256", "model_args": margs, "img_size": 32}}, path)
    return path


def test_event_checkpoint_reads_real_frames_of_its_validation_split(tmp_path):
    ck, js = event_checkpoint(tmp_path), tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "nmnist"), "--batch-size", "3",
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["unit"] == "image" and data["T"] == 2 and data["images"] == 3
    assert "input: nmnist val (held-out 3 of 6 train images, class-balanced, seed 0)" in data["notes"]
    enc = data["layers"][0]
    # the encoding conv sees event counts (integers), 2 polarity channels at 32x32
    assert enc["kind"] == "integer" and enc["flops"] == 32 * 32 * 4 * 2 * 9 and enc["mac"] == 2 * enc["flops"]


def test_bad_data_for_a_run_checkpoint_is_a_usage_error(tmp_path, capsys):
    assert main(["energy", "--checkpoint", str(event_checkpoint(tmp_path)), "--data", str(tmp_path / "nope")]) == 2
    assert f"error: data_dir {tmp_path / 'nope'} does not exist (dataset nmnist)" in capsys.readouterr().err


def test_data_too_small_for_the_runs_split_says_what_data_means_for_a_run(tmp_path, capsys):
    """A folder of a few validation recordings is the natural --data; a run's checkpoint reads it as its dataset."""
    from ..data.test_events import write_nmnist_subset

    ck = event_checkpoint(tmp_path)
    write_nmnist_subset(tmp_path / "val_only", per_class=1)  # 3 recordings; the run holds out 3
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "val_only")]) == 2
    assert ("error: holdout 3 must be smaller than the 3 training images (with a run's checkpoint or --config, "
            "--data is the root of the nmnist dataset it names, from which its validation split is rebuilt)"
            in capsys.readouterr().err)
    # --set changes how the run's config reads --data, as eval's does
    js = tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "val_only"), "--set", "holdout=1",
                 "--json", str(js)]) == 0
    assert json.loads(js.read_text())["images"] == 1
    for bad, msg in ((["--set", "model_args.T=2"], "the model's options go in --model-kwargs and --T"),
                     (["--set", "holdot=1"], "unknown config key(s) ['holdot']")):
        assert main(["energy", "--checkpoint", str(ck), "--data", str(tmp_path / "val_only"), *bad]) == 2
        assert msg in capsys.readouterr().err
    assert main(["verify", "--model", "spikingformer_4_256", "--set", "holdout=1"]) == 2
    assert "give both --data and a run's checkpoint or --config" in capsys.readouterr().err


def test_bad_numbers_and_undecodable_images_are_usage_errors(tmp_path, capsys):
    """Nothing silently replaced by a default (``--input-size 0`` once meant the model's size), no traceback."""
    for bad, msg in ((["--input-size", "0"], "--input-size must be >= 1, got 0"),
                     (["--input-size", "-8"], "--input-size must be >= 1, got -8"),
                     (["--e-mac", "-1"], "energies per operation must be >= 0 pJ")):
        assert main(["energy", "--model", "spikingformer_4_256", "--t", "1", *bad]) == 2
        assert msg in capsys.readouterr().err
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.jpg").write_text("not an image")
    for command in ("energy", "verify"):
        assert main([command, "--model", "spikingformer_4_256", "--t", "1", "--data", str(tmp_path)]) == 2
        assert "cannot decode image" in capsys.readouterr().err
