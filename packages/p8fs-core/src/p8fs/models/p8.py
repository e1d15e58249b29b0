"""``python -m p8fs.models.p8 --provider tidb --plan``: the original system's schema command.

With ``--plan`` it prints the DDL for the dialect (``sqlite``, ``postgresql`` or ``tidb``) so it
can be piped into a database client; without it, it applies the schema to the configured
database, exactly like ``p8fs db init``.
"""

from __future__ import annotations

import click

from p8fs.cli.db import PROVIDERS, run_init


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default=None,
    help="sqlite, postgresql or tidb (default: P8FS_STORAGE_PROVIDER).",
)
@click.option("--plan", "plan_only", is_flag=True, help="Print the DDL instead of applying it.")
def main(provider: str | None, plan_only: bool) -> None:
    """Print (--plan) or apply the p8fs schema."""
    if plan_only:
        from p8fs.database import plan_ddl
        from p8fs.settings import Settings

        click.echo(plan_ddl(provider or Settings().storage_provider), nl=False)
        return
    click.echo(run_init(provider).describe())


if __name__ == "__main__":
    main(prog_name="python -m p8fs.models.p8")
