"""Where commands live: every ``p8fs`` command is defined in ``p8fs.cli``, only that package
imports click, and the original system's module entry points still run the same commands."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import p8fs
from p8fs.cli import BUILTIN_COMMANDS, main

CORE_SOURCE = Path(p8fs.__file__).parent


def runtime_imports_of_click(source: Path) -> list[int]:
    """Lines of ``source`` that import click when the module runs (``TYPE_CHECKING`` blocks,
    which only name click in annotations, are not counted)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    lines = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "click" for a in node.names):
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "click":
            lines.append(node.lineno)
    return lines


def click_importers(package: Path, allowed: set[Path]) -> dict[str, list[int]]:
    """Modules of ``package`` outside ``allowed`` (files or folders) that import click."""
    found = {}
    for source in sorted(package.rglob("*.py")):
        if any(source == a or a in source.parents for a in allowed):
            continue
        if lines := runtime_imports_of_click(source):
            found[str(source.relative_to(package.parent))] = lines
    return found


def test_only_the_cli_package_imports_click() -> None:
    assert click_importers(CORE_SOURCE, {CORE_SOURCE / "cli"}) == {}


def test_the_check_sees_a_runtime_import_and_ignores_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import click\n"
    )
    (package / "runs.py").write_text("def f():\n    from click import echo\n")
    assert click_importers(package, set()) == {"pkg/runs.py": [2]}


def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    """Every command under ``command`` (groups included), with its command path."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name}"
            yield from walk(sub, f"{path} {name}")


def defined_in(command: click.Command) -> str:
    assert command.callback is not None
    return command.callback.__module__


def test_every_builtin_command_is_defined_in_the_cli_package() -> None:
    ctx = click.Context(main, info_name="p8fs")
    for name in BUILTIN_COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None, name
        for path, sub in walk(command, f"p8fs {name}"):
            assert defined_in(sub).startswith("p8fs.cli."), (path, defined_in(sub))


def test_the_jobs_are_commands_of_p8fs() -> None:
    for group, options in (("dreaming", "--completion"), ("moments", "--uri")):
        shown = CliRunner().invoke(main, [group, "process", "--help"], prog_name="p8fs")
        assert shown.exit_code == 0, shown.output
        assert f"Usage: p8fs {group} process" in shown.output and options in shown.output


def _python_m(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("p8fs.models.p8", ["--help"], ["--provider", "--plan"]),
        ("p8fs.workers.dreaming", ["process", "--help"], ["--mode", "--completion"]),
        ("p8fs.workers.moments", ["process", "--help"], ["--tenant-id", "--uri"]),
        ("p8fs.cli", ["dreaming", "process", "--help"], ["--max-sessions"]),
    ],
)
def test_the_seed_module_entry_points_run_their_commands(
    module: str, args: list[str], expected: list[str]
) -> None:
    done = _python_m("-m", module, *args)
    assert done.returncode == 0, done.stderr
    assert f"Usage: python -m {module}" in done.stdout
    for option in expected:
        assert option in done.stdout


def test_importing_the_jobs_and_models_loads_no_cli() -> None:
    """The seed's module names are importable without the command line behind them."""
    code = (
        "import sys, p8fs.models.p8, p8fs.jobs.dreaming, p8fs.jobs.moments, p8fs.workers.dreaming;"
        "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('p8fs.cli')))"
    )
    done = _python_m("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_seed_import_path_names_the_same_objects() -> None:
    from p8fs.jobs import dreaming, moments
    from p8fs.workers import dreaming as seed_dreaming
    from p8fs.workers import moments as seed_moments

    assert seed_dreaming.DreamingWorker is dreaming.DreamingWorker
    assert seed_dreaming.DreamingLimits is dreaming.DreamingLimits
    assert seed_moments.MomentWorker is moments.MomentWorker
