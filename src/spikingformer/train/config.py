"""Training configuration: one flat dataclass, loaded from YAML plus ``--set key=value`` overrides.

Every key is checked: an unknown key (in the file or on the command line) is an error that
lists the valid keys, and every value is checked against the field's type, so a typo never
silently trains with a default.  Field names follow timm's ``train.py`` (``lr``, ``min_lr``,
``warmup_epochs``, ``aa``, ``reprob``, ``mixup``, ``smoothing``, ...), as do their meanings.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.sources import DATASETS, EVENT_DATASETS
from ..data.text import read_text
from ..data.transforms import eval_transform, train_transform
from ..models import model_modality
from ..nn.fast import AMP_MODES, COMPILE_MODES, FAST_MODES, LIF_BACKEND_MODES, FastPath
from ..utils.coerce import CoercionError, coerce
from ..utils.errors import ConfigError

__all__ = ["RunConfig", "TrainConfig", "load_config", "parse_overrides", "from_dict", "apply_overrides"]

SPLIT_BY = ("number", "time")
EVENT_POLICIES = ("roll", "wide")     # data.events.EventAugment
HOLDOUT_PICKS = ("random", "last")    # data.split.balanced_split


def validate_device(device: str) -> None:
    """Raise ``ConfigError`` unless ``device`` is ``auto`` or a string ``torch.device`` parses."""
    try:
        if device == "auto" or torch.device(device):
            return
    except (RuntimeError, ValueError):
        pass
    raise ConfigError(f"device must be auto or a torch device (cpu, cuda, cuda:1, ...), got {device!r}")


@dataclass
class RunConfig:
    """The keys every training command shares (``TrainConfig`` and ``PretrainConfig`` for images and events,
    ``text_engine.TextTrainConfig`` for ``mlm`` and ``glue``), each with one meaning; a family overrides a
    default (``model``, ``lr``, ``sched``, ...), checks the values it accepts (``sched``'s names) and adds its
    own keys.

    ``batch_size`` and ``accum_steps`` stay each family's, as its recipes and checkpoints have always read them
    (a resumed run keeps its config): the images of ``TrainConfig`` are sampled per process, so there
    ``batch_size`` is the batch of one forward pass on one process and an update sees ``batch_size x
    accum_steps x processes`` images; the text commands draw each step's whole batch from the step number, so
    there ``batch_size`` is that global batch of one update, split over the processes, each share run in
    ``accum_steps`` parts."""
    model: str = "spikingformer_4_384"  # a name of the family's registry
    model_args: dict = field(default_factory=dict)  # overrides of the model's config fields
    grad_checkpointing: bool = False  # recompute each block in the backward pass: less memory, one more forward
    lr: float = 5e-4
    weight_decay: float = 0.05
    sched: str = "cosine"
    clip_grad: float = 0.0            # >0: clip the global gradient norm to this value
    limit_val: int = 0                # >0: evaluate on this many held-out items only (images: seeded, class-balanced)
    seed: int = 0
    device: str = "auto"              # auto: cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    amp: str = "auto"                 # auto: bf16 autocast on CUDA (fp16 before Ampere), fp32 on CPU | bf16 | fp16 | off
    fast: str = "auto"                # the fast path (spikingformer.nn.fast: torch.compile, channels-last, fused
                                      # AdamW): auto = on CUDA only | on | off
    sync_bn: bool = False             # BatchNorm statistics over every process's share of the batch
    output: str = "runs/train"
    progress: bool = True             # a bar on a terminal, periodic lines in a log (main process only)

    def shared_checks(self) -> list[tuple[bool, str]]:
        """``(ok, message)`` of the shared keys; ``device`` is checked by ``validate_device``."""
        return [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (self.fast in FAST_MODES, f"fast must be one of {', '.join(FAST_MODES)}, got {self.fast!r}"),
            (bool(self.output), "output must name the run's folder, got an empty string"),
        ]

    def fast_path(self, device) -> FastPath:
        """The fast path and precision this config asks for on ``device``."""
        return FastPath.from_modes(self.fast, self.amp, device)

    def to_dict(self) -> dict:
        """Plain types only (dicts, lists, numbers, strings): safe to store in a checkpoint."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass
class TrainConfig(RunConfig):
    """Supervised training on images and event recordings (``spikingformer train``), and ``PretrainConfig``'s
    base; names and meanings follow timm's ``train.py``."""
    # --- model: any name of spikingformer.list_models(modality="vision") (``model``, ``model_args``: RunConfig's)
    init_from: str = ""               # start from a `spikingformer pretrain` checkpoint's encoder, or from every tensor
                                      # of a `spikingformer train` checkpoint of the same model (T may differ)
    # --- data
    dataset: str = "cifar10"          # cifar10 | cifar100 (torchvision format) | folder (class folders) | digits
                                      # | nmnist | dvs128_gesture | cifar10_dvs (event recordings, T = the model's T)
    data_dir: str = "data"
    download: bool = False            # CIFAR only: fetch it when missing (needs internet)
    val_split: str = "auto"           # auto: the dataset's own val/test split if it has one; holdout: always hold out
    holdout: int = 5000               # images held out of train (seeded, class-balanced) when holding out
    holdout_pick: str = "random"      # random: seeded within each class | last: each class's last files by name
    limit_train: int = 0              # >0: train on a seeded class-balanced subset of this size (smoke tests)
    img_size: int = 0                 # 0: the model's img_size
    mean: typing.Optional[tuple[float, ...]] = None  # None: the dataset's own statistics
    std: typing.Optional[tuple[float, ...]] = None
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)         # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)      # RandomResizedCrop aspect range
    hflip: float = 0.5
    color_jitter: float = 0.0
    aa: typing.Optional[str] = None   # timm RandAugment string, e.g. rand-m9-n1-mstd0.4-inc1
    reprob: float = 0.0               # random erasing probability
    remode: str = "const"
    crop_pct: float = 1.0             # eval: resize to img_size / crop_pct, then center-crop
    workers: int = 4
    # --- event data only: integration into the model's T frames and frame augmentation
    split_by: str = "number"          # number: equal event counts per frame | time: equal durations (SpikingJelly)
    event_aug: bool = False           # train frames: horizontal flip (probability hflip), then event_policy
    event_policy: str = "roll"        # roll: a random roll (NDA) | wide: one of shear/translate/rotate/erase
    event_roll: int = 5               # the roll's largest shift in pixels, each axis
    # --- mixup / cutmix / loss
    mixup: float = 0.0                # mixup alpha (0: off)
    cutmix: float = 0.0               # cutmix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    mixup_off_epoch: int = 0          # >0: disable mixup/cutmix from this epoch on
    smoothing: float = 0.1
    # --- optimization (batch_size is per process; the global batch is batch_size * world size)
    opt: str = "adamw"
    momentum: float = 0.9
    layer_decay: float = 0.0          # >0: layer-wise lr decay (fine-tuning, MAE / V2 §5.2): the head trains at lr,
                                      # the last block at lr x layer_decay, each block below it x layer_decay again
    batch_size: int = 64             # per process and per forward pass: BatchNorm normalises over these images
    accum_steps: int = 1              # batches per optimizer update: an update sees batch_size x accum_steps x processes
    val_batch_size: int = 128
    # --- schedule (timm.scheduler); the run lasts epochs + cooldown_epochs epochs, as in timm
    epochs: int = 300
    warmup_epochs: int = 20
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    cooldown_epochs: int = 10
    sched_on_updates: bool = False    # update the lr every step instead of every epoch
    # --- engine
    compile_mode: str = ""            # torch.compile mode of the fast path: "" (default) | reduce-overhead (CUDA
                                      # graphs) | max-autotune | max-autotune-no-cudagraphs
    lif_backend: str = "auto"         # neurons: auto (triton when compiled on CUDA) | torch | triton
                                      # (the Triton kernels of spikingformer.nn.kernels)
    ckpt_every: int = 0               # >0: also checkpoint every this many steps inside an epoch

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        checks = [
            (model_modality(self.model) != "text",
             f"model {self.model} is a text model: `spikingformer mlm` and `spikingformer glue` train it"),
            (self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}"),
            (self.compile_mode in COMPILE_MODES,
             f"compile_mode must be one of {', '.join(map(repr, COMPILE_MODES))}, got {self.compile_mode!r}"),
            (self.lif_backend in LIF_BACKEND_MODES,
             f"lif_backend must be one of {', '.join(LIF_BACKEND_MODES)}, got {self.lif_backend!r}"),
            (self.val_split in ("auto", "holdout"), f"val_split must be 'auto' or 'holdout', got {self.val_split!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1 and self.val_batch_size >= 1, "batch_size and val_batch_size must be >= 1"),
            (self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}"),
            (self.accum_steps < 1 or self.ckpt_every % self.accum_steps == 0,
             f"ckpt_every ({self.ckpt_every}) must be a multiple of accum_steps ({self.accum_steps}): a checkpoint "
             "inside an epoch is written right after an optimizer update"),
            (min(self.holdout, self.limit_train, self.limit_val, self.warmup_epochs, self.cooldown_epochs,
                 self.ckpt_every, self.workers, self.mixup_off_epoch, self.img_size) >= 0,
             "holdout, limit_*, warmup_epochs, cooldown_epochs, ckpt_every, workers, mixup_off_epoch and "
             "img_size must be >= 0"),
            (0 <= self.layer_decay <= 1, f"layer_decay must be in [0, 1] (0: off), got {self.layer_decay}"),
            (not self.mixup_active or self.batch_size % 2 == 0,
             f"mixup/cutmix needs an even batch_size (timm pairs samples), got {self.batch_size}"),
            ((self.mean is None) == (self.std is None), "give both mean and std, or neither"),
            (self.split_by in SPLIT_BY, f"split_by must be one of {', '.join(SPLIT_BY)}, got {self.split_by!r}"),
            (self.event_roll >= 0, f"event_roll must be >= 0, got {self.event_roll}"),
            (self.event_policy in EVENT_POLICIES,
             f"event_policy must be one of {', '.join(EVENT_POLICIES)}, got {self.event_policy!r}"),
            (self.holdout_pick in HOLDOUT_PICKS,
             f"holdout_pick must be one of {', '.join(HOLDOUT_PICKS)}, got {self.holdout_pick!r}"),
        ] + self.shared_checks()
        if self.is_event_data:
            checks += self._event_checks()
        elif self.event_aug:
            checks.append((False, f"event_aug applies to the event datasets ({', '.join(EVENT_DATASETS)}), "
                                  f"not {self.dataset!r}"))
        if not self.is_event_data and self.dataset != "digits":  # the datasets that go through timm's transforms
            checks.append(self._transform_check())
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        validate_device(self.device)

    def _transform_check(self) -> tuple[bool, str]:
        """timm parses ``aa``, ``interpolation`` and ``remode`` when it builds the transforms, in the first
        epoch's data loading: build them now, so a bad string fails before anything runs."""
        try:
            for make in (train_transform, eval_transform):
                make(self, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        except (AssertionError, KeyError, ValueError) as e:
            return False, (f"timm cannot build the transforms of aa={self.aa!r}, interpolation={self.interpolation!r}, "
                           f"remode={self.remode!r}: {type(e).__name__}: {e}")
        return True, ""

    def _event_checks(self) -> list[tuple[bool, str]]:
        """Image-only options would be silently ignored on event frames: refuse them instead."""
        d = self.dataset
        return [
            (self.cutmix == 0, f"cutmix is not implemented for event frames [T, B, 2, H, W] ({d}; mixup is): "
                               "set cutmix: 0"),
            (self.aa is None and self.reprob == 0 and self.color_jitter == 0,
             f"aa, reprob and color_jitter are image augmentations; {d} uses event_aug (flip + event_policy) instead"),
            (self.mean is None, f"{d} frames are raw event counts (not normalized): leave mean/std unset"),
            (not (d == "dvs128_gesture" and self.event_aug and self.hflip > 0),
             "dvs128_gesture has left- and right-hand classes that a horizontal flip swaps: "
             "set hflip: 0 (roll only) or event_aug: false"),
        ]

    @property
    def is_event_data(self) -> bool:
        return self.dataset in EVENT_DATASETS

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def total_epochs(self) -> int:
        """Epochs actually run: the schedule's epochs plus its cool-down at ``min_lr`` (timm)."""
        return self.epochs + self.cooldown_epochs

    def fast_path(self, device) -> FastPath:
        return FastPath.from_modes(self.fast, self.amp, device, self.compile_mode, self.lif_backend)


def _plain(v):
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _coerce(name: str, typ, value):
    """``value`` checked against the annotation ``typ`` and converted where that is unambiguous (``utils.coerce``:
    list -> tuple, int -> float, YAML 1.1's readings undone)."""
    try:
        return coerce(typ, value, text=True)
    except CoercionError as e:
        raise ConfigError(f"config key {name!r} expects {e.expected}, got {e.value!r}") from None


def from_dict(cls, data: dict, source: str = "config"):
    """Build the dataclass ``cls`` from ``data``; unknown keys and ill-typed values are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in {source}; valid keys: {', '.join(valid)}")
    try:
        return cls(**{k: _coerce(k, hints[k], v) for k, v in data.items()})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-3", "model_args.depth=2"]`` -> ``{"lr": 1e-3, "model_args": {"depth": 2}}`` (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        head, dot, sub = key.partition(".")
        if dot:
            out.setdefault(head, {})
            if not isinstance(out[head], dict):
                raise ConfigError(f"--set {item!r}: {head!r} was already set to a non-mapping value")
            out[head][sub] = value
        else:
            out[key] = value
    return out


def apply_overrides(base: dict, overrides: dict) -> dict:
    """Merge overrides into a config dict; dotted (``model_args.x``) overrides merge into the mapping."""
    merged = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return merged


def recipe_dir() -> Path:
    """The shipped recipes: the repository's ``configs/``, installed as the package ``spikingformer.configs``."""
    from importlib.resources import files

    return Path(str(files("spikingformer.configs")))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def resolve_config_path(path: str | Path, files: bool = True) -> Path:
    """``path`` if it is a file (and ``files``); else a shipped recipe named ``cifar10``, ``cifar10.yaml`` or
    ``configs/cifar10.yaml``.  The last form lets the README's commands run from a wheel install."""
    path = Path(path)
    if files and path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")) and path.suffix in ("", ".yaml", ".yml"):
        shipped = recipe_dir() / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    shipped = ", ".join(list_recipes())
    if files:
        raise ConfigError(f"config file not found: {path} (and no shipped recipe of that name; shipped: {shipped})")
    raise ConfigError(f"no shipped recipe {path} (shipped: {shipped})")


_MAX_DEPTH = 32  # a recipe is flat key: value, model_args one level deeper


def _parse_yaml(text: str, path: Path):
    """``yaml.safe_load(text)``, refusing first (in one pass over the parser's events, which keeps no recursion)
    what would make it unbounded: an alias (``*name``: a "billion laughs" file nests 9**9 references that every
    walk of the result, an error message's repr included, expands) and nesting deeper than ``_MAX_DEPTH``
    (PyYAML's composer recurses, into a RecursionError)."""
    import yaml

    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{path}: YAML aliases (*{event.anchor}) are not supported in config files; "
                                  "write the value out")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > _MAX_DEPTH:
                raise ConfigError(f"{path}: nested deeper than {_MAX_DEPTH} levels (line {event.start_mark.line + 1})")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), cls=TrainConfig):
    """Read a YAML config (a file, or a shipped recipe's name; or start from the defaults when ``path`` is
    None) and apply ``--set`` overrides."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        text = read_text(path, ConfigError)
        if not text.strip():  # e.g. truncated by a shell redirect into the file it was to be read from
            raise ConfigError(f"config file {path} is empty")
        data = _parse_yaml(text, path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
        source = str(path)
    cli = parse_overrides(list(overrides))
    if cli:
        source += " + --set " + " ".join(overrides)
    return from_dict(cls, apply_overrides(data, cli), source)
