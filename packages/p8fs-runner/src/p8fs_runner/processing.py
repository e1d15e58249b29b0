"""What a worker does with one storage event: the core pipeline, bound to one database.

The runner owns no processing logic: create and update events ingest the object
(``p8fs.pipeline.aingest``, streamed from S3), delete events remove the file's rows, rename
events move them (or ingest the new name when nothing was stored under the old one).

Processing never raises for a failure of the event's work: it returns a
:class:`~p8fs_runner.settlement.Failed` that says whether the failure's ``errors`` row is
committed, so the worker's settlement needs nothing but the returned value.

With an embedder (``P8FS_EMBEDDER``), a stored or moved file's chunks are embedded *after* their
commit and before the outcome is returned, so the message is acknowledged only once its vectors
are stored too. Then the ``jobs`` row is not committed with the chunks (it would say DONE before
the embedding): the worker writes it before acknowledging. An embedder that does not answer is
a :class:`Failed` whose error is transient: the worker asks its probes (the embedder's among
them), waits the outage out and processes the message again: the pipeline skips the unchanged
file and only the missing vectors are computed. A file is never lost for want of vectors: its
chunks are committed either way, and ``p8fs embed`` backfills.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p8fs.errors import P8fsError
from p8fs_runner.settlement import Failed, Processed

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.database import Database
    from p8fs.embedding import Embedder
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
        embedder: Embedder | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        #: Embeds each stored file's chunks after their commit; ``None``: no vectors.
        self.embedder = embedder
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
        summary: dict[str, Any] = {"action": "rename", "from": old, "file_id": moved.id}
        if self.embedder is not None:
            # Vectors moved with the chunks; this only fills what the old name never had.
            embedded = await self._embed(event, moved.id)
            if isinstance(embedded, Failed):
                raise embedded.error
            summary["embedding"] = embedded
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
                # With an embedder the job is DONE only once the vectors are stored too.
                job=job if self.embedder is None else None,
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
        if self.embedder is not None:
            embedded = await self._embed(event, result.file.id)
            if isinstance(embedded, Failed):
                return embedded
            summary["embedding"] = embedded
        return Processed(
            "ingest",
            summary,
            file_id=result.file.id,
            chunks=result.chunks,
            # The pipeline committed the job DONE with the file's rows (without an embedder).
            job_committed=job is not None and self.embedder is None,
        )

    async def _embed(self, event: StorageEvent, file_id: str) -> dict[str, Any] | Failed:
        """Embed the committed file's chunks that lack a vector; a :class:`Failed` when the
        embedder cannot be reached (transient: the worker's probes decide whether to wait)."""
        from p8fs.embedding import EmbedderRefused, embed_pending
        from p8fs.pipeline import record_failure

        assert self.embedder is not None
        try:
            stats = await embed_pending(
                self.database,
                self.embedder,
                event.tenant_id,
                file_id=file_id,
                batch_size=self.settings.embedding_batch_size,
            )
        except EmbedderRefused as exc:
            # The server refuses this text itself: retrying cannot help, and the chunks are
            # committed. Keep the file, record why it has no vectors, acknowledge.
            await record_failure(
                self.database, event.tenant_id, f"{self.process}:embed", event.uri, exc
            )
            return {"error": str(exc)}
        except Exception as exc:
            return Failed(exc)
        return stats.as_dict()
