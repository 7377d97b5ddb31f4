"""Config loading is strict, and the shipped recipes say what SPEC §8 says."""
from pathlib import Path

import pytest
import torch

import spikingformer as sf
from spikingformer.train.config import ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml") if "speedrun" not in p.name)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_yaml_key_is_an_error_listing_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['lrr'\] in .*c\.yaml; valid keys: model, "):
        load_config(write(tmp_path, "lr: 1.0e-3\nlrr: 2\n"))


def test_unknown_override_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epoch'\].*--set epoch=3.*valid keys"):
        load_config(write(tmp_path, "lr: 1.0e-3\n"), ["epoch=3"])


@pytest.mark.parametrize("item,msg", [
    ("epochs=many", "'epochs' expects int"), ("lr=fast", "'lr' expects float"),
    ("scale=[1.0]", "'scale' expects 2 values"), ("model_args=3", "'model_args' expects a mapping"),
    ("amp=fp8", "amp must be one of"), ("batch_size=0", "batch_size"), ("lr", "key=value"),
    ("device=bogus", "device must be auto or a torch device"), ("output=", "output must name"),
    ("aa=bogus", "timm cannot build the transforms of aa='bogus'.*Unknown AA policy"),
    ("interpolation=bogus", "interpolation='bogus'.*KeyError"),
    ("lr=0", "lr must be > 0"), ("epochs=0", "epochs must be >= 1"), ("val_batch_size=0", "val_batch_size"),
    ("mean=[0.5,0.5,0.5]", "give both mean and std"), ("warmup_epochs=-1", "warmup_epochs.* must be >= 0"),
    ("mixup_off_epoch=-1", "mixup_off_epoch.* must be >= 0"), ("ckpt_every=-2", "ckpt_every.* must be >= 0"),
])
def test_bad_values_are_named(item, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [item])


def test_overrides_are_typed_and_merge_into_model_args(tmp_path):
    cfg = load_config(write(tmp_path, "model_args: {T: 4, depth: 4}\nscale: [0.5, 1.0]\n"),
                      ["lr=1e-3", "model_args.depth=1", "aa=null", "data_dir=123", "epochs=2.0"])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.model_args == {"T": 4, "depth": 1} and cfg.scale == (0.5, 1.0)
    assert cfg.aa is None and cfg.data_dir == "123" and cfg.epochs == 2


