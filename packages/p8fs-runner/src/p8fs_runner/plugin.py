"""The p8fs-runner plugin: adds the seed's runner verbs to the core ``p8fs`` CLI.

``python -m p8fs.cli router`` and ``python -m p8fs.cli storage-worker --tier small
[--send-sample FILE]`` are what the original system's operators type; they run exactly what
``p8fs-run router`` and ``p8fs-run --tier small [--send-sample FILE]`` run. The core never
imports the runner: it only calls this hook.
"""

from __future__ import annotations

from pathlib import Path

import click

from p8fs import hookimpl


@hookimpl
def p8fs_register_commands(cli: click.Group) -> None:
    from p8fs_runner import cli as runner_cli

    cli.add_command(runner_cli.router, "router")

    @cli.command("storage-worker")
    @click.option(
        "--tier",
        type=click.Choice(runner_cli.TIER_CHOICES),
        default="small",
        show_default=True,
        help="Worker tier: small (< 100 MiB), medium (< 1 GiB), large, or test.",
    )
    @click.option(
        "--send-sample",
        "send_sample",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Self-test: upload FILE, publish its event to the TEST queue, process it, verify.",
    )
    @click.option("--grace", type=float, default=25.0, show_default=True)
    def storage_worker(tier: str, send_sample: Path | None, grace: float) -> None:
        """Process a tier's storage events (the seed's storage worker), or run the self-test."""
        runner_cli._configure_logging(0)
        if send_sample is not None:
            runner_cli.run_selftest_command(tier, send_sample)
        else:
            runner_cli.run_worker(tier, grace=grace, metrics_port=None)
