"""The package's layout shows its architecture: subpackages by role, each importing only those below it.

Read from the source with ``ast`` (every import, at the top of a module or inside a function), so a cycle or an
import up a layer cannot hide in a function body.  ``python tests/test_layout.py`` prints the picture.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "spikingformer"

# Bottom to top; a module may import its own layer's modules and those below, never one above.  Weights and
# deployment are one layer: reading a checkpoint may fold BN (deploy.fold), exporting reads one (weights.loading).
LAYERS = (("utils",), ("nn",), ("models",), ("data",), ("weights", "deploy"), ("analysis",), ("train",), ("cli",))
# The package's front (spikingformer/__init__.py) re-exports the public names of every layer but the CLI; only the
# CLI, above it, imports the front (for __version__): a layer that did would import every other layer through it.
FRONT = "spikingformer"

# Package-internal imports that may stay inside a function, each with its reason.
LOCAL_IMPORTS_ALLOWED = {
    ("spikingformer.nn.neuron", "spikingformer.nn.kernels"): "the Triton kernels need triton, an optional dependency",
    ("spikingformer.nn.fast", "spikingformer.nn.kernels"): "the Triton kernels need triton, an optional dependency",
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Over the limits with a reason (module or function "module:qualname" -> why).
LONG_ALLOWED: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py")) if "configs" not in p.parts}


def _target(node: ast.ImportFrom, name: str, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, at the top?, line) for every package-internal import."""
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            at_top = id(node) in top
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _target(node, name, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in known:  # spikingformer.x.y.attr -> the module that defines it
                    t = t.rpartition(".")[0]
                if t.startswith("spikingformer") and t != name:
                    found.append((name, t, at_top, node.lineno))
    return found


def layer(name: str) -> int | None:
    parts = name.split(".")
    if name == FRONT:
        return len(LAYERS) - 1.5  # above every library layer, below the CLI
    return next((rank for rank, names in enumerate(LAYERS) if len(parts) > 1 and parts[1] in names), None)


def cycles(edges: list[tuple[str, str, bool, int]]) -> list[list[str]]:
    graph = defaultdict(set)
    for a, b, _, _ in edges:
        if not b.startswith(a + ".") and not (a.startswith(b + ".") and b != FRONT):  # a package and its modules
            graph[a].add(b)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def upward(edges) -> list[str]:
    return sorted({f"{a}:{line} imports {b}" for a, b, _, line in edges
                   if a != FRONT and None not in (layer(a), layer(b)) and layer(b) > layer(a)})


def hidden(edges) -> list[str]:
    return sorted({f"{a}:{line} imports {b} inside a function" for a, b, top, line in edges
                   if not top and (a, b) not in LOCAL_IMPORTS_ALLOWED})


def long_code(known: dict[str, Path]) -> list[str]:
    found = []
    for name, path in known.items():
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES and name not in LONG_ALLOWED:
            found.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in LONG_ALLOWED:
                    found.append(f"{name}:{node.name}: {length} lines")
    return found


def test_every_module_sits_in_a_layer():
    known = modules()
    loose = [m for m in known if layer(m) is None]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_no_import_cycle():
    assert not cycles(imports(modules()))


def test_no_import_up_a_layer():
    assert not upward(imports(modules()))


def test_package_imports_sit_at_the_top_of_the_module():
    assert not hidden(imports(modules()))


def test_modules_and_functions_a_reader_can_hold():
    assert not long_code(modules())


if __name__ == "__main__":  # python tests/test_layout.py [PACKAGE_DIR]: another tree, e.g. an old commit's
    if len(sys.argv) > 1:
        PKG = Path(sys.argv[1]).resolve()
    known = modules()
    edges = imports(known)
    print(f"{len(known)} modules in {len(LAYERS)} layers and the front; "
          f"{len(edges)} package-internal imports, {sum(not t for _, _, t, _ in edges)} inside functions")
    for title, rows in (("cycles", cycles(edges)), ("imports up a layer", upward(edges)),
                        ("imports inside functions", hidden(edges)), ("over the length limits", long_code(known))):
        print(f"\n{title}: {len(rows)}")
        for r in rows:
            print("  ", r)
    sys.exit(0)
