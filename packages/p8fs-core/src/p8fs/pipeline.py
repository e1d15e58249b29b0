"""The ingest pipeline: source → provider → sections → chunks → one database transaction.

``aingest(uri, tenant_id)`` is everything a worker or a notebook needs. Extraction and chunking
run in a worker thread and hand chunks over through a small bounded queue, so memory stays flat
whatever the file's size and the event loop stays free (a queue worker heartbeats meanwhile).
A long document is extracted by a second thread, a few sections ahead of the chunker, so the
provider's work (PDFium, decoding, OCR: mostly outside the GIL) overlaps chunking and the rows
being spooled for the store instead of taking turns with them.
Ids are deterministic (tenant + URI, file + chunk index) and the files row is upserted together
with a full replacement of that file's resources, so processing the same event twice changes
nothing, and changed content leaves no stale chunk behind.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import threading
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from p8fs import ids
from p8fs.errors import (
    DocumentTimeout,
    EmptyDocument,
    InvalidPath,
    P8fsError,
    ProviderError,
    UnsupportedContent,
    error_code,
    is_permanent,
)
from p8fs.models import ErrorRecord, FileRecord, Job, JobStatus, Resource, utcnow
from p8fs.providers import ContentProvider, ExtractContext
from p8fs.sniff import GENERIC_MIME_TYPES, extension_of, is_textual, sniff_mime
from p8fs.storage import (
    SourceFile,
    aclose_filesystems,
    afetch,
    normalize_uri,
    object_name,
    storage_options_from_settings,
)
from p8fs.threads import ThreadCache

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.chunking import Chunk, Chunker
    from p8fs.database import Database
    from p8fs.registry import Registry
    from p8fs.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Chunks in flight between the extraction thread and the database writer.
QUEUE_DEPTH = 64
#: Chunks collected before a sleeping event loop is woken for them (the end of the document,
#: or an error, wakes it at once). Every wake-up is a GIL hand-over that the extraction thread
#: waits for; the loop only spools rows, so it loses nothing by taking them a few at a time.
WAKE_BATCH = 16
#: Sections a document yields before the rest are read ahead in a thread of their own (most
#: files have fewer and never pay for a second thread).
READ_AHEAD_AFTER = 8
#: Sections in flight between that thread and the chunker.
READ_AHEAD_DEPTH = 32
#: Where extraction runs: reused daemon threads (a stuck one is abandoned, never reused).
_EXTRACT_THREADS = ThreadCache("p8fs-extract")
CONTENT_CATEGORY = "content_chunk"


@dataclass
class IngestResult:
    """What one ``ingest`` call did."""

    file: FileRecord
    chunks: int
    skipped: bool
    provider: str | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def choose_provider(registry: Registry, mime_type: str, filename: str) -> type[ContentProvider]:
    """Content sniffing first, extension second — except for generic types (plain text, ZIP,
    octet-stream) whose bytes say less than the name does."""
    ext = extension_of(filename)
    if mime_type in GENERIC_MIME_TYPES and ext and registry.providers_for_extension(ext):
        return registry.provider_for(None, ext)
    try:
        return registry.provider_for(mime_type, ext)
    except UnsupportedContent:
        # A text format nobody claims specifically (subtitles without their plugin, source
        # code, logs) is still text: better stored as plain text than refused.
        if is_textual(mime_type) and registry.providers_for_mime("text/plain"):
            return registry.provider_for("text/plain", None)
        raise


def resource_name(filename: str, index: int) -> str:
    """``Sample.pdf`` chunk 0 → ``Sample_chunk_0`` (the original system's names)."""
    return f"{PurePosixPath(filename).stem}_chunk_{index}"


def _validate_tenant(tenant_id: str) -> None:
    if not tenant_id or not tenant_id.strip():
        raise InvalidPath("tenant_id must not be empty")
    if any(ch in tenant_id for ch in "\x00\n\r/\\") or tenant_id in (".", ".."):
        raise InvalidPath(f"tenant_id {tenant_id!r} contains forbidden characters")


def tenant_is_valid(tenant_id: str) -> bool:
    try:
        _validate_tenant(tenant_id)
    except InvalidPath:
        return False
    return True


_schema_ready: weakref.WeakSet[Database] = weakref.WeakSet()


async def _ensure_schema(database: Database) -> None:
    """Create the tables once per ``Database`` object (explicit, idempotent DDL)."""
    if database not in _schema_ready:
        await database.init_schema()
        _schema_ready.add(database)


async def aingest(
    uri: str,
    tenant_id: str,
    *,
    database: Database | None = None,
    settings: Settings | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    process: str = "ingest",
    record_errors: bool = True,
    job: Job | None = None,
) -> IngestResult:
    """Process one file into ``files`` and ``resources`` rows for ``tenant_id``.

    ``job`` (a queue worker's ``jobs`` row) is marked DONE, with a summary as its result, in the
    same transaction that stores the file: its own commit would cost as much as the file's.

    On failure an ``errors`` row is written (unless ``record_errors`` is false) and a
    :class:`p8fs.errors.P8fsError` is raised; :func:`p8fs.errors.is_permanent` tells a queue
    whether a retry could help.
    """
    from p8fs.settings import get_settings

    settings = settings or get_settings()
    own_database = database is None
    if database is None:
        from p8fs.database import Database

        database = Database.from_settings(settings)
    started = time.monotonic()
    provider_name: str | None = None
    normalized = uri
    try:
        _validate_tenant(tenant_id)
        normalized = normalize_uri(uri)
        await _ensure_schema(database)
        if storage_options is None and "://" in normalized:
            storage_options = storage_options_from_settings(settings)
        source = await afetch(
            normalized, storage_options=storage_options, max_bytes=settings.max_file_bytes
        )
        try:
            result = await _ingest_source(
                source, tenant_id, database, settings, force=force, options=options or {}, job=job
            )
        except P8fsError as exc:
            if source.temporary and source.local_path is not None:
                # Providers name the file they read; the operator knows it by its URI.
                exc.message = exc.message.replace(str(source.local_path), source.uri)
                exc.args = (exc.message,)
            raise
        finally:
            source.release()
        provider_name = result.provider
        result.seconds = time.monotonic() - started
        return result
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            raise
        error = _as_p8fs_error(exc, normalized)
        # A hostile or empty tenant id gets no row of its own (it would be stored under that
        # very id): the caller, who knows the real tenant, records the refusal.
        if record_errors and tenant_is_valid(tenant_id):
            await record_failure(database, tenant_id, process, normalized, error, provider_name)
        if error is exc:
            raise
        raise error from exc
    finally:
        if own_database:
            await database.dispose()


def ingest(uri: str, tenant_id: str, **kwargs: Any) -> IngestResult:
    """Blocking :func:`aingest`, for scripts (inside a running loop use ``await aingest``)."""

    async def run() -> IngestResult:
        try:
            return await aingest(uri, tenant_id, **kwargs)
        finally:
            await aclose_filesystems()

    return asyncio.run(run())


async def _ingest_source(
    source: SourceFile,
    tenant_id: str,
    database: Database,
    settings: Settings,
    *,
    force: bool,
    options: dict[str, Any],
    job: Job | None,
) -> IngestResult:
    file_id = ids.file_id(tenant_id, source.uri)
    existing = await database.get_file(tenant_id, file_id)
    if existing is not None and existing.content_hash == source.content_hash and not force:
        return await _unchanged(existing, database, job)
    if source.size == 0:
        raise EmptyDocument(f"{source.uri} is empty (0 bytes)", uri=source.uri)

    from p8fs.chunking import require_text

    provider, context, chunker = _extraction_for(source, settings, options)
    mime_type = context.mime_type

    def produce() -> Iterator[Chunk]:
        try:
            # No text but whitespace is an empty document, whatever the format (one check for all).
            sections = require_text(provider.extract(source.open(), context), context)
            # A long document reads ahead in a thread of its own, so extraction (PDFium, OCR,
            # decoding: mostly outside the GIL) overlaps chunking instead of waiting for it.
            yield from chunker.chunk(_read_ahead(sections, context))
        except P8fsError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"the {provider.name!r} provider failed on {source.name}: {type(exc).__name__}: {exc}",
                provider=provider.name,
            ) from exc

    count = 0
    now = utcnow()

    async def resources() -> AsyncIterator[Resource]:
        nonlocal count
        async for chunk in _threaded(produce(), context):
            yield Resource(
                id=ids.resource_id(file_id, chunk.index),
                tenant_id=tenant_id,
                file_id=file_id,
                name=resource_name(source.name, chunk.index),
                category=CONTENT_CATEGORY,
                content=chunk.text,
                ordinal=chunk.index,
                uri=f"{source.uri}#chunk_{chunk.index}",
                token_count=chunk.token_count,
                metadata={**chunk.metadata, "overlap": chunk.overlap},
                created_at=now,
            )
            count += 1

    def file_record() -> FileRecord:
        """The files row, built once the last chunk is known (so it carries the final count)."""
        metadata = dict(context.metadata)
        if context.warnings:
            metadata["warnings"] = list(context.warnings)
        return FileRecord(
            id=file_id,
            tenant_id=tenant_id,
            uri=source.uri,
            name=source.name,
            file_size=source.size,
            mime_type=mime_type,
            content_hash=source.content_hash,
            provider=provider.name,
            chunk_count=count,
            metadata=metadata,
            upload_timestamp=existing.upload_timestamp if existing else now,
            updated_at=utcnow(),
        )

    stored = await database.store_file_stream(
        file_record,
        resources(),
        job=None if job is None else (lambda record: _done(job, record, skipped=False)),
    )
    return IngestResult(stored, count, False, provider.name, list(context.warnings))


