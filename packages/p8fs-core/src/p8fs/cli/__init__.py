"""The ``p8fs`` command line.

Sub-commands are imported only when invoked (a lazy group), so ``p8fs --help`` and a worker's
start stay fast. Plugins add commands through ``p8fs_register_commands(cli)``.

Every command of the core is defined in this package, and only here does the core import click
(``tests/core/test_cli_layout.py`` keeps that true): the jobs, models and database expose plain
functions that the commands call.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

#: Built-in sub-commands: name -> "module:attribute".
BUILTIN_COMMANDS: dict[str, str] = {
    "process": "p8fs.cli.process:process",
    "plugins": "p8fs.cli.inspect:plugins",
    "providers": "p8fs.cli.inspect:providers",
    "db": "p8fs.cli.db:db",
    "eval": "p8fs.cli.eval:eval_command",
    "search": "p8fs.cli.search:search",
    "embed": "p8fs.cli.search:embed",
    "dreaming": "p8fs.cli.jobs:dreaming",
    "moments": "p8fs.cli.jobs:moments",
}


class LazyGroup(click.Group):
    """A click group whose built-in commands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self._plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from p8fs.plugins import get_plugins

        get_plugins().add_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module_name, attr = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module_name), attr), cmd_name)
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command


@click.group(cls=LazyGroup, lazy=BUILTIN_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="p8fs-core", prog_name="p8fs")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """p8fs: turn files into searchable chunks and typed agent output."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


cli = main
