"""Smoke tests of the scripts in ``benchmarks/``, which are files, not modules of the package."""
import contextlib
import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


@contextlib.contextmanager
def load_script(name: str):
    """The module ``benchmarks/<name>.py``, registered in ``sys.modules`` while in use (dataclasses
    resolve annotations through it)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