async def _unchanged(existing: FileRecord, database: Database, job: Job | None) -> IngestResult:
    """The file's stored rows already hold this content: keep them, and mark its job done."""
    if job is not None:
        await database.upsert_job(_done(job, existing, skipped=True))
    return IngestResult(existing, existing.chunk_count, True, existing.provider)


def _extraction_for(
    source: SourceFile, settings: Settings, options: dict[str, Any]
) -> tuple[ContentProvider, ExtractContext, Chunker]:
    """The provider for ``source`` (by its sniffed type, then its name), the context it
    extracts under (options with the configured limits, the document's deadline) and the
    configured chunker."""
    from p8fs.plugins import get_registry

    registry = get_registry()
    mime_type = sniff_mime(source.head, source.name)
    provider_cls = choose_provider(registry, mime_type, source.name)
    provider: ContentProvider = registry.provider_instance(provider_cls)
    provider.ensure_available()
    context = ExtractContext(
        uri=source.uri,
        filename=source.name,
        mime_type=mime_type,
        size=source.size,
        options=_with_limits(options, settings),
        deadline=time.monotonic() + settings.document_timeout,
    )
    chunker: Chunker = registry.chunkers.get(settings.chunker)(
        settings.chunk_tokens, settings.chunk_overlap, settings.token_encoding
    )
    return provider, context, chunker


