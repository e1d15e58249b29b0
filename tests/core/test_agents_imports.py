"""The agents package's modules import each other one way: no cycle, not even inside a function.

A cycle hidden in a function-level import (``base`` running the runtime, the runtime typed
against ``base``) works until someone moves an import to the top of a file; then the package
fails to import with a half-initialised module. The contract sits at the bottom
(``contract`` <- ``runtime`` <- ``base``), and this test reads every import statement, at any
depth, to keep it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import p8fs.agents

PACKAGE = "p8fs.agents"


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level, functions, blocks)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + ".").split(".")[0])
            elif node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.removeprefix(PACKAGE + ".").split(".")[0])
    return found


def _graph() -> dict[str, set[str]]:
    folder = Path(p8fs.agents.__file__).parent
    modules = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_agents_modules_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    assert {"base", "contract", "runtime"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    # The layering the cycle was broken with.
    assert "runtime" in graph["base"] and "base" not in graph["runtime"]
    assert "contract" in graph["runtime"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above is only as good as this: a cycle through a function-level import."""
    assert _cycle({"base": {"runtime"}, "runtime": {"base"}}) == ["base", "runtime", "base"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
