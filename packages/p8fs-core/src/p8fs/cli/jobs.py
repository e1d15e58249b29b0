"""``p8fs dreaming`` and ``p8fs moments``: the commands of the LLM jobs in :mod:`p8fs.jobs`.

The same groups run as ``p8fs-run dreaming`` (the runner adds this group to its own CLI) and as
the seed's ``python -m p8fs.workers.dreaming``. The jobs are imported inside the commands, so
listing commands (``p8fs --help``, ``p8fs-run --help``) never loads the agents.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p8fs.errors import P8fsError

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.jobs.moments import MomentRun
    from p8fs.models import Job


def describe_job(job: Job) -> str:
    """One line per dreaming job: tenant, status, id, and the batch, goals or error."""
    from p8fs.models import JobStatus

    line = f"{job.tenant_id}: {job.status.value} job {job.id}"
    if job.status == JobStatus.SUBMITTED:
        line += f" batch {job.payload.get('batch_id')}"
    if job.result:
        line += f" ({len(job.result.get('goals', []))} goals)"
    if job.error:
        line += f": {job.error}"
    return line


@click.group()
def dreaming() -> None:
    """The dreaming worker (DreamModel over users' sessions and resources)."""


@dreaming.command("process")
@click.option(
    "--mode",
    type=click.Choice(["direct", "batch"]),
    default="direct",
    show_default=True,
    help="direct: analyse now; batch: submit to the provider's batch API.",
)
@click.option("--tenant-id", "tenant_ids", multiple=True, help="Tenant to analyse (repeatable).")
@click.option("--completion", is_flag=True, help="Collect finished batches instead.")
@click.option("--model", default=None, help="LLM (default P8FS_DEFAULT_MODEL); openai/<name> too.")
@click.option("--max-sessions", type=int, default=100, show_default=True)
@click.option("--max-resources", type=int, default=1000, show_default=True)
def dreaming_process(
    mode: str,
    tenant_ids: tuple[str, ...],
    completion: bool,
    model: str | None,
    max_sessions: int,
    max_resources: int,
) -> None:
    """Analyse tenants (direct), submit them (batch), or collect batches (--completion)."""
    from p8fs.jobs.dreaming import DreamingLimits, run_dreaming
    from p8fs.models import JobStatus

    if not completion and not tenant_ids:
        raise click.UsageError("give --tenant-id (or --completion)")
    limits = DreamingLimits(max_sessions=max_sessions, max_resources=max_resources)
    try:
        jobs = asyncio.run(
            run_dreaming(
                list(tenant_ids), mode=mode, completion=completion, model=model, limits=limits
            )
        )
    except P8fsError as exc:
        raise click.ClickException(str(exc)) from exc
    for job in jobs:
        click.echo(describe_job(job))
    if completion and not jobs:
        click.echo("no finished batches to collect")
    if any(job.status == JobStatus.FAILED for job in jobs):
        raise SystemExit(1)


@click.group()
def moments() -> None:
    """The moment worker (MomentBuilder over transcripts)."""


@moments.command("process")
@click.option("--tenant-id", required=True, help="Tenant the moments belong to.")
@click.option(
    "--file",
    "paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Transcript file to process (repeatable); default: every ingested transcript.",
)
@click.option("--uri", "uris", multiple=True, help="Ingested file URI to process (repeatable).")
@click.option("--model", default=None, help="LLM (default P8FS_DEFAULT_MODEL).")
@click.option("--concurrency", type=int, default=2, show_default=True)
def moments_process(
    tenant_id: str,
    paths: tuple[Path, ...],
    uris: tuple[str, ...],
    model: str | None,
    concurrency: int,
) -> None:
    """Extract moments from transcripts and store them."""
    from p8fs.jobs.moments import run_moments

    try:
        run: MomentRun = asyncio.run(
            run_moments(
                tenant_id, paths=paths, uris=uris or None, model=model, concurrency=concurrency
            )
        )
    except P8fsError as exc:
        raise click.ClickException(str(exc)) from exc
    for source, stored in sorted(run.stored.items()):
        kinds = ", ".join(m.moment_type or "?" for m in stored)
        click.echo(f"{source}: {len(stored)} moment(s) [{kinds}]")
    for source, error in sorted(run.failures.items()):
        click.echo(f"error: {source}: {error}", err=True)
    click.echo(f"{run.moments} moment(s) from {len(run.stored)} transcript(s)")
    if run.failures:
        raise SystemExit(1)
