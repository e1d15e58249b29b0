"""The p8fs-runner plugin: adds the seed's runner verbs to the core ``p8fs`` CLI.

``python -m p8fs.cli router`` and ``python -m p8fs.cli storage-worker --tier small
[--send-sample FILE]`` are what the original system's operators type. The commands are defined in
:mod:`p8fs_runner.cli` (:data:`~p8fs_runner.cli.CORE_COMMANDS`); this hook only registers them.
The core never imports the runner: it only calls this hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p8fs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import click


@hookimpl
def p8fs_register_commands(cli: click.Group) -> None:
    from p8fs_runner.cli import CORE_COMMANDS

    for name, command in CORE_COMMANDS.items():
        cli.add_command(command, name)
