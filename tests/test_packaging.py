"""The wheel, built offline from the checkout: every module and recipe where an install imports it, nothing else."""
import configparser
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What pyproject.toml reads while building (its readme and package-dir): add here what it comes to reference.
BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "configs")


def _missing_backend() -> str | None:
    """Why setuptools cannot build a wheel in this environment, or None."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed (the test extra brings it: pip install -e '.[test]')"
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < (64, 0):
        return f"setuptools {version} is older than pyproject's build requirement setuptools>=64"
    # setuptools ships its own bdist_wheel from 70.1 on; before that it is the `wheel` package's
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {version} builds wheels only with the `wheel` package, which is not installed"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build with setuptools' PEP 517 hook (what `pip wheel --no-build-isolation` calls, 3x faster) in a
    subprocess, from a copy: setuptools writes build/ and src/*.egg-info into the tree it builds, and a stale
    egg-info's SOURCES.txt could put files in the wheel that the checkout no longer has."""
    if reason := _missing_backend():
        pytest.skip(reason)
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for name in BUILD_INPUTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, tree / name)
    built = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; b.build_wheel(sys.argv[1])",
                            str(out)], cwd=tree, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    (whl,) = out.glob("spikingformer-*.whl")
    with zipfile.ZipFile(whl) as z:
        yield z


def test_the_wheel_ships_every_module_and_recipe_and_nothing_else(wheel):
    modules = {f"spikingformer/{p.relative_to(ROOT / 'src' / 'spikingformer').as_posix()}"
               for p in (ROOT / "src" / "spikingformer").rglob("*.py")}
    recipes = {f"spikingformer/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert recipes and "spikingformer/cli/__init__.py" in modules
    names = set(wheel.namelist())
    assert modules - names == set(), "modules missing from the wheel"
    assert recipes - names == set(), "recipes missing from the wheel"
    package = {n for n in names if n.startswith("spikingformer/")}
    assert package - modules - recipes == {"spikingformer/configs/__init__.py"}
    # everything else is the wheel's own metadata: no tests/, benchmarks/, build/ or top-level strays
    others = {n.split("/")[0] for n in names - package}
    assert len(others) == 1 and others.pop().endswith(".dist-info"), sorted(names - package)
    assert not [n for n in names if Path(n).name.startswith("test_") or "benchmark" in n or "build/" in n]


def test_the_wheel_declares_the_console_script(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["console_scripts"]["spikingformer"] == "spikingformer.cli:main"
