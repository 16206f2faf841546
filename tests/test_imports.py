"""Every import runs downhill: no circle among ether_prep's modules (type-only and function-level imports
included, so no annotation has to fall back to ``Any``), and adapters import no layer above them. No function
is longer than 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "ether_prep"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """ether_prep modules that ``name`` imports anywhere: module level, for type hints only
    (``if TYPE_CHECKING:``) and inside functions (a lazy import is still a dependency: a circle through it
    fails at the first call instead of at import), with the packages they sit in, except packages that
    contain ``name`` itself."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (stem, node.module or "") if p)
            targets = [module, *(f"{module}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in MODULES and not name.startswith(candidate + ".") and candidate != name:
                    found.add(candidate)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_module_imports_form_no_circle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circle = [*path[path.index(nxt):], nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name)
    assert GRAPH["ether_prep.config"] >= {"ether_prep.spec", "ether_prep.stages"}
    assert not {m for m in GRAPH["ether_prep.spec"] if m != "ether_prep"}  # a leaf: config and stages both use it


def test_adapters_import_no_layer_above_them() -> None:
    above = ("ether_prep.stages", "ether_prep.speech", "ether_prep.face", "ether_prep.align", "ether_prep.config",
             "ether_prep.runner", "ether_prep.executors", "ether_prep.cli")
    for name in (m for m in MODULES if m.startswith("ether_prep.adapters.")):
        assert not {m for m in GRAPH[name] if m.startswith(above)}, name


def test_no_function_over_60_lines() -> None:
    """Functions are read whole: one over 60 lines (its ``def`` to its last line) is split into named steps."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{name}.{node.name} ({lines} lines, line {node.lineno})")
    assert not long, "functions over 60 lines: " + "; ".join(long)


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_ray_executor_imports_ray_and_the_pool_policy_is_pure() -> None:
    importers = {name for name, path in MODULES.items() if "ray" in _third_party_imports(path)}
    assert importers == {"ether_prep.executors.ray"}
    # decide() is tested without Ray: it reads nothing but the standard library
    assert not GRAPH["ether_prep.executors.policy"]
    assert _third_party_imports(MODULES["ether_prep.executors.policy"]) <= {"__future__", "collections", "dataclasses",
                                                                             "enum"}
