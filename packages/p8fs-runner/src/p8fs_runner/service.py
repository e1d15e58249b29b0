"""Running the router and the workers as long-lived services: connections, database, signals,
probes, and an orderly shutdown. The CLI is a thin layer over :func:`serve_router` and
:func:`serve_worker`; tests and the benchmark call them in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p8fs_runner import tiers
from p8fs_runner.connection import connect_nats

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.client import Client

    from p8fs.database import Database
    from p8fs_runner.router import RouteStats
    from p8fs_runner.settings import RunnerSettings
    from p8fs_runner.settlement import Failed, Processed
    from p8fs_runner.tiers import QueueSpec
    from p8fs_runner.worker import WorkerStats

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (Kubernetes sends SIGTERM, a terminal Ctrl+C).

    Returns a function that restores the default handlers. Outside the main thread (tests run
    services in-process) signals cannot be installed and ``stop`` is the only way out.
    """
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _on_signal, stop, sig)
            installed.append(sig)
        except (RuntimeError, ValueError, NotImplementedError):
            pass

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore


def _on_signal(stop: asyncio.Event, sig: int) -> None:
    if not stop.is_set():
        log.warning("%s received: stopping", signal.Signals(sig).name)
    stop.set()


class LazyDatabase:
    """The database, created and its schema checked on first use (not at start-up).

    Importing SQLAlchemy and a driver costs a few hundred milliseconds; a worker must send its
    first fetch before that. ``ready()`` is awaited before the first message is processed.
    """

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._lock = asyncio.Lock()
        self.ok = False

    async def get(self) -> Database:
        async with self._lock:
            if self._db is None:
                from p8fs.database import Database

                db = Database.from_settings(self.settings)
                await db.init_schema()
                self._db = db
                self.ok = True
        return self._db

    async def ready(self) -> bool:
        """For ``/readyz``: the database answers."""
        try:
            db = await self.get()
            await db.existing_tables()
        except Exception:
            self.ok = False
            return False
        self.ok = True
        return True

    async def record_error(self, record: Any) -> None:
        await (await self.get()).record_error(record)

    async def upsert_job(self, job: Any) -> None:
        """Write a ``jobs`` row. A redelivery never turns DONE/FAILED back: the database's
        job upsert refuses to reopen a finished job, in the statement itself.

        (A delivery that finished can have its ack land late, after a broker restart, when the
        message was already handed out again: that second delivery may write RUNNING or
        PENDING, and the late ack removes the message, so nothing would write DONE again;
        found by tests/reliability/test_load_faults.py.)
        """
        await (await self.get()).upsert_job(job)

    async def dispose(self) -> None:
        if self._db is not None:
            await self._db.dispose()
            self._db = None


@contextlib.asynccontextmanager
async def _probes(
    nc: Client,
    database: LazyDatabase,
    port: int,
    host: str | None,
    paused: Callable[[], str | None] = lambda: None,
) -> AsyncIterator[Any]:
    """``/metrics`` and the probes; ``/readyz`` says why a process is not ready.

    ``paused`` gives a worker's outage (a dependency is down and it stopped pulling).
    """
    from p8fs_runner.metrics import start_probe_server

    async def ready() -> bool | str:
        if not nc.is_connected:
            return "not connected to NATS"
        reason = paused()
        if reason is not None:
            return f"paused: {reason}"
        if not await database.ready():
            return "the database does not answer"
        return True

    server = await start_probe_server(ready, port, host)
    try:
        yield server
    finally:
        if server is not None:
            await server.stop()


async def _close(nc: Client) -> None:
    """Send every pending ack/nak before closing: a settled message must reach the server."""
    with contextlib.suppress(Exception):
        await nc.flush(timeout=5)
    with contextlib.suppress(Exception):
        await nc.close()


def _port(settings: RunnerSettings, override: int | None) -> int:
    return settings.metrics_port if override is None else override


@dataclass
class RouterRun:
    stats: RouteStats
    topology: str


async def serve_router(
    settings: RunnerSettings,
    stop: asyncio.Event,
    *,
    queues: tuple[QueueSpec, ...] | None = None,
    metrics_port: int | None = None,
    setup_only: bool = False,
    on_ready: Callable[[], Any] | None = None,
) -> RouterRun:
    """Create/update the topology, then route until ``stop`` (or return at once: ``setup_only``).

    Also moves messages whose deliveries ran out without any worker settling them to the
    dead-letter stream (see :func:`p8fs_runner.dlq.dead_letter_exhausted`); the subscription is
    a queue group, so with several router replicas exactly one handles each advisory.
    """
    from p8fs_runner.dlq import MAX_DELIVERIES_ADVISORY, dead_letter_exhausted
    from p8fs_runner.router import Router, record_error
    from p8fs_runner.topology import ensure_topology

    if queues is None:
        # The settings' queues carry P8FS_NATS_REPLICAS and P8FS_TIER_OVERRIDES; the bare tier
        # table would create new streams with one copy on a cluster.
        queues = settings.queues()
    nc = await connect_nats(settings, name="p8fs-router")
    database = LazyDatabase(settings)
    try:
        js = nc.jetstream()
        report = await ensure_topology(js, queues)  # logs its one-line summary
        if setup_only:
            return RouterRun(stats=_empty_stats(), topology=report.summary())
        by_stream = {q.stream: q for q in queues}
        router_spec = next((q for q in queues if q.name == "router"), tiers.ROUTER)

        async def on_advisory(msg: Any) -> None:
            try:
                advisory = json.loads(msg.data)
                letter = await dead_letter_exhausted(js, advisory, by_stream)
            except Exception as exc:
                log.error("could not dead-letter an exhausted message: %s", exc)
                return
            if letter is not None:
                await record_error(
                    database.record_error,
                    tenant_id=letter.tenant_id,
                    process="router",
                    message=letter.reason,
                    exc=None,
                    metadata={
                        "code": letter.code,
                        "uri": letter.uri,
                        "stream": letter.source_stream,
                        "seq": letter.source_seq,
                        "deliveries": letter.deliveries,
                    },
                )
                log.error(
                    "dead-lettered %s from %s: %s", letter.uri, letter.source_stream, letter.reason
                )

        await nc.subscribe(MAX_DELIVERIES_ADVISORY, queue="p8fs-router", cb=on_advisory)
        sub = await js.pull_subscribe_bind(durable=router_spec.durable, stream=router_spec.stream)
        router = Router(js, errors=database.record_error, spec=router_spec)
        async with _probes(nc, database, _port(settings, metrics_port), settings.metrics_host):
            if on_ready is not None:
                on_ready()
            stats = await router.run(sub, stop)
        return RouterRun(stats=stats, topology=report.summary())
    finally:
        await _close(nc)
        await database.dispose()


