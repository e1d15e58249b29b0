"""``p8fs process PATH...``: ingest files and folders into the configured database."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import click

from p8fs.errors import P8fsError


@dataclass
class _Outcome:
    path: Path
    chunks: int = 0
    skipped: bool = False
    error: str | None = None
    provider: str | None = None


def collect_files(paths: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus every non-hidden file below named folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            found.append(path)
    return found


async def _run(files: list[Path], tenant_id: str, force: bool, jobs: int, password: str | None) -> list[_Outcome]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from p8fs.database import Database
    from p8fs.pipeline import aingest
    from p8fs.settings import get_settings

    settings = get_settings()
    database = Database.from_settings(settings)
    await database.init_schema()
    semaphore = asyncio.Semaphore(jobs)
    outcomes: list[_Outcome] = []
    options = {"password": password} if password else {}
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task("processing", total=len(files))

            async def one(path: Path) -> None:
                outcome = _Outcome(path)
                async with semaphore:
                    try:
                        result = await aingest(
                            str(path), tenant_id, database=database, settings=settings,
                            force=force, options=options, process="p8fs process",
                        )
                        outcome.chunks, outcome.skipped, outcome.provider = (
                            result.chunks, result.skipped, result.provider
                        )
                    except P8fsError as exc:
                        outcome.error = f"{type(exc).__name__}: {exc}"
                outcomes.append(outcome)
                progress.advance(task)

            await asyncio.gather(*(one(path) for path in files))
    finally:
        await database.dispose()
    return sorted(outcomes, key=lambda o: str(o.path))


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--tenant-id", default="default", show_default=True, help="Tenant the rows belong to.")
@click.option("--force", is_flag=True, help="Re-process files whose content is unchanged.")
@click.option("-j", "--jobs", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Files processed at once.")
@click.option("--password", default=None, envvar="P8FS_DOCUMENT_PASSWORD", show_envvar=True,
              help="Password for encrypted documents (prefer the variable: a command line is "
              "visible to other local users).")
@click.option("--show-files/--no-show-files", default=True, help="List every file in the summary.")
def process(paths: tuple[str, ...], tenant_id: str, force: bool, jobs: int, password: str | None,
            show_files: bool) -> None:
    """Ingest files and folders: extract text, chunk it, store files and resources rows.

    Exits non-zero when any file failed; each failure is also an `errors` row with the reason.
    """
    from rich.console import Console
    from rich.table import Table

    files = collect_files(paths)
    started = time.monotonic()

    try:
        outcomes = asyncio.run(_run(files, tenant_id, force, jobs, password))
    except P8fsError as exc:  # the database itself failed: one clear line, not a traceback
        raise click.ClickException(str(exc)) from exc
    elapsed = time.monotonic() - started
    console = Console()
    failed = [o for o in outcomes if o.error]
    if show_files:
        table = Table(title="files")
        for column in ("file", "provider", "chunks", "result"):
            table.add_column(column)
        for o in outcomes:
            result = f"[red]{o.error}" if o.error else ("unchanged" if o.skipped else "stored")
            table.add_row(str(o.path), o.provider or "-", str(o.chunks), result)
        console.print(table)
    summary = Table(title="summary")
    for column in ("files", "stored", "unchanged", "chunks", "errors", "seconds"):
        summary.add_column(column, justify="right")
    summary.add_row(
        str(len(outcomes)),
        str(sum(1 for o in outcomes if not o.error and not o.skipped)),
        str(sum(1 for o in outcomes if o.skipped)),
        str(sum(o.chunks for o in outcomes if not o.error)),
        str(len(failed)),
        f"{elapsed:.1f}",
    )
    console.print(summary)
    if failed:
        raise SystemExit(1)
