"""What a worker does with one storage event: the core pipeline, bound to one database.

The runner owns no processing logic: create and update events ingest the object
(``p8fs.pipeline.aingest``, streamed from S3), delete events remove the file's rows, rename
events move them (or ingest the new name when nothing was stored under the old one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    """Calls the pipeline for each event; its return value becomes the job's ``result``."""

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

    async def __call__(self, event: StorageEvent, job: Job | None = None) -> dict[str, Any]:
        from p8fs.pipeline import adelete, arename

        if event.event_type == "delete":
            removed = await adelete(event.uri, event.tenant_id, database=self.database)
            return {"action": "delete", "removed": bool(removed)}
        if event.event_type == "rename":
            old = event.old_uri
            if old is not None and old != event.uri:
                moved = await arename(old, event.uri, event.tenant_id, database=self.database)
                if moved is not None:
                    return {"action": "rename", "from": old, "file_id": moved.id}
            # Nothing stored under the old name (or no old name): process the new one.
        return await self._ingest(event, job)

    async def _ingest(self, event: StorageEvent, job: Job | None) -> dict[str, Any]:
        from p8fs.pipeline import aingest

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
                record_errors=True,
                job=job,
            )
        except Exception as exc:
            # aingest wrote the errors row; tell the worker not to write a second one.
            try:
                exc.recorded = True  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover - exotic exception types
                pass
            raise
        return {
            "action": "ingest",
            "file_id": result.file.id,
            "chunks": result.chunks,
            "skipped": result.skipped,
            "provider": result.provider,
            "seconds": round(result.seconds, 3),
            "bytes": result.file.file_size,
            # The pipeline committed the job DONE with the file's rows.
            "job_done": job is not None,
        }