async def warm_up(storage_options: dict[str, Any], encoding: str | None = None) -> None:
    """Pay a worker's first-use costs before its first message: plugins and the tokenizer (in
    a thread), then the S3 client :func:`~p8fs.storage.afetch` reuses on this loop."""
    await asyncio.to_thread(_warm_up_sync, encoding)
    await _warm_up_s3(storage_options)


def _warm_up_sync(encoding: str | None = None) -> None:
    """Build the provider registry and the tokenizer the pipeline reuses. Built on first use
    instead, they hold the GIL for seconds (the tokenizer's vocabulary) while a file is in
    progress, starving the loop's heartbeats (measured: 2.4 s)."""
    from p8fs.plugins import get_registry

    get_registry()
    if encoding:
        from p8fs.tokens import get_tokenizer

        get_tokenizer(encoding)


async def _warm_up_s3(storage_options: dict[str, Any]) -> None:
    """Set up the S3 client the pipeline's :func:`~p8fs.storage.afetch` reuses on this loop."""
    from p8fs.storage import async_s3_filesystem

    try:
        await async_s3_filesystem(storage_options)
    except Exception as exc:  # the first real read reports S3 problems properly
        log.debug("S3 warm-up failed: %s", exc)


def _empty_stats() -> RouteStats:
    from p8fs_runner.router import RouteStats

    return RouteStats()


async def serve_worker(
    settings: RunnerSettings,
    spec: QueueSpec,
    stop: asyncio.Event,
    *,
    grace: float = 25.0,
    metrics_port: int | None = None,
    max_messages: int | None = None,
    fetch_timeout: float = 1.0,
    options: dict[str, Any] | None = None,
) -> WorkerStats:
    """Bind to ``spec``'s consumer (never create it) and process until ``stop``."""
    from p8fs.embedding import create_embedder
    from p8fs.storage import storage_options_from_settings
    from p8fs_runner.dependencies import DatabaseProbe, Dependencies, EmbedderProbe, S3Probe
    from p8fs_runner.processing import PipelineProcessor
    from p8fs_runner.topology import bind_consumer
    from p8fs_runner.worker import Worker

    # P8FS_EMBEDDER: files are embedded after their commit, acked once the vectors are stored.
    # Built before connecting so a wrong setting fails the start; it connects on first use.
    embedder = create_embedder(settings)
    nc = await connect_nats(settings, name=f"p8fs-worker-{spec.name}")
    database = LazyDatabase(settings)
    try:
        js = nc.jetstream()
        sub = await bind_consumer(js, spec)
        process_name = f"storage-worker-{spec.name}"
        processor: PipelineProcessor | None = None

        async def ready() -> None:
            nonlocal processor
            db = await database.get()
            processor = PipelineProcessor(
                db,
                settings,
                storage_options=storage_options,
                process=process_name,
                options=options,
                embedder=embedder,
            )
            # Plugin loading and the S3 client's set-up are slow first-use costs; paid here,
            # they cannot stall the loop (and its heartbeats) while a file is in progress.
            await warm_up(processor.storage_options, settings.token_encoding)

        async def process(event: Any, job: Any = None) -> Processed | Failed:
            assert processor is not None, "ready() runs before the first message"
            return await processor(event, job)

        storage_options = storage_options_from_settings(settings)
        worker = Worker(
            js,
            spec,
            process,
            errors=database.record_error,
            jobs=database.upsert_job,
            dependencies=Dependencies(
                [
                    DatabaseProbe(database.get),
                    S3Probe(storage_options),
                    *([EmbedderProbe(embedder)] if embedder is not None else []),
                ]
            ),
            grace=grace,
            process_name=process_name,
        )
        port = _port(settings, metrics_port)
        async with _probes(nc, database, port, settings.metrics_host, lambda: worker.outage):
            return await worker.run(
                sub, stop, fetch_timeout=fetch_timeout, max_messages=max_messages, ready=ready
            )
    finally:
        from p8fs.storage import aclose_filesystems

        await _close(nc)
        await database.dispose()
        await aclose_filesystems()
        if embedder is not None:
            await embedder.aclose()
