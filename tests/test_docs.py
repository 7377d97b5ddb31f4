"""The docs stay true: the site (``mkdocs.yml``, ``docs/``) builds with warnings as errors, and every Python
example of README.md and docs/ runs.

A block preceded by ``<!-- skip: REASON -->`` (one that needs data or a trained run) is only compiled. The
blocks of one page run in order in one namespace, as a reader would paste them.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*skip:\s*(?P<skip>.*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of every ```python block of ``page``."""
    text = page.read_text()
    return [(text[:m.start("code")].count("\n") + 1, m.group("code"), m.group("skip"))
            for m in BLOCK.finditer(text)]


def test_readme_is_a_front_door_with_the_two_commands_first():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    commands = re.findall(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    assert "spikingformer demo" in commands[0]
    ci_test = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_test == "python -m pytest -q" and commands[1].strip().endswith(ci_test)


def test_every_page_with_examples_is_found():
    assert sum(1 for p in PAGES if python_blocks(p)) >= 4


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__docs__"}
    for line, code, skip in python_blocks(page):
        compiled = compile(code, f"{page.relative_to(ROOT)}:{line}", "exec")
        if skip is None:
            exec(compiled, namespace)


def test_generated_pages_are_current():
    """The CLI, config and comparison references are what the code generates now (``docs/generate.py``); the
    comparison runs ``spikingformer compare`` over every model of the papers' tables (SEW ResNet's need
    SpikingJelly, which the README's test command installs)."""
    pytest.importorskip("spikingjelly.activation_based.model.sew_resnet", reason="the SEW ResNet rows need it")
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"the docs tools are not installed ({module}): pip install -e '.[test]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert all(f"spikingformer {c}" in cli for c in ("train", "eval", "energy", "verify", "glue"))
    configs = (site / "reference" / "configs" / "index.html").read_text()
    assert all(k in configs for k in ("TrainConfig", "PretrainConfig", "MLMConfig", "GlueConfig", "mask_ratio"))
    comparison = (site / "reference" / "comparison" / "index.html").read_text()
    assert all(m in comparison for m in ("sd_transformer_8_512", "qkformer_4_384", "transformer_8_512"))
    assert 'id="spikingformer.create_model"' in (site / "reference" / "api" / "index.html").read_text()
