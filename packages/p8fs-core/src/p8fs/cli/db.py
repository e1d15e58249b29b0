"""``p8fs db``: create the schema (``init``), show it as SQL (``plan``), count rows (``status``).

It also holds the seed's ``python -m p8fs.models.p8 --provider tidb --plan`` (:func:`models_p8`),
which ``p8fs/models/p8.py`` runs when executed, so that the models never import the CLI.

Schema creation is an explicit step, never a side effect of starting a worker, so that a
production database is changed only when an operator says so. ``init`` is idempotent: it creates
what is missing and says what was already there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import click

from p8fs.errors import P8fsError

PROVIDERS = ("sqlite", "postgresql", "tidb")


@dataclass(frozen=True)
class InitReport:
    """What ``init`` did: where, which tables it created, which were already there."""

    url: str
    created: list[str]
    present: list[str]

    def describe(self) -> str:
        created = ", ".join(self.created) or "none"
        present = ", ".join(self.present) or "none"
        return f"database {self.url}\n  created tables: {created}\n  already present: {present}"


async def init_database(url: str) -> InitReport:
    """Apply the schema to the database at ``url`` and report what changed."""
    from p8fs.database import TABLE_NAMES, Database

    async with Database(url) as db:
        before = set(await db.existing_tables())
        await db.init_schema()
        return InitReport(
            url=db.safe_url,
            created=[t for t in TABLE_NAMES if t not in before],
            present=[t for t in TABLE_NAMES if t in before],
        )


def resolve_url(provider: str | None, database_url: str | None) -> str:
    """The URL to initialise: an explicit URL, else the settings (optionally for ``provider``).

    ``P8FS_DATABASE_URL`` overrides the provider settings; naming a provider that contradicts it
    is refused rather than silently ignored.
    """
    from sqlalchemy.engine import make_url

    from p8fs.database.schema import DIALECT_ALIASES
    from p8fs.settings import Settings

    if database_url:
        return database_url
    settings = Settings()
    if provider is not None:
        if settings.database_url:
            backend = make_url(settings.database_url).get_backend_name()
            if DIALECT_ALIASES.get(backend) != DIALECT_ALIASES[provider]:
                raise click.UsageError(
                    f"--provider {provider} contradicts P8FS_DATABASE_URL (a {backend} URL); "
                    "unset one of them"
                )
        else:
            settings = settings.model_copy(update={"storage_provider": provider})
    if settings.storage_provider == "sqlite" and not settings.database_url:
        settings.sqlite_path().parent.mkdir(parents=True, exist_ok=True)
    return settings.resolved_database_url()


def run_init(provider: str | None = None, database_url: str | None = None) -> InitReport:
    """``init`` for the CLI: typed failures become a one-line message and exit status 1."""
    try:
        return asyncio.run(init_database(resolve_url(provider, database_url)))
    except P8fsError as exc:
        raise click.ClickException(str(exc)) from exc


def echo_plan(provider: str | None) -> None:
    """Print the DDL for ``provider`` (default: the configured one), ready to pipe to a client."""
    from p8fs.database import plan_ddl
    from p8fs.settings import Settings

    click.echo(plan_ddl(provider or Settings().storage_provider), nl=False)


@click.group()
def db() -> None:
    """Database schema: create it, print it, count rows."""


@db.command()
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default=None,
    help="Database to initialise (default: P8FS_STORAGE_PROVIDER).",
)
@click.option(
    "--database-url",
    default=None,
    help="SQLAlchemy URL to initialise instead of the configured database.",
)
def init(provider: str | None, database_url: str | None) -> None:
    """Create the p8fs tables and indexes that are missing (safe to run again)."""
    click.echo(run_init(provider, database_url).describe())


@db.command()
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default=None,
    help="Dialect of the DDL (default: P8FS_STORAGE_PROVIDER).",
)
def plan(provider: str | None) -> None:
    """Print the CREATE TABLE / CREATE INDEX statements for a dialect (pipe into a client)."""
    echo_plan(provider)


@db.command()
@click.option("--tenant-id", default=None, help="Count only this tenant's rows.")
@click.option("--database-url", default=None, help="SQLAlchemy URL instead of the settings'.")
def status(tenant_id: str | None, database_url: str | None) -> None:
    """Rows per table in the configured database."""
    from p8fs.database import TABLE_NAMES, Database

    async def _counts() -> tuple[str, dict[str, int | None]]:
        async with Database(resolve_url(None, database_url)) as database:
            present = set(await database.existing_tables())
            counts: dict[str, int | None] = {
                table: await database.count(table, tenant_id) if table in present else None
                for table in TABLE_NAMES
            }
            return database.safe_url, counts

    try:
        url, counts = asyncio.run(_counts())
    except P8fsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"database {url}" + (f" (tenant {tenant_id})" if tenant_id else ""))
    for table, count in counts.items():
        shown = "missing (run `p8fs db init`)" if count is None else str(count)
        click.echo(f"  {table:<10} {shown}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default=None,
    help="sqlite, postgresql or tidb (default: P8FS_STORAGE_PROVIDER).",
)
@click.option("--plan", "plan_only", is_flag=True, help="Print the DDL instead of applying it.")
def models_p8(provider: str | None, plan_only: bool) -> None:
    """Print (--plan) or apply the p8fs schema."""
    if plan_only:
        echo_plan(provider)
        return
    click.echo(run_init(provider).describe())
