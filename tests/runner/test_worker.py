"""Tier workers against real services: nats-server, weed mini (S3), SQLite; the real pipeline.

Covers settlement (ack after commit, nak with delay, dead letter + term), heartbeats that keep a
slow file past its ack wait, the jobs row, delete and rename events, and the in-process stop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from p8fs.ids import file_id
from p8fs.models import JobStatus
from p8fs_runner import tiers
from p8fs_runner.dlq import list_dead_letters
from p8fs_runner.processing import PipelineProcessor
from p8fs_runner.topology import bind_consumer, ensure_topology
from p8fs_runner.worker import JOB_TYPE, Worker
from tests.runner.providers_for_tests import calls, register_test_providers
from tests.runner.test_router import stored

if TYPE_CHECKING:
    from p8fs.database import Database
    from p8fs_runner.settings import RunnerSettings

#: The small tier with waits short enough for tests: 2 s ack wait (heartbeat every 0.67 s),
#: retries after 1.5 s then 2 s, three deliveries.
FAST_SMALL = tiers.SMALL.with_overrides(backoff=(2.0, 2.0), max_deliver=3, batch=4, concurrency=2)


@pytest.fixture(autouse=True)
def _test_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    register_test_providers()
    log = tmp_path / "provider-calls.log"
    monkeypatch.setenv("P8FS_TEST_PROVIDER_LOG", str(log))
    return log


@pytest.fixture
async def js(runner_settings: RunnerSettings) -> AsyncIterator[Any]:
    from p8fs.storage import storage_options_from_settings
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.service import warm_up

    # What serve_worker does before its first message: pay the S3 client's and the plugins'
    # first-use costs up front, so they cannot stall the loop past the tests' 2 s ack wait.
    await warm_up(storage_options_from_settings(runner_settings), runner_settings.token_encoding)
    nc = await connect_nats(runner_settings)
    try:
        await ensure_topology(nc.jetstream(), (tiers.ROUTER, FAST_SMALL, tiers.TEST))
        yield nc.jetstream()
    finally:
        await nc.close()


def put(s3: Any, bucket: str, key: str, data: bytes) -> None:
    with s3.open(f"{bucket}/{key}", "wb") as handle:
        handle.write(data)


async def publish(js: Any, bucket: str, key: str, size: int, **extra: Any) -> None:
    event = {"event_type": "create", "path": f"/buckets/{bucket}/{key}", "size": size, **extra}
    await js.publish(FAST_SMALL.subject, json.dumps(event).encode())


def make_worker(
    js: Any, db: Database, settings: RunnerSettings, spec: tiers.QueueSpec = FAST_SMALL, **kw: Any
) -> Worker:
    processor = PipelineProcessor(db, settings, process="storage-worker-small")
    return Worker(js, spec, processor, errors=db.record_error, jobs=db.upsert_job, **kw)


async def run_until(worker: Worker, sub: Any, done: Any, *, limit: float = 30.0) -> None:
    """Run ``worker`` until ``done(worker)`` is true (or ``limit`` seconds pass)."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(sub, stop, fetch_timeout=0.3))
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    for _ in range(int(limit / 0.05)):
        if done(worker) or loop.time() > end or task.done():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task


