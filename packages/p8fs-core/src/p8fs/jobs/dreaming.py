"""The dreaming job: a user's sessions and documents → a DreamModel analysis in ``jobs``.

Three modes, one method each; the command that runs them is ``p8fs dreaming process`` (the seed's
``python -m p8fs.workers.dreaming process`` and ``p8fs-run dreaming process`` run the same one,
defined in :mod:`p8fs.cli.jobs`)::

    p8fs dreaming process --mode direct --tenant-id T   # process_direct: analyse now
    p8fs dreaming process --mode batch --tenant-id T    # process_batch: submit a batch
    p8fs dreaming process --completion                  # process_completion: collect batches

Direct mode runs the agent and stores the job COMPLETED (or FAILED with an ``errors`` row).
Batch mode submits a tenant's data through Anthropic's Message Batches API (OpenAI's Batch API
for OpenAI models) as one request, or several when it exceeds one call, and records a SUBMITTED
job per tenant holding the batch id. Completion finds SUBMITTED jobs, fetches the batches that
ended, validates each part with :class:`DreamModel`, merges the parts as a direct run does (the
final summary call included) and stores the result, COMPLETED or FAILED. A server without a
Batches API is refused up front with a message saying to use direct mode. A job leaves SUBMITTED exactly once, so
running completion again changes nothing.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from p8fs.agents.base import AgentInput
from p8fs.agents.dream import DreamModel, UserData, render_resource, render_session
from p8fs.agents.errors import AgentOutputError
from p8fs.database import Database
from p8fs.errors import P8fsError, error_code
from p8fs.jobs.base import DatabaseWorker
from p8fs.models import ErrorRecord, Job, JobStatus, Resource, Session, utcnow
from p8fs.settings import Settings

log = logging.getLogger(__name__)

JOB_TYPE = "dreaming"
PROCESS = "dreaming-worker"


@dataclass
class DreamingLimits:
    """How much of a user's data one analysis reads (the original's defaults)."""

    max_sessions: int = 100
    max_resources: int = 1000
    #: Tokens of rendered data an analysis may read; ``None``: ``P8FS_LLM_CONTEXT_TOKENS``.
    #: Data beyond one call is split into parts (several requests in batch mode) and merged.
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
        """Submit one batch for the tenants; a SUBMITTED job per tenant holds the batch id.

        A tenant's data is collected as for a direct run and split the same way: a tenant whose
        data exceeds one call gets several requests (its parts), merged on completion as a
        direct run merges them. Tenants without any data get no request (and a FAILED job
        saying so). A server without a Batches API is refused before anything is collected.
        """
        from p8fs.agents.batch import BatchRequest, ensure_batches, submit_batch
        from p8fs.agents.limits import max_tokens_for
        from p8fs.agents.runtime import plan_parts, prompt_overhead, user_message
        from p8fs.tokens import count_tokens

        db = await self.database()
        config = self.config()
        await ensure_batches(config)
        jobs: list[Job] = []
        requests: list[BatchRequest] = []
        for tenant_id in tenant_ids:
            job = Job(
                tenant_id=tenant_id,
                job_type=JOB_TYPE,
                status=JobStatus.PENDING,
                payload={"mode": "batch", "provider": config.provider, "model": config.model},
            )
            try:
                data = await self.collect_user_data(tenant_id)
                agent_input = DreamModel.prepare_input(data)
                parts = plan_parts(DreamModel, agent_input, config)
            except P8fsError as exc:
                await self._fail(job, exc)
                jobs.append(job)
                continue
            stem = job.id.replace("-", "")
            custom_ids = [f"{stem}-{i}" for i in range(len(parts))]
            job.payload = {
                **job.payload,
                "custom_ids": custom_ids,
                "parts": len(parts),
                "header": agent_input.header,
                "context": agent_input.context,
                "sessions": len(data.sessions),
                "resources": len(data.resources),
                "sessions_skipped": data.sessions_skipped,
                "resources_skipped": data.resources_skipped,
                "tokens": data.token_count,
            }
            overhead = prompt_overhead(DreamModel, None, config)  # the text has the header
            for i, (custom_id, part) in enumerate(zip(custom_ids, parts, strict=True)):
                text = user_message(agent_input, part.text, i + 1, len(parts))
                prompt = overhead + count_tokens(text, config.encoding)
                requests.append(
                    BatchRequest(
                        custom_id=custom_id,
                        agent=DreamModel,
                        user_text=text,
                        max_tokens=max_tokens_for(config, prompt),
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
        """Collect every submitted batch that has ended; returns the jobs that changed.

        A job's parts are validated, merged and finished with DreamModel's final summary call
        (made directly, as in a direct run). If that call cannot be made now (the service is
        down), the job stays SUBMITTED and the next completion run tries again.
        """
        from p8fs.agents.batch import fetch_batch, validate_output
        from p8fs.agents.config import resolve_llm
        from p8fs.agents.runtime import merge_results

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
                custom_ids = job.payload.get("custom_ids") or [job.payload["custom_id"]]
                agent_input = AgentInput(
                    header=str(job.payload.get("header") or ""),
                    records=[],
                    context=dict(job.payload.get("context") or {}),
                )
                try:
                    parts = []
                    for custom_id in custom_ids:
                        if results.state == "failed":
                            raise AgentOutputError(f"batch {batch_id} {results.detail}")
                        if custom_id in results.errors:
                            raise AgentOutputError(results.errors[custom_id])
                        if custom_id not in results.outputs:
                            raise AgentOutputError(
                                f"batch {batch_id} has no result for {custom_id}"
                            )
                        parts.append(
                            validate_output(
                                DreamModel,
                                results.outputs[custom_id],
                                agent_input,
                                complete=False,
                            )
                        )
                    result = await merge_results(DreamModel, parts, agent_input, config)
                except P8fsError as exc:
                    if not exc.permanent:
                        log.warning("job %s: final call failed now (%s); will retry", job.id, exc)
                        continue
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


async def run_dreaming(
    tenant_ids: list[str],
    *,
    mode: str = "direct",
    completion: bool = False,
    model: str | None = None,
    limits: DreamingLimits | None = None,
) -> list[Job]:
    """One run on the configured database: collect finished batches (``completion``), submit
    the tenants as a batch (``mode="batch"``) or analyse them now; the jobs it touched.

    The worker's own database is closed however the run ends, so a command or a CronJob can
    call this once and exit.
    """
    worker = DreamingWorker(model=model, limits=limits)
    try:
        if completion:
            return await worker.process_completion()
        if mode == "batch":
            return await worker.process_batch(list(tenant_ids))
        return [await worker.process_direct(t) for t in tenant_ids]
    finally:
        await worker.close()