def _with_limits(options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``options`` with the configured safety limits, which a call may tighten but not loosen.

    Options can come from outside: a worker passes the storage event's metadata (the object's
    ``x-amz-meta-*`` headers, set by whoever uploaded it), so an uploader could otherwise lift
    every limit. A limit option that is not a number is ignored (the setting applies).
    """
    merged = dict(options)
    for key, ceiling in settings.extraction_limits().items():
        try:
            asked = float(options[key])
        except (KeyError, TypeError, ValueError):
            asked = ceiling
        value = min(asked, ceiling) if asked > 0 else ceiling
        merged[key] = type(ceiling)(value)
    return merged


def ingest_summary(file: FileRecord, *, skipped: bool) -> dict[str, Any]:
    """What an ingest's ``jobs`` row holds as its ``result`` (the one place it is built: the
    pipeline commits it with the file's rows, a queue worker reports the same)."""
    return {
        "action": "ingest",
        "file_id": file.id,
        "chunks": file.chunk_count,
        "skipped": skipped,
        "provider": file.provider,
        "bytes": file.file_size,
    }


def _done(job: Job, file: FileRecord, *, skipped: bool) -> Job:
    job.status = JobStatus.DONE
    job.result = ingest_summary(file, skipped=skipped)
    job.error = None
    job.updated_at = utcnow()
    return job


