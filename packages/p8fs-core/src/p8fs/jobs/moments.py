"""The moment job: transcripts → MomentBuilder → rows in ``moments``, many per run.

Transcripts come from files already ingested (their ``resources`` rows, re-joined into the file's
text exactly, overlaps removed) or straight from paths and objects. One failing transcript (not
JSON, no segments, a model that never produced valid output) gets an ``errors`` row and the run
goes on with the others. Processing a transcript again replaces its moments in one transaction
(``Database.replace_moments``): the new set in, rows the new run no longer finds out.

    p8fs moments process --tenant-id T             # process_files: every ingested transcript
    p8fs moments process --tenant-id T --file a.json --file b.json   # process_paths

The command is defined in :mod:`p8fs.cli.jobs`; this module is the job itself, free of the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p8fs.agents.errors import InvalidAgentInput
from p8fs.agents.moments import MomentBuilder
from p8fs.agents.transcripts import Transcript, parse_json_text, read_transcript
from p8fs.database import Database
from p8fs.errors import ConfigurationError, P8fsError, error_code
from p8fs.jobs.base import DatabaseWorker
from p8fs.models import ErrorRecord, FileRecord, Moment
from p8fs.settings import Settings

log = logging.getLogger(__name__)

PROCESS = "moment-worker"


@dataclass
class MomentRun:
    """What one run did: moments stored per source, and the sources that failed (with why)."""

    stored: dict[str, list[Moment]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def moments(self) -> int:
        return sum(len(v) for v in self.stored.values())


def file_text(resources: Iterable[Any]) -> str:
    """A file's text from its chunks in order, each chunk's leading overlap dropped."""
    return "".join(r.content[int(r.metadata.get("overlap", 0) or 0) :] for r in resources)


class MomentWorker(DatabaseWorker):
    """Runs MomentBuilder over transcripts and stores the moments."""

    def __init__(
        self,
        database: Database | None = None,
        *,
        model: str | None = None,
        settings: Settings | None = None,
        concurrency: int = 2,
    ) -> None:
        super().__init__(settings, database)
        self.model = model
        self.concurrency = concurrency

    async def process_transcript(
        self,
        tenant_id: str,
        transcript: Any,
        *,
        source_resource_id: str | None = None,
        source: str | None = None,
    ) -> list[Moment]:
        """One transcript (Transcript, dict, path or text) → its moments, replacing the old ones.

        The transcript's moments are identified by its URI (the ``source_uri`` it states, else
        ``source``: the ingested file or the path) and by the ingested resource: processing it
        again replaces exactly that set in one transaction, so a run that finds fewer moments
        leaves no stale rows behind.
        """
        agent_input = MomentBuilder.prepare_input(transcript)
        key = agent_input.context.get("source_uri") or source or agent_input.source
        result = await MomentBuilder.arun(agent_input, model=self.model, settings=self.settings)
        moments = result.to_moments(tenant_id, source_resource_id=source_resource_id)
        for moment in moments:
            moment.uri = key or moment.uri
        db = await self.database()
        if key is None and source_resource_id is None:
            await db.store_moments(moments)  # nothing identifies the transcript: add only
        else:
            await db.replace_moments(
                tenant_id, moments, uri=key, source_resource_id=source_resource_id
            )
        return moments

    async def process_many(
        self,
        tenant_id: str,
        transcripts: dict[str, Any],
        *,
        resource_ids: dict[str, str] | None = None,
    ) -> MomentRun:
        """Many transcripts in one run (``concurrency`` at a time); failures recorded, not fatal."""
        run = MomentRun()
        limiter = asyncio.Semaphore(self.concurrency)
        resource_ids = resource_ids or {}

        async def one(source: str, transcript: Any) -> None:
            async with limiter:
                try:
                    run.stored[source] = await self.process_transcript(
                        tenant_id,
                        transcript,
                        source_resource_id=resource_ids.get(source),
                        source=source,
                    )
                except ConfigurationError:
                    raise  # the same for every transcript: stop the run
                except P8fsError as exc:
                    run.failures[source] = str(exc)
                    await self._record(tenant_id, source, exc)

        await asyncio.gather(*(one(s, t) for s, t in transcripts.items()))
        return run

    async def process_paths(self, tenant_id: str, paths: Iterable[Path]) -> MomentRun:
        """Transcript files on disk (seed JSON or plain text)."""
        transcripts: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for path in paths:
            try:
                transcripts[str(path)] = read_transcript(Path(path))
            except P8fsError as exc:
                failures[str(path)] = str(exc)
                await self._record(tenant_id, str(path), exc)
        run = await self.process_many(tenant_id, transcripts)
        run.failures.update(failures)
        return run

    async def process_files(self, tenant_id: str, uris: Iterable[str] | None = None) -> MomentRun:
        """Ingested files → transcripts → moments.

        With ``uris``, exactly those files (JSON transcripts or plain text). Without, every file
        of the tenant whose text is a JSON transcript (an object with ``segments``); other files
        are not transcripts and are left alone.
        """
        db = await self.database()
        files: list[FileRecord] = await db.list_files(tenant_id, limit=100_000)
        wanted = set(uris) if uris is not None else None
        transcripts: dict[str, Any] = {}
        resource_ids: dict[str, str] = {}
        failures: dict[str, str] = {}
        for file in files:
            if wanted is not None and file.uri not in wanted:
                continue
            resources = await db.list_resources(tenant_id, file_id=file.id)
            if not resources:
                continue
            text = file_text(resources)
            try:
                transcript = self._transcript_of(file, text, explicit=wanted is not None)
            except P8fsError as exc:
                failures[file.uri] = str(exc)
                await self._record(tenant_id, file.uri, exc)
                continue
            if transcript is not None:
                transcripts[file.uri] = transcript
                resource_ids[file.uri] = resources[0].id
        if wanted is not None:
            for missing in wanted - {f.uri for f in files}:
                failures[missing] = f"no ingested file {missing} for tenant {tenant_id}"
        run = await self.process_many(tenant_id, transcripts, resource_ids=resource_ids)
        run.failures.update(failures)
        return run

    @staticmethod
    def _transcript_of(file: FileRecord, text: str, *, explicit: bool) -> Transcript | None:
        looks_json = text.lstrip().startswith("{")
        if not explicit:
            if not looks_json:
                return None
            data = parse_json_text(text, file.uri)
            if not isinstance(data, dict) or "segments" not in data:
                return None
            return read_transcript(data, file.uri)
        return read_transcript(text, file.uri)

    async def _record(self, tenant_id: str, source: str, exc: BaseException) -> None:
        db = await self.database()
        await db.record_error(
            ErrorRecord(
                tenant_id=tenant_id,
                process=PROCESS,
                message=f"{source}: {exc}",
                stack_trace="".join(traceback.format_exception(exc)),
                level="WARNING" if isinstance(exc, InvalidAgentInput) else "ERROR",
                metadata={"code": error_code(exc), "source": source},
            )
        )


async def run_moments(
    tenant_id: str,
    *,
    paths: Iterable[Path] = (),
    uris: Iterable[str] | None = None,
    model: str | None = None,
    concurrency: int = 2,
) -> MomentRun:
    """One run on the configured database: the transcript files ``paths`` if given, else the
    ingested files ``uris`` (default: every ingested transcript of the tenant).

    The worker's own database is closed however the run ends.
    """
    worker = MomentWorker(model=model, concurrency=concurrency)
    try:
        paths = list(paths)
        if paths:
            return await worker.process_paths(tenant_id, paths)
        return await worker.process_files(tenant_id, uris)
    finally:
        await worker.close()
