"""Where the runner's commands live: all in ``p8fs_runner.cli`` (the dreaming group is the core's
``p8fs.cli.jobs``), added to the core ``p8fs`` CLI once, through ``p8fs_register_commands``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import p8fs_runner
from p8fs_runner import plugin
from p8fs_runner.cli import CORE_COMMANDS, main
from tests.core.test_cli_layout import click_importers, defined_in, walk

RUNNER_SOURCE = Path(p8fs_runner.__file__).parent


def in_a_cli_module(command: click.Command) -> bool:
    module = defined_in(command)
    return module in ("p8fs.cli", "p8fs_runner.cli") or module.startswith("p8fs.cli.")


def test_only_the_cli_module_imports_click() -> None:
    assert click_importers(RUNNER_SOURCE, {RUNNER_SOURCE / "cli.py"}) == {}


def test_every_runner_command_is_defined_in_a_cli_module() -> None:
    paths = []
    for path, command in walk(main, "p8fs-run"):
        assert in_a_cli_module(command), (path, defined_in(command))
        paths.append(path)
    assert "p8fs-run dreaming process" in paths


@pytest.fixture
def core_main() -> Iterator[click.Group]:
    """The ``p8fs`` group, put back afterwards as it was: listing it adds the plugins' commands
    once per process, which a later test of plugin loading must still see happen."""
    from p8fs.cli import main as core

    commands, added = dict(core.commands), core._plugins_added
    yield core
    core.commands.clear()
    core.commands.update(commands)
    core._plugins_added = added


def test_every_core_command_with_plugins_is_defined_in_a_cli_module(core_main: click.Group) -> None:
    """Our own commands, the runner's included, live in a CLI module. A third-party plugin's
    command lives wherever its author put it (tests/core/test_plugins.py installs one into this
    process-wide group, so it may be here too): only commands of p8fs packages are checked."""
    paths = []
    for path, command in walk(core_main, "p8fs"):
        if defined_in(command).split(".")[0] in ("p8fs", "p8fs_runner", "p8fs_node"):
            assert in_a_cli_module(command), (path, defined_in(command))
        paths.append(path)
    assert {"p8fs router", "p8fs storage-worker"} <= set(paths)


def test_the_hook_adds_the_seed_verbs_as_defined_in_the_cli() -> None:
    group = click.Group("p8fs")
    plugin.p8fs_register_commands(cli=group)
    assert group.commands == CORE_COMMANDS
    assert group.commands["router"] is main.commands["router"]


def test_dreaming_is_the_core_group() -> None:
    from p8fs.cli.jobs import dreaming

    assert main.commands["dreaming"] is dreaming
    shown = CliRunner().invoke(main, ["dreaming", "process", "--help"], prog_name="p8fs-run")
    assert shown.exit_code == 0 and "Usage: p8fs-run dreaming process" in shown.output
