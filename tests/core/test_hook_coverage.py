"""Every hook is documented and tested (as datasette checks its own hooks).

A new hook added to ``p8fs/hookspecs.py`` without a section in ``docs/plugin-hooks.md`` or
without a test that names it fails here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from p8fs import hookspecs

REPO = Path(__file__).resolve().parents[2]
HOOKS = sorted(
    name for name, obj in vars(hookspecs).items()
    if name.startswith("p8fs_") and inspect.isfunction(obj)
)


def test_there_are_hooks() -> None:
    assert {"p8fs_register_providers", "p8fs_register_chunkers", "p8fs_register_agents",
            "p8fs_register_commands"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_where_declared_and_in_docs(hook: str) -> None:
    assert len(inspect.getdoc(getattr(hookspecs, hook)) or "") > 80, f"{hook} needs a real docstring"
    docs = (REPO / "docs" / "plugin-hooks.md").read_text()
    assert f"## {hook}(" in docs, f"docs/plugin-hooks.md has no section for {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    me = Path(__file__).resolve()
    users = [
        path for path in (REPO / "tests").rglob("test_*.py")
        if path.resolve() != me and hook in path.read_text(encoding="utf-8")
    ]
    assert users, f"no test under tests/ exercises {hook}"
