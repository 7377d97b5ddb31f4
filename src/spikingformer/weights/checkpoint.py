"""Checkpoints that lose nothing and trust nothing.

Writing is atomic: the state goes to a temporary file in the same directory, is fsynced, and
replaces the target with ``os.replace`` (then the directory is fsynced), so a crash at any
instant leaves either the old checkpoint or the new one, never half of one.  Reading uses
``torch.load(weights_only=True)``: a checkpoint holds only tensors and plain Python values
(RNG states and the config included), so no arbitrary object is ever unpickled, and a
truncated or foreign file is reported as such.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..utils.errors import InputError, UserError
from ..utils.outputs import atomic_write
from .official import OfficialWeightsError, convert_official, official_layout, recorded_options

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_weights", "state_mismatch", "atomic_copy",
           "is_run_checkpoint", "remove_partial_writes", "rng_state", "set_rng_state", "FORMAT", "VERSION"]

FORMAT = "spikingformer.checkpoint"  # written into every checkpoint: it never changes
DATA_KEYS = ("classes", "mean", "std", "img_size", "data_root")  # a run's record of its inputs, which inference needs
VERSION = 1
METADATA_FORMAT = "spikingformer.weights"  # the metadata of a .safetensors written by `spikingformer export`
# timm's CheckpointSaver (the official repositories' training scripts) stores the command line as an
# argparse.Namespace: a plain attribute bag, the one class a checkpoint may hold.  It is rebuilt as the
# attribute bag of the standard library, types.SimpleNamespace, with the same fields.
_UNPICKLABLE = [(types.SimpleNamespace, "argparse.Namespace")]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, truncated, foreign, or from an incompatible version."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Atomically write ``state`` (tensors and plain values only) as a spikingformer checkpoint."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy a finished checkpoint (``last`` -> ``best``) with the same all-or-nothing guarantee."""
    with open(src, "rb") as s:
        atomic_write(dst, lambda f: shutil.copyfileobj(s, f, 1 << 22))


def remove_partial_writes(folder: str | Path) -> None:
    """Delete temporary files of writes a crash interrupted (the checkpoints they were replacing are intact)."""
    for tmp in Path(folder).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def _not_found(path: Path) -> CheckpointError:
    """``path`` is no file; a run's folder (a natural slip for ``runs/NAME/best.pt``) is named as one, with the
    checkpoints it holds."""
    if not path.is_dir():
        return CheckpointError(f"checkpoint not found: {path}")
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".tar", ".safetensors"))
    return CheckpointError(f"{path} is a folder, not a checkpoint file: name one of its files"
                           + (f" ({', '.join(found)})" if found else " (it holds no .pt/.safetensors file)"))


def _safe_load(path: Path, map_location="cpu"):
    """``torch.load(weights_only=True)`` with every failure turned into a ``CheckpointError`` that says why."""
    if not path.is_file():
        raise _not_found(path)
    try:
        # A legacy (pickle) file is parsed from its bytes in memory: the unpickler reads each string its header
        # claims with one read(n), which on a file reserves n bytes first (1 GiB for an 8-byte file).
        source = path if _is_zip(path) else io.BytesIO(path.read_bytes())
        with torch.serialization.safe_globals(_UNPICKLABLE):
            state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # the parser meets arbitrary bytes: any error means "not a checkpoint we can read"
        raise CheckpointError(_unreadable(path, e)) from None
    _check_crcs(path)
    return state