async def test_a_file_is_processed_and_acked_after_the_commit(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    body = ("The quick brown fox jumps over the lazy dog. " * 200).encode()
    put(s3fs_filesystem, s3_bucket, "notes/fox.txt", body)
    await publish(js, s3_bucket, "notes/fox.txt", len(body))

    worker = make_worker(js, sqlite_database, runner_settings)
    sub = await bind_consumer(js, FAST_SMALL)
    await run_until(worker, sub, lambda w: w.stats.acked >= 1)

    assert worker.stats.acked == 1 and worker.stats.nakked == 0
    uri = f"s3://{s3_bucket}/notes/fox.txt"
    [saved] = await sqlite_database.list_files(s3_bucket)
    assert (saved.uri, saved.file_size, saved.name) == (uri, len(body), "fox.txt")
    resources = await sqlite_database.list_resources(s3_bucket, file_id=saved.id)
    assert len(resources) == saved.chunk_count >= 1
    assert resources[0].name == "fox_chunk_0"
    [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert job.status == JobStatus.DONE and job.job_type == JOB_TYPE
    assert job.payload["uri"] == uri and job.result is not None
    assert job.result["chunks"] == len(resources)
    # Acked: nothing waits on the work-queue stream, nothing is unacknowledged.
    info = await js.consumer_info(FAST_SMALL.stream, FAST_SMALL.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await stored(js, FAST_SMALL.stream, 0) == 0


def test_a_long_running_worker_keeps_only_its_recent_outcomes() -> None:
    from p8fs_runner.worker import RECENT_OUTCOMES, FailedDelivery, SettledFile, WorkerStats

    stats = WorkerStats()
    for i in range(RECENT_OUTCOMES + 5):
        uri = f"s3://t/{i}"
        stats.results.append(SettledFile(uri, "create", "ingest", 1, i, {}))
        stats.failures.append(FailedDelivery(uri, "boom", "transient", False, i))
    assert len(stats.results) == len(stats.failures) == RECENT_OUTCOMES
    assert stats.results[0].seq == 5 and stats.results[-1].seq == RECENT_OUTCOMES + 4
    last = f"s3://t/{RECENT_OUTCOMES + 4}"
    assert stats.result_for(last) is stats.results[-1]
    assert stats.failure_for(last) is stats.failures[-1]
    assert stats.result_for("s3://t/0") is None  # no longer among the recent ones


async def test_running_is_written_only_for_a_file_still_in_progress(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    """A quick file costs no job write of its own (DONE rides in the file's transaction); a
    slow one shows RUNNING while it is processed, then DONE."""
    writes: list[tuple[str, str]] = []

    async def sink(job: Any) -> None:
        writes.append((job.payload["uri"].rsplit("/", 1)[-1], job.status.value))
        await sqlite_database.upsert_job(job)

    processor = PipelineProcessor(sqlite_database, runner_settings, process="storage-worker-small")
    quick, slow = b"a quick file", b"sleep=2\na slow file"
    put(s3fs_filesystem, s3_bucket, "quick.txt", quick)
    put(s3fs_filesystem, s3_bucket, "slow.slow", slow)
    await publish(js, s3_bucket, "quick.txt", len(quick))
    await publish(js, s3_bucket, "slow.slow", len(slow))
    worker = Worker(js, FAST_SMALL, processor, errors=sqlite_database.record_error, jobs=sink,
                    running_after=0.5)
    sub = await bind_consumer(js, FAST_SMALL)
    seen_running: list[str] = []
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(sub, stop, fetch_timeout=0.3))
    for _ in range(400):
        if worker.stats.acked >= 2:
            break
        seen_running += [j.payload["uri"] for j in await sqlite_database.list_jobs(tenant_id=s3_bucket)
                         if j.status == JobStatus.RUNNING]
        await asyncio.sleep(0.05)
    stop.set()
    await task

    assert worker.stats.acked == 2
    assert writes == [("slow.slow", "RUNNING")], "only the slow file is marked; DONE commits with the rows"
    assert set(seen_running) == {f"s3://{s3_bucket}/slow.slow"}
    jobs = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert sorted(j.status.value for j in jobs) == ["DONE", "DONE"]


async def test_a_slow_file_is_kept_past_its_ack_wait_by_heartbeats_and_processed_once(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
    _test_providers: Path,
) -> None:
    # 5 s of processing against a 2 s ack wait: without heartbeats it would be redelivered twice.
    body = b"sleep=5\nA file that takes a while to read."
    put(s3fs_filesystem, s3_bucket, "big/slow.slow", body)
    await publish(js, s3_bucket, "big/slow.slow", len(body))

    # Two workers on the same durable: a redelivery would go to the idle one.
    workers = [make_worker(js, sqlite_database, runner_settings) for _ in range(2)]
    subs = [await bind_consumer(js, FAST_SMALL) for _ in range(2)]
    stop = asyncio.Event()
    runs = [
        asyncio.create_task(w.run(s, stop, fetch_timeout=0.3))
        for w, s in zip(workers, subs, strict=True)
    ]
    for _ in range(300):
        if sum(w.stats.acked for w in workers) >= 1:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # a redelivery, if any, would have come by now
    stop.set()
    await asyncio.gather(*runs)

    assert sum(w.stats.acked for w in workers) == 1
    assert calls(_test_providers) == [f"slow s3://{s3_bucket}/big/slow.slow"]  # processed once
    info = await js.consumer_info(FAST_SMALL.stream, FAST_SMALL.durable)
    assert info.num_redelivered == 0 and info.num_ack_pending == 0
    [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert job.status == JobStatus.DONE and job.payload["delivery"] == 1


async def test_a_poison_file_is_dead_lettered_after_its_deliveries(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
    _test_providers: Path,
) -> None:
    put(s3fs_filesystem, s3_bucket, "bad/never.flaky", b"whatever")
    await publish(js, s3_bucket, "bad/never.flaky", 8)

    worker = make_worker(js, sqlite_database, runner_settings)
    sub = await bind_consumer(js, FAST_SMALL)
    await run_until(worker, sub, lambda w: w.stats.dead_lettered >= 1)

    # Transient each time: nak, nak (with delay), then dead-lettered on the last delivery.
    assert (worker.stats.nakked, worker.stats.dead_lettered) == (2, 1)
    assert [f.delivery for f in worker.stats.failures] == [1, 2, 3]
    assert len(calls(_test_providers)) == FAST_SMALL.max_deliver
    [letter] = await list_dead_letters(js)
    assert letter.queue == "small" and letter.deliveries == 3
    assert letter.uri == f"s3://{s3_bucket}/bad/never.flaky" and letter.tenant_id == s3_bucket
    assert "test dependency" in letter.reason and letter.code == "transient"
    assert json.loads(letter.data)["path"] == f"/buckets/{s3_bucket}/bad/never.flaky"
    errors = await sqlite_database.list_errors(s3_bucket)
    assert len(errors) == 3  # one row per failed delivery, written by the pipeline
    assert all(e.metadata["code"] == "transient" for e in errors)
    [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert job.status == JobStatus.FAILED and "transient" in (job.error or "")
    assert await stored(js, FAST_SMALL.stream, 0) == 0  # termed


async def test_a_permanent_failure_is_dead_lettered_at_once(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    put(s3fs_filesystem, s3_bucket, "empty.txt", b"")
    await publish(js, s3_bucket, "empty.txt", 0)
    worker = make_worker(js, sqlite_database, runner_settings)
    sub = await bind_consumer(js, FAST_SMALL)
    await run_until(worker, sub, lambda w: w.stats.dead_lettered >= 1)

    assert (worker.stats.nakked, worker.stats.dead_lettered) == (0, 1)
    [letter] = await list_dead_letters(js)
    assert letter.code == "empty" and letter.deliveries == 1
    [error] = await sqlite_database.list_errors(s3_bucket)
    assert error.metadata["code"] == "empty" and error.process == "storage-worker-small"


async def test_a_missing_object_is_dead_lettered_with_an_errors_row(
    js: Any, sqlite_database: Database, runner_settings: RunnerSettings, s3_bucket: str
) -> None:
    await publish(js, s3_bucket, "gone/away.txt", 10)
    worker = make_worker(js, sqlite_database, runner_settings)
    sub = await bind_consumer(js, FAST_SMALL)
    await run_until(worker, sub, lambda w: w.stats.dead_lettered >= 1)
    [letter] = await list_dead_letters(js)
    assert letter.code == "not_found"
    [error] = await sqlite_database.list_errors(s3_bucket)
    assert error.metadata["code"] == "not_found"


async def test_a_transient_database_failure_naks_with_delay_then_succeeds(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    from p8fs.database import Database

    body = b"hello from a database outage"
    put(s3fs_filesystem, s3_bucket, "retry/me.txt", body)
    await publish(js, s3_bucket, "retry/me.txt", len(body))

    # A database that refuses connections: PostgreSQL URL on a port nothing listens on.
    from tests.fixtures.servers import free_port

    down = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/p8fs")
    try:
        failing = make_worker(js, down, runner_settings)
        sub = await bind_consumer(js, FAST_SMALL)
        await run_until(failing, sub, lambda w: w.stats.nakked >= 1)
    finally:
        await down.dispose()
    assert (failing.stats.nakked, failing.stats.dead_lettered) == (1, 0)
    [failure] = failing.stats.failures
    assert failure.code == "transient" and not failure.permanent

    # Naked with a delay (1st retry after backoff[0] = 2 s): not available straight away ...
    info = await js.consumer_info(FAST_SMALL.stream, FAST_SMALL.durable)
    assert info.num_ack_pending == 1 and info.num_pending == 0
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await sub.fetch(1, timeout=0.5)

    # ... and processed once the database is back.
    healthy = make_worker(js, sqlite_database, runner_settings)
    await run_until(healthy, sub, lambda w: w.stats.acked >= 1)
    assert healthy.stats.acked == 1
    [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert job.status == JobStatus.DONE and job.payload["delivery"] == 2
    assert len(await sqlite_database.list_files(s3_bucket)) == 1


async def test_delete_and_rename_events_move_and_remove_the_rows(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    body = ("Renamed files keep their chunks. " * 100).encode()
    put(s3fs_filesystem, s3_bucket, "a/old-name.txt", body)
    await publish(js, s3_bucket, "a/old-name.txt", len(body))
    await js.publish(
        FAST_SMALL.subject,
        json.dumps(
            {
                "event_type": "rename",
                "path": f"/buckets/{s3_bucket}/b/new-name.txt",
                "old_path": f"/buckets/{s3_bucket}/a/old-name.txt",
                "size": len(body),
            }
        ).encode(),
    )
    # Order matters here (rename after ingest) and timing does not: one file at a time, and
    # the tier's real 60 s ack wait.
    in_order = tiers.SMALL.with_overrides(concurrency=1)
    await ensure_topology(js, (in_order,))
    worker = make_worker(js, sqlite_database, runner_settings, spec=in_order)
    sub = await bind_consumer(js, FAST_SMALL)
    await run_until(worker, sub, lambda w: w.stats.acked >= 2)
    assert [r.action for r in worker.stats.results] == ["ingest", "rename"], worker.stats

    new_uri = f"s3://{s3_bucket}/b/new-name.txt"
    [moved] = await sqlite_database.list_files(s3_bucket)
    assert (moved.uri, moved.id, moved.name) == (
        new_uri,
        file_id(s3_bucket, new_uri),
        "new-name.txt",
    )
    resources = await sqlite_database.list_resources(s3_bucket)
    assert resources and all(r.file_id == moved.id for r in resources)
    assert resources[0].name == "new-name_chunk_0"

    await js.publish(
        FAST_SMALL.subject,
        json.dumps(
            {"event_type": "delete", "path": f"/buckets/{s3_bucket}/b/new-name.txt"}
        ).encode(),
    )
    await run_until(worker, sub, lambda w: w.stats.acked >= 3)
    last = worker.stats.results[-1]
    assert (last.uri, last.event_type, last.action, last.summary["removed"]) == (
        new_uri,
        "delete",
        "delete",
        True,
    )
    assert await sqlite_database.list_files(s3_bucket) == []
    assert await sqlite_database.list_resources(s3_bucket) == []


async def test_stop_finishes_within_grace_or_hands_the_file_back_at_once(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    body = b"sleep=30\nnever finishes in time"
    put(s3fs_filesystem, s3_bucket, "slow/stop.slow", body)
    await publish(js, s3_bucket, "slow/stop.slow", len(body))
    worker = make_worker(js, sqlite_database, runner_settings, grace=0.5)
    sub = await bind_consumer(js, FAST_SMALL)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(sub, stop, fetch_timeout=0.3))
    for _ in range(200):
        jobs = await sqlite_database.list_jobs(tenant_id=s3_bucket)
        if jobs and jobs[0].status == JobStatus.RUNNING:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task

    assert worker.stats.interrupted == 1 and worker.stats.acked == 0
    # Handed back without delay: available again right now, not after the ack wait.
    [again] = await sub.fetch(1, timeout=1)
    assert again.metadata.num_delivered == 2
    await again.term()
    [job] = await sqlite_database.list_jobs(tenant_id=s3_bucket)
    assert job.status == JobStatus.PENDING and "shutdown" in (job.error or "")
