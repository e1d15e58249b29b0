"""The dreaming worker: a user's sessions and documents → a DreamModel analysis in ``jobs``.

Three modes, as the original's CLI::

    python -m p8fs.workers.dreaming process --mode direct --tenant-id T   # analyse now
    python -m p8fs.workers.dreaming process --mode batch --tenant-id T    # submit a batch
    python -m p8fs.workers.dreaming process --completion                  # collect batches

Direct mode runs the agent and stores the job COMPLETED (or FAILED with an ``errors`` row).
Batch mode submits one request per tenant through Anthropic's Message Batches API (OpenAI's
Batch API for OpenAI models) and records a SUBMITTED job per tenant holding the batch id.
Completion finds SUBMITTED jobs, fetches the batches that ended, validates each tool result with
:class:`DreamModel` and stores it, COMPLETED or FAILED. A job leaves SUBMITTED exactly once, so
running completion again changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import click

from p8fs.agents.base import AgentInput
from p8fs.agents.dream import DreamModel, UserData, render_resource, render_session
from p8fs.agents.errors import AgentOutputError
from p8fs.database import Database
from p8fs.errors import P8fsError, error_code
from p8fs.models import ErrorRecord, Job, JobStatus, Resource, Session, utcnow
from p8fs.settings import Settings
from p8fs.workers.base import DatabaseWorker

log = logging.getLogger(__name__)

JOB_TYPE = "dreaming"
PROCESS = "dreaming-worker"
#: Tokens kept free in a batch request beyond the prompt and schema.
BATCH_MARGIN_TOKENS = 500


@dataclass
class DreamingLimits:
    """How much of a user's data one analysis reads (the original's defaults)."""

    max_sessions: int = 100
    max_resources: int = 1000
    #: Tokens of rendered data an analysis may read; ``None``: the model's context
    #: (``P8FS_LLM_CONTEXT_TOKENS``). Direct runs split beyond one call; batch runs never do.
    token_budget: int | None = None


class DreamingWorker(DatabaseWorker):
    """Runs DreamModel over tenants' data and keeps the results in ``jobs``."""

    def __init__(
        self,
        database: Database | None = None,
        *,
        model: str | None = None,
        limits: DreamingLimits | None = None,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(settings, database)
        self.model = model
        self.limits = limits or DreamingLimits()

    def config(self, *, require_key: bool = True) -> Any:
        from p8fs.agents.config import resolve_llm

        return resolve_llm(self.model, settings=self.settings, require_key=require_key)

    # -- data ------------------------------------------------------------------------------
    async def collect_user_data(self, tenant_id: str, token_budget: int | None = None) -> UserData:
        """The tenant's newest sessions and resources, as many as fit the token budget.

        Items are taken newest first across both kinds until the next one would exceed the
        budget; each is rendered in full (the model reads the data, not a sample of it). What is
        left out is counted in ``sessions_skipped`` / ``resources_skipped``.
        """
        from p8fs.tokens import count_tokens

        db = await self.database()
        sessions = await db.list_sessions(tenant_id, limit=self.limits.max_sessions)
        resources = await db.list_resources(
            tenant_id, limit=self.limits.max_resources, newest_first=True
        )
        budget = (
            token_budget
            or self.limits.token_budget
            or self.config(require_key=False).context_tokens
        )
        items: list[tuple[Any, Session | Resource]] = [(s.created_at, s) for s in sessions]
        items += [(r.created_at, r) for r in resources]
        items.sort(key=lambda pair: pair[0], reverse=True)
        data = UserData(tenant_id=tenant_id)
        used = 0
        for _, item in items:
            text = render_session(item) if isinstance(item, Session) else render_resource(item)
            cost = count_tokens(text, self.settings.token_encoding) + 2
            if used + cost > budget:
                if isinstance(item, Session):
                    data.sessions_skipped += 1
                else:
                    data.resources_skipped += 1
                continue
            used += cost
            if isinstance(item, Session):
                data.sessions.append(item)
            else:
                data.resources.append(item)
        data.token_count = used
        return data

    # -- direct -----------------------------------------------------------------------------
    async def process_direct(self, tenant_id: str) -> Job:
        """Analyse one tenant now; the job is stored COMPLETED with the result, or FAILED."""
        db = await self.database()
        job = Job(
            tenant_id=tenant_id,
            job_type=JOB_TYPE,
            status=JobStatus.RUNNING,
            payload={"mode": "direct", "model": self.model or self.settings.default_model},
        )
        await db.upsert_job(job)
        try:
            data = await self.collect_user_data(tenant_id)
            job.payload = {
                **job.payload,
                "sessions": len(data.sessions),
                "resources": len(data.resources),
                "sessions_skipped": data.sessions_skipped,
                "resources_skipped": data.resources_skipped,
                "tokens": data.token_count,
            }
            result = await DreamModel.arun(data, model=self.model, settings=self.settings)
        except P8fsError as exc:
            await self._fail(job, exc)
            return job
        job.status = JobStatus.COMPLETED
        job.result = result.model_dump(mode="json")
        job.updated_at = utcnow()
        await db.upsert_job(job)
        return job

    # -- batch ------------------------------------------------------------------------------
    async def process_batch(self, tenant_ids: list[str]) -> list[Job]:
        """Submit one batch with a request per tenant; a SUBMITTED job per tenant holds its id.

        Tenants without any data get no request (and a FAILED job saying so).
        """
        from p8fs.agents.batch import BatchRequest, submit_batch
        from p8fs.agents.runtime import plan_chunks, prompt_overhead, user_message

        db = await self.database()
        config = self.config()
        jobs: list[Job] = []
        requests: list[BatchRequest] = []
        empty = AgentInput(header="# Data of user " + "x" * 64 + "\n", records=[])
        budget = config.context_tokens - prompt_overhead(DreamModel, empty, config)
        budget -= BATCH_MARGIN_TOKENS
        for tenant_id in tenant_ids:
            job = Job(
                tenant_id=tenant_id,
                job_type=JOB_TYPE,
                status=JobStatus.PENDING,
                payload={"mode": "batch", "provider": config.provider, "model": config.model},
            )
            try:
                data = await self.collect_user_data(tenant_id, token_budget=budget)
                agent_input = DreamModel.prepare_input(data)
                [text] = plan_chunks(DreamModel, agent_input, config)  # one call by budget
            except P8fsError as exc:
                await self._fail(job, exc)
                jobs.append(job)
                continue
            job.payload = {
                **job.payload,
                "custom_id": job.id.replace("-", ""),
                "context": agent_input.context,
                "sessions": len(data.sessions),
                "resources": len(data.resources),
            }
            requests.append(
                BatchRequest(
                    custom_id=job.payload["custom_id"],
                    agent=DreamModel,
                    user_text=user_message(agent_input, text, 1, 1),
                )
            )
            jobs.append(job)
        pending = [j for j in jobs if j.status == JobStatus.PENDING]
        if not requests:
            return jobs
        try:
            batch_id = await submit_batch(requests, config)
        except P8fsError as exc:
            for job in pending:
                await self._fail(job, exc)
            return jobs
        for job in pending:
            job.status = JobStatus.SUBMITTED
            job.payload = {**job.payload, "batch_id": batch_id}
            job.updated_at = utcnow()
            await db.upsert_job(job)
        return jobs

    async def process_completion(self) -> list[Job]:
        """Collect every submitted batch that has ended; returns the jobs that changed."""
        from p8fs.agents.batch import fetch_batch, validate_output
        from p8fs.agents.config import resolve_llm

        db = await self.database()
        submitted = await db.list_jobs(job_type=JOB_TYPE, status=JobStatus.SUBMITTED, limit=10_000)
        by_batch: dict[tuple[str, str, str], list[Job]] = defaultdict(list)
        for job in submitted:
            key = (job.payload["batch_id"], job.payload["provider"], job.payload["model"])
            by_batch[key].append(job)
        changed: list[Job] = []
        for (batch_id, provider, model), jobs in by_batch.items():
            config = resolve_llm(f"{provider}/{model}", settings=self.settings)
            try:
                results = await fetch_batch(batch_id, config, DreamModel)
            except P8fsError as exc:
                if not exc.permanent:
                    log.warning("batch %s not reachable now (%s); will retry", batch_id, exc)
                    continue
                for job in jobs:
                    await self._fail(job, exc)
                    changed.append(job)
                continue
            if results.state == "in_progress":
                log.info("batch %s still %s", batch_id, results.detail)
                continue
            for job in jobs:
                custom_id = job.payload["custom_id"]
                try:
                    if results.state == "failed":
                        raise AgentOutputError(f"batch {batch_id} {results.detail}")
                    if custom_id in results.errors:
                        raise AgentOutputError(results.errors[custom_id])
                    if custom_id not in results.outputs:
                        raise AgentOutputError(f"batch {batch_id} has no result for {custom_id}")
                    agent_input = AgentInput(
                        header="", records=[], context=dict(job.payload.get("context") or {})
                    )
                    result = validate_output(DreamModel, results.outputs[custom_id], agent_input)
                except P8fsError as exc:
                    await self._fail(job, exc)
                    changed.append(job)
                    continue
                job.status = JobStatus.COMPLETED
                job.result = result.model_dump(mode="json")
                job.error = None
                job.updated_at = utcnow()
                await db.upsert_job(job)
                changed.append(job)
        return changed

    # -- failures ---------------------------------------------------------------------------
    async def _fail(self, job: Job, exc: BaseException) -> None:
        """The job FAILED with the error, and an ``errors`` row a human will see."""
        db = await self.database()
        job.status = JobStatus.FAILED
        job.error = str(exc)
        job.updated_at = utcnow()
        await db.upsert_job(job)
        await db.record_error(
            ErrorRecord(
                tenant_id=job.tenant_id,
                process=PROCESS,
                message=str(exc),
                stack_trace="".join(traceback.format_exception(exc)),
                metadata={
                    "code": error_code(exc),
                    "job_id": job.id,
                    "mode": job.payload.get("mode"),
                    "batch_id": job.payload.get("batch_id"),
                },
            )
        )


# -- command line -------------------------------------------------------------------------------
def _describe(job: Job) -> str:
    line = f"{job.tenant_id}: {job.status.value} job {job.id}"
    if job.status == JobStatus.SUBMITTED:
        line += f" batch {job.payload.get('batch_id')}"
    if job.result:
        line += f" ({len(job.result.get('goals', []))} goals)"
    if job.error:
        line += f": {job.error}"
    return line


@click.group()
def cli() -> None:
    """The dreaming worker (DreamModel over users' sessions and resources)."""


@cli.command()
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
def process(
    mode: str,
    tenant_ids: tuple[str, ...],
    completion: bool,
    model: str | None,
    max_sessions: int,
    max_resources: int,
) -> None:
    """Analyse tenants (direct), submit them (batch), or collect batches (--completion)."""
    if not completion and not tenant_ids:
        raise click.UsageError("give --tenant-id (or --completion)")
    limits = DreamingLimits(max_sessions=max_sessions, max_resources=max_resources)

    async def go() -> list[Job]:
        worker = DreamingWorker(model=model, limits=limits)
        try:
            if completion:
                return await worker.process_completion()
            if mode == "batch":
                return await worker.process_batch(list(tenant_ids))
            return [await worker.process_direct(t) for t in tenant_ids]
        finally:
            await worker.close()

    try:
        jobs = asyncio.run(go())
    except P8fsError as exc:
        raise click.ClickException(str(exc)) from exc
    for job in jobs:
        click.echo(_describe(job))
    if completion and not jobs:
        click.echo("no finished batches to collect")
    if any(job.status == JobStatus.FAILED for job in jobs):
        raise SystemExit(1)


if __name__ == "__main__":
    cli(prog_name="python -m p8fs.workers.dreaming")