def _is_zip(path: Path) -> bool:
    """Whether ``path`` begins as a zip archive, as torch.load tells one (``zipfile.is_zipfile`` reads the end
    record instead, and raises BadZipFile itself on some damaged ones)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _check_crcs(path: Path) -> None:
    """torch.load does not check the checksums its zip archive stores: a flipped bit in the weights would
    load, and evaluate as NaN.  Reading them costs a second pass over the file (about a second per GB)."""
    if not _is_zip(path):  # the legacy pickle format has no checksums
        return
    try:
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as e:
        # torch's zip reader skips what Python's checks (member names, local headers): damaged all the same
        raise CheckpointError(f"{path} is damaged: its zip archive does not read back ({type(e).__name__}: {e})") \
            from None
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: the bytes of {damaged} do not match the checksum stored "
                              "beside them (a flipped bit on disk, or an interrupted copy)")


# How every file torch.load reads begins: a zip archive (torch.save since 1.6) or a pickle of protocol 2+
# (the legacy format).  Anything else is not a PyTorch file, whatever the unpickler made of its bytes.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _unreadable(path: Path, e: Exception) -> str:
    """Why ``torch.load`` failed on ``path``, in our words.  torch's own message advises retrying with
    ``weights_only=False``, which would run any code a hostile file holds: it is never passed on."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as io:  # permissions, I/O: about the file, not its bytes
        return f"{path} is not a readable checkpoint: {io}"
    if not head.startswith(_TORCH_MAGIC):
        begins = f"it begins {head!r}" if head else "it is empty"
        return (f"{path} is not a readable checkpoint: not a PyTorch file at all (not a zip archive / "
                f"legacy pickle; {begins})")
    # the weights-only unpickler's own reason follows this marker, after torch's advice; its first
    # sentence says what is wrong (the rest is torch's advice, or the zip reader's boilerplate)
    reason = str(e).split("WeightsUnpickler error:")[-1].strip()
    reason = reason.splitlines()[0].split(". ")[0] if reason else type(e).__name__
    if isinstance(e, pickle.UnpicklingError) and ("Unsupported global" in reason or "unsupported GLOBAL" in reason):
        return (f"{path} contains arbitrary Python objects, which are never unpickled ({reason}), "
                f"so this is not a spikingformer checkpoint")
    return f"{path} is not a readable checkpoint (truncated or not a PyTorch file): {reason}"


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file, by its bytes (whatever its name): an 8-byte little-endian
    header length, then the JSON header."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(9), os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 9 <= int.from_bytes(head[:8], "little") + 8 <= size


