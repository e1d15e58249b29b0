"""What a worker does with one storage event: the core pipeline, bound to one database.

The runner owns no processing logic: create and update events ingest the object
(``p8fs.pipeline.aingest``, streamed from S3), delete events remove the file's rows, rename
events move them (or ingest the new name when nothing was stored under the old one).

Processing never raises for a failure of the event's work: it returns a
:class:`~p8fs_runner.settlement.Failed` that says whether the failure's ``errors`` row is
committed, so the worker's settlement needs nothing but the returned value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p8fs.errors import P8fsError
from p8fs_runner.settlement import Failed, Processed

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.database import Database
    from p8fs.models import Job
    from p8fs.settings import Settings
    from p8fs_runner.events import StorageEvent


#: Event metadata keys that become extraction options (everything else is the uploader's).
EVENT_OPTION_KEYS = frozenset({"password"})


def event_options(event: StorageEvent) -> dict[str, Any]:
    """The extraction options an event may carry: a document password, nothing else."""
    return {k: v for k, v in event.metadata.items() if k in EVENT_OPTION_KEYS}


class PipelineProcessor:
    """Calls the pipeline for each event and reports a typed outcome."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        storage_options: dict[str, Any] | None = None,
        process: str = "storage-worker",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.process = process
        self.options = options
        if storage_options is None:
            from p8fs.storage import storage_options_from_settings

            storage_options = storage_options_from_settings(settings)
        self.storage_options = storage_options

    async def __call__(self, event: StorageEvent, job: Job | None = None) -> Processed | Failed:
        """Process ``event``; ``job``, when given, is committed DONE with an ingest's rows."""
        try:
            if event.event_type == "delete":
                return await self._delete(event)
            if event.event_type == "rename":
                moved = await self._rename(event)
                if moved is not None:
                    return moved
                # Nothing stored under the old name (or no old name): process the new one.
        except Exception as exc:
            return Failed(exc)
        return await self._ingest(event, job)

    async def _delete(self, event: StorageEvent) -> Processed:
        from p8fs.pipeline import adelete

        removed = await adelete(event.uri, event.tenant_id, database=self.database)
        return Processed("delete", {"action": "delete", "removed": bool(removed)})

    async def _rename(self, event: StorageEvent) -> Processed | None:
        from p8fs.pipeline import arename

        old = event.old_uri
        if old is None or old == event.uri:
            return None
        moved = await arename(old, event.uri, event.tenant_id, database=self.database)
        if moved is None:
            return None
        summary = {"action": "rename", "from": old, "file_id": moved.id}
        return Processed("rename", summary, file_id=moved.id, chunks=moved.chunk_count)

    async def _ingest(self, event: StorageEvent, job: Job | None) -> Processed | Failed:
        from p8fs.pipeline import aingest, ingest_summary, record_failure, tenant_is_valid

        try:
            result = await aingest(
                event.uri,
                event.tenant_id,
                database=self.database,
                settings=self.settings,
                storage_options=self.storage_options,
                # Per-event facts such as an encrypted PDF's password ride in the event; only
                # those: the uploader must not pick models, engines or limits.
                options={**(self.options or {}), **event_options(event)} or None,
                process=self.process,
                record_errors=False,
                job=job,
            )
        except P8fsError as exc:
            recorded = tenant_is_valid(event.tenant_id) and await record_failure(
                self.database, event.tenant_id, self.process, event.uri, exc
            )
            return Failed(exc, error_recorded=recorded)
        summary = {
            **ingest_summary(result.file, skipped=result.skipped),
            "seconds": round(result.seconds, 3),
        }
        return Processed(
            "ingest",
            summary,
            file_id=result.file.id,
            chunks=result.chunks,
            # The pipeline committed the job DONE with the file's rows.
            job_committed=job is not None,
        )