async def _threaded(items: Iterator[Any], context: ExtractContext) -> AsyncIterator[Any]:
    """Run a blocking iterator in a thread, yielding its items through a bounded hand-off.

    The bound gives backpressure (the thread waits while the database catches up); the deadline
    turns a provider that stopped making progress into :class:`DocumentTimeout` even if it never
    calls ``check_deadline`` (the stuck thread is abandoned, and told to stop).

    The hand-off is a deque guarded by a semaphore (per file, most are a chunk or two, that is a
    fraction of what an ``asyncio.Queue`` fed through ``run_coroutine_threadsafe`` costs). The
    loop is woken (``call_soon_threadsafe``, a write to its self-pipe) only when it is waiting,
    and then once per :data:`WAKE_BATCH` items or at the end: waking it for every chunk of a
    book cost the extraction thread a GIL hand-over per chunk (measured: 0.17 s of a 627-page
    PDF's 1.1 s), while the loop, once awake, takes every item already there.
    """
    loop = asyncio.get_running_loop()
    handed: collections.deque[tuple[str, Any]] = collections.deque()
    slots = threading.Semaphore(QUEUE_DEPTH)
    arrived = asyncio.Event()
    stop = threading.Event()
    # Set by the loop just before it sleeps; the thread that sees it set wakes the loop once.
    waiting = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not slots.acquire(timeout=0.5):
            if stop.is_set():
                return False
        handed.append((kind, value))
        if not waiting.is_set() or (kind == "item" and len(handed) < WAKE_BATCH):
            return True  # the loop will find the item when it is next woken (or finds it awake)
        waiting.clear()
        try:
            loop.call_soon_threadsafe(arrived.set)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()
        return True

    _EXTRACT_THREADS.submit(functools.partial(_pump, items, put, stop))
    try:
        while True:
            while not handed:
                arrived.clear()
                waiting.set()
                if handed:  # appended before ``waiting`` was set: nobody will wake us for it
                    waiting.clear()
                    break
                timeout = (
                    None if context.deadline is None else max(0.0, context.deadline - time.monotonic())
                )
                try:
                    async with asyncio.timeout(timeout):
                        await arrived.wait()
                except TimeoutError:
                    raise DocumentTimeout(
                        f"extraction of {context.filename or context.uri} exceeded its time limit "
                        "(P8FS_DOCUMENT_TIMEOUT)"
                    ) from None
            kind, value = handed.popleft()
            slots.release()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