def is_run_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint ``save_checkpoint`` wrote, which a run resumes from, whatever its name (its
    tensors are memory-mapped, not read: only the small record around them is)."""
    path = Path(path)
    if not path.is_file() or is_safetensors(path) or not _is_zip(path):
        return False
    try:
        with torch.serialization.safe_globals(_UNPICKLABLE):
            if path.suffix.lower() == ".safetensors":  # torch.load would read the file as one, by its name
                with open(path, "rb") as f:
                    state = torch.load(f, map_location="cpu", weights_only=True)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a PyTorch archive we can read: not one of ours either
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def load_checkpoint(path: str | Path, map_location="cpu", hint: str = "") -> dict:
    """Read a checkpoint written by ``save_checkpoint``; anything else raises ``CheckpointError``
    (``hint`` is appended to the message for a PyTorch file of another kind)."""
    path = Path(path)
    # torch.load may read a .safetensors file as a bare state_dict; say what it is instead
    if is_safetensors(path):
        raise CheckpointError(f"{path} is a .safetensors weights file, not a spikingformer checkpoint (which "
                              f"holds a run's config and training state){hint}")
    state = _safe_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is a PyTorch file but not a spikingformer checkpoint "
                              f"(expected a dict with format={FORMAT!r}; found {found}){hint}")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; this spikingformer "
                              f"reads version {VERSION}")
    return state


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """``load_weights`` of a ``.safetensors`` file: its tensors, and what ``spikingformer export`` recorded."""
    if not path.is_file():
        raise _not_found(path)
    build = {}
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file


    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") == METADATA_FORMAT:  # written by `spikingformer export`
        try:
            build = {"model": meta["model"], "model_args": json.loads(meta["model_args"]),
                     "folded": meta.get("bn_folded") == "true",
                     **{k: json.loads(meta[k]) for k in ("config", "data") if k in meta}}
        except (KeyError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
            raise CheckpointError(f"{path}: malformed spikingformer metadata ({type(e).__name__}: {e})") from None
    return state, build


def load_weights(path: str | Path, model: str | None = None, official: bool = True) -> tuple[dict, dict]:
    """Model weights from a training checkpoint (``best.pt``/``last.pt``), a ``torch.save``-d
    state_dict (bare, or under ``model``/``state_dict``/``model_state_dict``, as timm's checkpoints of
    the official code), or a ``.safetensors`` file.  Returns ``(state_dict, build)``: ``build`` is
    ``{"model": name, "model_args": {...}, "task": "mlm"/GLUE task or None, "config": the run's
    config, "data": what the run's inputs were (``DATA_KEYS``: class names, mean/std, image size), "epoch"
    and "step": how far the run had got}`` as the training run created the model (``.safetensors`` from ``spikingformer export``: model, model_args,
    ``folded``, and config and data when the exported file came from a run), or ``{}`` when the file
    does not say.
    ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped, and an official
    repository's key layout is renamed to ours (``official.convert_official``; ``build`` then holds
    ``{"official": layout, "notes": [...], "recorded": {...}}``, ``recorded`` being what the layout and the
    training args a timm checkpoint stores say of the model: ``official.recorded_options``).  ``model``: the
    name asked for, which tells apart the two official layouts that share their tensor names when no args do.
    ``official=False``: keys as stored, for a model from the user's own code (``user_model``), whose names
    may be an official layout's."""
    path = Path(path)
    build, args = {}, None
    if path.suffix == ".safetensors" or is_safetensors(path):
        state, build = _read_safetensors(path)
    else:
        state = _safe_load(path)
        args = state.get("args") if isinstance(state, dict) else None  # timm's: the official run's command line
        if isinstance(state, dict) and state.get("format") == FORMAT:
            meta = state.get("meta", {})
            if not isinstance(meta, dict):
                raise CheckpointError(f"{path}: its record of the model (meta) is a {type(meta).__name__}, not a dict")
            progress = state.get("progress") if isinstance(state.get("progress"), dict) else {}
            build = {"model": meta.get("model"), "model_args": meta.get("model_args", {}),
                     "task": meta.get("task"), "config": state.get("config", {}),
                     "data": {k: meta[k] for k in DATA_KEYS if k in meta},
                     "epoch": progress.get("epoch"), "step": state.get("step")}
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} holds no state_dict of tensors (a dict of names to tensors)")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    layout = official_layout(state, args, model) if official else None
    if layout:
        try:
            state, layout, notes = convert_official(state, layout)
        except OfficialWeightsError as e:
            raise CheckpointError(f"{path}: {e}") from None
        build = {"official": layout, "notes": notes, "recorded": recorded_options(layout, args)}
    return state, build


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def state_mismatch(expected: dict, weights: dict) -> str:
    """Why ``weights`` do not load into a model whose state_dict is ``expected``, in one line: "missing N
    [first 6] ...; unexpected N [...]; mis-shaped N [...]" ('' when keys and shapes agree).  torch's own
    message lists every key, tens of KB for a wrong model."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items() if k in weights and weights[k].shape != v.shape)
    if not (missing or unexpected or shapes):
        return ""

    def show(keys):
        return f"{len(keys)} {keys[:6]}{' ...' if len(keys) > 6 else ''}"
    return f"missing {show(missing)}; unexpected {show(unexpected)}; mis-shaped {show(shapes)}"


def load_backbone(model, weights: dict, source: str, head: str = "head.") -> list[str]:
    """Load ``weights`` into every tensor of ``model`` outside its read-out ``head`` (which keeps its
    initialisation: fine-tuning from pre-training).  Every backbone key must be there with its shape;
    otherwise a ``ValueError`` lists the missing, unexpected and mis-shaped keys.  Returns the head keys."""
    own = model.state_dict()
    backbone = {k: v for k, v in own.items() if not k.startswith(head)}
    weights = {k: v for k, v in weights.items() if not k.startswith(head)}
    mismatch = state_mismatch(backbone, weights)
    if mismatch:
        raise InputError(f"{source} does not fit this {type(model).__name__}: {mismatch}")
    model.load_state_dict({**own, **weights})
    return sorted(set(own) - set(backbone))