def test_yaml_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- lr\n- 3\n"))
    with pytest.raises(ConfigError, match=r"config file .*c\.yaml is empty"):  # `recipes x > x.yaml` truncation
        load_config(write(tmp_path, "\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_mixup_needs_even_batch():
    with pytest.raises(ConfigError, match="even batch_size"):
        TrainConfig(mixup=0.5, batch_size=7)


def test_to_dict_round_trips():
    from spikingformer.train.config import from_dict

    cfg = TrainConfig(model_args={"downsample": (False, True, True, True)}, mean=(0.5,), std=(0.2,))
    assert from_dict(TrainConfig, cfg.to_dict()) == TrainConfig(model_args={"downsample": [False, True, True, True]},
                                                                mean=(0.5,), std=(0.2,))


# Time steps the papers train with: T = 4 on images (SPEC §8), 16 on DVS (SPEC §6), 1 in V2 pre-training (V2 §4.2).
RECIPE_T = {"dvs128_gesture.yaml": 16, "cifar10_dvs.yaml": 16, "imagenet_v2_mae_pretrain.yaml": 1,
            "cifar10_v2_mae_pretrain.yaml": 1, "cifar10_v2_finetune.yaml": 1, "imagenet_v2_finetune.yaml": 1,
            "cifar10_cpu.yaml": 2}
CPU_SIZED_V2 = ("cifar10_v2_mae_pretrain.yaml", "cifar10_v2_finetune.yaml")  # an ImageNet V2, shrunk, at 64x64


def recipe_config(name: str):
    """Each recipe through the config class of the command that runs it: unknown keys fail here."""
    from spikingformer.train.glue import GlueConfig
    from spikingformer.train.mlm import MLMConfig
    from spikingformer.train.pretrain import PretrainConfig

    cls = {"glue.yaml": GlueConfig, "mlm_wikitext2.yaml": MLMConfig}.get(name, TrainConfig)
    if "mae_pretrain" in name:
        cls = PretrainConfig
    return load_config(CONFIGS / name, cls=cls)


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_build(name):
    cfg = recipe_config(name)
    with torch.device("meta"):
        model = sf.create_model(cfg.model, **cfg.model_args)
        if name not in ("glue.yaml", "mlm_wikitext2.yaml"):
            if name not in CPU_SIZED_V2:
                assert model.cfg.img_size == cfg.img_size
    assert model.cfg.T == RECIPE_T.get(name, 4)


SPEC_8 = {  # SPEC §8 key by key, and the official repositories' cifar10.yml / imagenet.yml for the crops
    "cifar10.yaml": dict(model="spikingformer_4_384", dataset="cifar10", epochs=400, batch_size=64, opt="adamw",
                         lr=5e-4, weight_decay=6e-2, min_lr=1e-5, warmup_epochs=20, warmup_lr=1e-5,
                         cooldown_epochs=10, smoothing=0.1, aa="rand-m9-n1-mstd0.4-inc1", mixup=0.5,
                         mixup_off_epoch=200, mixup_switch_prob=0.5, cutmix=0.0, reprob=0.25,
                         interpolation="bicubic", amp="auto", mean=(0.4914, 0.4822, 0.4465),
                         scale=(1.0, 1.0), crop_pct=1.0, remode="const"),
    "cifar100.yaml": dict(model="spikingformer_4_384", dataset="cifar100", epochs=400, lr=5e-4, weight_decay=6e-2,
                          mixup=0.5, mixup_off_epoch=200, cutmix=0.0, mean=(0.5071, 0.4865, 0.4409)),
    "imagenet_8_512.yaml": dict(model="spikingformer_8_512", epochs=300, cooldown_epochs=10, batch_size=36,
                                opt="adamw", lr=5e-4, weight_decay=5e-2, warmup_epochs=20,
                                aa="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, smoothing=0.1, reprob=0.25,
                                scale=(1.0, 1.0), ratio=(1.0, 1.0), crop_pct=1.0, remode="const", mixup_off_epoch=0),
    "imagenet_8_768.yaml": dict(model="spikingformer_8_768", epochs=300, lr=5e-4, mixup=0.8, cutmix=1.0,
                                scale=(1.0, 1.0), ratio=(1.0, 1.0), crop_pct=1.0, remode="const"),
    "cifar10_jpeg.yaml": dict(dataset="folder", val_split="holdout", holdout=5000, model="spikingformer_4_384"),
    # V2 §5.1: supervised training; §5.2: fine-tuning after MAE pre-training
    "imagenet_v2_8_512.yaml": dict(model="spikformer_v2_8_512", epochs=300, warmup_epochs=10, sched_on_updates=True,
                                   lr=5e-4, weight_decay=5e-2, mixup=0.0, cutmix=0.0, cooldown_epochs=0),
    "imagenet_v2_finetune.yaml": dict(model="spikformer_v2_8_512", epochs=150, sched="cosine", sched_on_updates=True,
                                      lr=1e-3, layer_decay=0.7, cooldown_epochs=0, mixup=0.0, cutmix=0.0),
}


@pytest.mark.parametrize("name", sorted(SPEC_8))
def test_recipes_follow_spec(name):
    cfg = load_config(CONFIGS / name)
    for key, want in SPEC_8[name].items():
        assert getattr(cfg, key) == want, key


def test_imagenet_8_768_recipe_builds_the_official_8_heads():
    """The official imagenet.yml of both repositories sets num_heads 8 for 8-768 (SPEC §6), which no tensor shows."""
    cfg = load_config(CONFIGS / "imagenet_8_768.yaml")
    with torch.device("meta"):
        assert sf.create_model(cfg.model, **cfg.model_args).cfg.num_heads == 8


def test_on_off_words_survive_yaml_booleans(tmp_path):
    """YAML 1.1 reads `off` as False: `fast: off` in a file and `--set amp=off` must still mean "off"."""
    cfg = load_config(write(tmp_path, "fast: off\n"), ["amp=off"])
    assert cfg.fast == "off" and cfg.amp == "off"
    assert load_config(None, ["fast=on"]).fast == "on"
    with pytest.raises(ConfigError, match="fast must be one of"):
        load_config(None, ["fast=maybe"])


def test_shipped_recipes_are_the_repository_configs():
    """`configs/` ships as the package `spikingformer.configs`, so a wheel install has every recipe."""
    from spikingformer.train.config import list_recipes, recipe_dir

    assert recipe_dir().resolve() == CONFIGS.resolve()
    assert list_recipes() == sorted(p.stem for p in CONFIGS.glob("*.yaml")) and "cifar10" in list_recipes()


def test_packaging_lists_every_package_and_ships_the_recipes():
    """pyproject names its packages one by one (configs/ is mapped in): a new subpackage must be added there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = CONFIGS.parent
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(root / "src").parts) for p in (root / "src").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"spikingformer.configs"}
    assert tool["package-dir"]["spikingformer.configs"] == "configs"
    assert tool["package-data"]["spikingformer.configs"] == ["*.yaml"]


@pytest.mark.parametrize("given", ["cifar10", "cifar10.yaml", "configs/cifar10.yaml", "cifar10.yml"])
def test_a_recipe_is_found_by_name_from_any_folder(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout, as after a wheel install
    cfg = load_config(given, ["epochs=3"])
    assert cfg == load_config(CONFIGS / "cifar10.yaml", ["epochs=3"])


def test_a_local_file_wins_over_a_shipped_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cifar10.yaml").write_text("epochs: 7\n")
    assert load_config("configs/cifar10.yaml").epochs == 7
    assert load_config("cifar10").epochs == 400


@pytest.mark.parametrize("given", ["cifar1O", "elsewhere/cifar10.yaml", "cifar10.json"])
def test_an_unknown_recipe_lists_the_shipped_ones(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found: .*shipped: cifar10, cifar100, "):
        load_config(given)