def _read_ahead(items: Iterable[T], context: ExtractContext) -> Iterator[T]:
    """``items`` in order; after the first :data:`READ_AHEAD_AFTER`, read by a thread of their own.

    The extraction thread's work is then split in two: one thread runs the provider, the
    caller's runs the chunker on what it delivers, up to :data:`READ_AHEAD_DEPTH` sections behind
    (backpressure), so a book's pages are read while earlier ones are cut into chunks. A short
    document (most files) never gets past the first items and costs no thread.

    Whatever the provider raises is raised here, in order, after the sections before it. Closing
    this generator (the chunker failed, the pipeline gave up at the deadline) tells the reader to
    stop; it closes ``items`` in its own thread, where the provider runs. If nothing arrives
    before the document's deadline, :class:`DocumentTimeout` is raised here (a provider stuck in
    C code is abandoned, as in :func:`_threaded`).
    """
    iterator = iter(items)
    for _ in range(READ_AHEAD_AFTER):
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item

    handed: queue.Queue[tuple[str, Any]] = queue.Queue(READ_AHEAD_DEPTH)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                handed.put((kind, value), timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    _EXTRACT_THREADS.submit(functools.partial(_pump, iterator, put, stop))
    try:
        while True:
            try:
                kind, value = handed.get(timeout=0.5)
            except queue.Empty:
                context.check_deadline()
                continue
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


def _pump(items: Iterable[Any], put: Callable[[str, Any], bool], stop: threading.Event) -> None:
    """Hand ``items`` to ``put`` as ``("item", x)``, then ``("done", None)`` or ``("error", exc)``.

    Runs in the producing thread, which is also where ``items`` is closed: a provider's
    generator must be closed by the thread that runs it. Stops early when ``stop`` is set or
    ``put`` could not deliver (the consumer went away).
    """
    try:
        for item in items:
            if stop.is_set() or not put("item", item):
                return
        put("done", None)
    except BaseException as exc:
        put("error", exc)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.debug("closing the extraction iterator failed", exc_info=True)


def _as_p8fs_error(exc: BaseException, uri: str) -> P8fsError:
    if isinstance(exc, P8fsError):
        return exc
    return ProviderError(f"processing {uri} failed: {type(exc).__name__}: {exc}", uri=uri)


async def record_failure(
    database: Database,
    tenant_id: str,
    process: str,
    uri: str,
    error: P8fsError,
    provider: str | None = None,
) -> bool:
    """Write the ``errors`` row of a failed ingest; returns whether it was committed.

    A queue worker needs the answer: a failure whose row is missing (the database itself is
    what failed) must be recorded again before the message may be dead-lettered.
    """
    record = ErrorRecord(
        tenant_id=tenant_id,
        process=process,
        message=f"{type(error).__name__}: {error}",
        stack_trace="".join(traceback.format_exception(error)),
        metadata={
            "uri": uri,
            "file_id": ids.file_id(tenant_id, uri),
            "code": error_code(error),
            "permanent": is_permanent(error),
            "provider": provider,
            **{k: v for k, v in error.details.items() if isinstance(v, str | int | float | bool)},
        },
    )
    try:
        await database.record_error(record)
    except Exception:
        # The database itself is what failed (the error is then transient and will be retried);
        # the log keeps the record.
        log.exception("could not record the error for %s: %s", uri, error)
        return False
    return True


async def adelete(uri: str, tenant_id: str, *, database: Database) -> bool:
    """Remove a deleted file's ``files`` and ``resources`` rows."""
    _validate_tenant(tenant_id)
    await _ensure_schema(database)
    normalized = normalize_uri(uri)
    return await database.delete_file(tenant_id, ids.file_id(tenant_id, normalized))


async def arename(old_uri: str, new_uri: str, tenant_id: str, *, database: Database) -> FileRecord | None:
    """Move a renamed file's rows to its new URI (new deterministic ids), in one transaction.

    Returns ``None`` when nothing was stored under the old URI (then the caller ingests the new
    one).
    """
    _validate_tenant(tenant_id)
    await _ensure_schema(database)
    old, new = normalize_uri(old_uri), normalize_uri(new_uri)
    old_id = ids.file_id(tenant_id, old)
    existing = await database.get_file(tenant_id, old_id)
    if existing is None:
        return None
    new_id = ids.file_id(tenant_id, new)
    new_name = object_name(new)
    moved = existing.model_copy(update={"id": new_id, "uri": new, "name": new_name, "updated_at": utcnow()})
    resources = [
        r.model_copy(
            update={
                "id": ids.resource_id(new_id, r.ordinal),
                "file_id": new_id,
                "name": resource_name(new_name, r.ordinal),
                "uri": f"{new}#chunk_{r.ordinal}",
            }
        )
        for r in await database.list_resources(tenant_id, file_id=old_id)
    ]
    await database.replace_file(old_id, tenant_id, moved, resources)
    return moved
