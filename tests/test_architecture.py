"""The packages form layers: ``core`` imports nothing else from steadygrad, and no two
packages import each other (module-level imports, read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import steadygrad

ROOT = Path(steadygrad.__file__).parent


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "steadygrad" and len(parts) > 1 else None


def _module_level_imports(path: Path) -> set[str]:
    """steadygrad modules imported at module level (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return {m for m in found if m.startswith("steadygrad.")}


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue  # the top-level package re-exports everything
        for module in _module_level_imports(path):
            other = _package(module)
            is_part = other and ((ROOT / other).is_dir() or (ROOT / f"{other}.py").is_file())
            if is_part and other != own:
                graph.setdefault(own, set()).add(other)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_core_imports_nothing_else_from_steadygrad():
    for path in (ROOT / "core").rglob("*.py"):
        others = {_package(m) for m in _module_level_imports(path)} - {"core", None}
        assert not others, f"{path.name} imports {others}"


def test_no_import_cycles_between_packages():
    cycle = _cycle(package_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_old_import_paths_work_for_one_release_with_a_deprecation_warning():
    import importlib

    import pytest

    import steadygrad.core as core

    moved = [
        ("steadygrad.monitor.record", "Record", core.Record),
        ("steadygrad.monitor.signals", "Signal", core.Signal),
        ("steadygrad.monitor", "Signal", core.Signal),
        ("steadygrad.diagnose.findings", "Finding", core.Finding),
    ]
    for module, name, new in moved:
        with pytest.warns(DeprecationWarning, match=f"{name} moved to steadygrad.core"):
            assert getattr(importlib.import_module(module), name) is new
