"""The self-test: upload a file to SeaweedFS, publish its event to the TEST queue, pull it and
process it, printing the seed's three steps and the SQL to check the result.

It exercises the same path as production (the object is read back through the S3 API, the event
goes through JetStream, the worker settles it) but only on ``P8FS_STORAGE_EVENTS_TEST`` /
``test-workers``, never on a production tier. With nothing configured it runs on embedded
services (``nats-server``, ``weed mini``) and SQLite, which makes it the README's first command.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p8fs_runner import tiers

if TYPE_CHECKING:  # pragma: no cover
    from p8fs_runner.settings import RunnerSettings
    from p8fs_runner.worker import FailedDelivery, SettledFile, Worker

#: The seed's tenant and key prefix: ``s3://tenant-test/test/Sample.pdf`` for tenant ``tenant-test``.
SELFTEST_TENANT = "tenant-test"
SELFTEST_PREFIX = "test"

Echo = Callable[[str], None]


@dataclass
class SelfTestResult:
    """What the self-test did (the CLI's exit code is ``0`` iff ``ok``)."""

    ok: bool
    uri: str
    size: int
    chunks: int = 0
    seconds: float = 0.0
    provider: str | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def sample_event(
    bucket: str, key: str, size: int, mime_type: str, tenant_id: str
) -> dict[str, Any]:
    """The event the self-test publishes: the seed's ``nats pub`` shape with the filer path of
    the object (``/buckets/<bucket>/<key>``) and an explicit tenant."""
    return {
        "event_type": "create",
        "path": f"/buckets/{bucket}/{key}",
        "size": size,
        "mime_type": mime_type,
        "tenant_id": tenant_id,
        "bucket": bucket,
        "key": key,
        "entry": {"Size": size, "Mime": mime_type},
        "source": "self-test",
    }


def verify_sql(settings: RunnerSettings, tenant_id: str) -> list[str]:
    """The seed's verification query, as a command for the configured database."""
    query = (
        "SELECT name, category, length(content) AS size FROM resources "
        f"WHERE tenant_id = '{tenant_id}' ORDER BY created_at DESC LIMIT 5;"
    )
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        return [f"sqlite3 {settings.sqlite_path()} \\", f'  "{query}"']
    if url.startswith("postgresql"):
        return [
            f"psql -h {settings.pg_host} -p {settings.pg_port} -U {settings.pg_user} "
            f"-d {settings.pg_database} \\",
            f'  -c "{query}"',
        ]
    return [
        f"mysql -h {settings.tidb_host} -P {settings.tidb_port} -u {settings.tidb_user} "
        f"{settings.tidb_database} \\",
        f'  -e "{query}"',
    ]


async def _upload(settings: RunnerSettings, path: Path, bucket: str, key: str) -> None:
    """Stream the file to S3 (multipart for large files; never read whole into memory).

    Through the running loop's async S3 client, the one the worker's ``afetch`` then reuses and
    :func:`run_selftest` closes on this loop. A synchronous ``s3fs`` filesystem here (as before)
    ran its client on fsspec's own I/O thread, and the garbage collector finalised it later on
    the main thread, where s3fs schedules the client's close on the *running* loop: "Task
    exception was never retrieved ... attached to a different loop" in the middle of step 3.
    """
    from p8fs.storage import async_s3_filesystem, storage_options_from_settings

    fs = await async_s3_filesystem(storage_options_from_settings(settings))
    if not await fs._exists(bucket):
        await fs._mkdir(bucket)
    await fs._put_file(str(path), f"{bucket}/{key}")


async def run_selftest(
    settings: RunnerSettings,
    sample: Path,
    *,
    tier: str = "small",
    echo: Echo = print,
    tenant_id: str = SELFTEST_TENANT,
    time_limit: float = 600.0,
    queue: tiers.QueueSpec | None = None,
) -> SelfTestResult:
    """Upload ``sample``, publish its event to the TEST queue, process it, report.

    ``settings`` must already point at running services (the CLI resolves embedded ones). The
    S3 client used for the upload and the download is closed on this loop before returning.
    ``queue`` defaults to the settings' TEST queue (its replicas and overrides: on a cluster a
    first self-test creates the TEST and dead-letter streams with P8FS_NATS_REPLICAS copies).
    """
    from p8fs.storage import aclose_filesystems

    if queue is None:
        queue = settings.queue("test")

    try:
        return await _run_selftest(settings, sample, tier, echo, tenant_id, time_limit, queue)
    finally:
        await aclose_filesystems()


async def _run_selftest(
    settings: RunnerSettings,
    sample: Path,
    tier: str,
    echo: Echo,
    tenant_id: str,
    time_limit: float,
    queue: tiers.QueueSpec,
) -> SelfTestResult:
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.processing import PipelineProcessor
    from p8fs_runner.service import LazyDatabase
    from p8fs_runner.worker import Worker

    sample = Path(sample)
    size = sample.stat().st_size
    bucket, key = tenant_id, f"{SELFTEST_PREFIX}/{sample.name}"
    uri = f"s3://{bucket}/{key}"
    result = SelfTestResult(ok=False, uri=uri, size=size)
    routed = tiers.tier_for_size(size)
    if routed.name != tier:
        result.notes.append(
            f"{sample.name} ({size:,} bytes) would be routed to the {routed.name} tier, "
            f"not {tier}; the self-test processes it on the TEST queue anyway"
        )

    echo(f"📤 Step 1: Uploading {sample.name} to SeaweedFS...")
    await _upload(settings, sample, bucket, key)
    echo(f"✅ Uploaded to: {key}")
    echo(f"   Bucket: {bucket}  ({uri})")
    echo(f"   Size: {size:,} bytes")
    echo("")

    echo("📨 Step 2: Publishing test event to NATS...")
    nc = await connect_nats(settings, name="p8fs-selftest")
    database = LazyDatabase(settings)
    try:
        js = nc.jetstream()
        sub = await _bind_test_queue(js, queue, echo)
        await _publish_sample(js, queue, size, bucket, key, tenant_id, echo)

        echo("⚙️  Step 3: Processing event from queue...")
        db = await database.get()
        worker = Worker(
            js,
            queue,
            PipelineProcessor(db, settings, process="storage-worker-test"),
            errors=db.record_error,
            jobs=db.upsert_job,
            process_name="storage-worker-test",
        )
        settled, failure = await _process_until_settled(worker, sub, uri, time_limit, echo)
        if settled is None:
            result.reason = (
                failure.reason
                if failure
                else f"the event was not processed within {time_limit:.0f}s"
            )
            _report_failure(sample, result.reason, failure, queue, echo)
            return result
        await _report_success(db, settings, sample, tenant_id, settled, result, echo)
        return result
    finally:
        for note in result.notes:
            echo(f"ℹ️  {note}")
        try:
            await nc.flush(timeout=5)
        finally:
            await nc.close()
            await database.dispose()


async def _bind_test_queue(js: Any, queue: tiers.QueueSpec, echo: Echo) -> Any:
    """The TEST queue's consumer; created exactly as the router would when no router has run
    against these servers (embedded mode). Production tiers are left alone."""
    from p8fs_runner.topology import ConsumerNotFound, bind_consumer, ensure_topology

    try:
        return await bind_consumer(js, queue)
    except ConsumerNotFound:
        await ensure_topology(js, (queue,))
        echo(f"   Created {queue.stream}/{queue.durable} (no router had run here)")
        return await bind_consumer(js, queue)


async def _publish_sample(
    js: Any,
    queue: tiers.QueueSpec,
    size: int,
    bucket: str,
    key: str,
    tenant_id: str,
    echo: Echo,
) -> None:
    """Publish the sample's storage event, as the bridge would, with a unique message id."""
    mime = mimetypes.guess_type(key)[0] or "application/octet-stream"
    event = sample_event(bucket, key, size, mime, tenant_id)
    ack = await js.publish(
        queue.subject,
        json.dumps(event).encode(),
        headers={"Nats-Msg-Id": f"selftest:s3://{bucket}/{key}:{time.time_ns()}"},
        stream=queue.stream,
    )
    echo(f"✅ Published to: {queue.subject}")
    echo(f"   Stream: {ack.stream}  sequence {ack.seq}")
    echo("")


async def _process_until_settled(
    worker: Worker, sub: Any, uri: str, time_limit: float, echo: Echo
) -> tuple[SettledFile | None, FailedDelivery | None]:
    """Run ``worker`` until the sample's event is settled or ``time_limit`` passes.

    Older test events still on the queue are processed too; a failed delivery of ours stops the
    run at once (a transient one is reported now, not after its retry).
    """
    stop = asyncio.Event()
    found: list[tuple[SettledFile | None, FailedDelivery | None]] = []

    async def watch() -> None:
        announced = False
        while not stop.is_set():
            stats = worker.stats
            if not announced and (stats.results or stats.failures):
                echo("✅ Received message from queue")
                announced = True
            settled, failure = stats.result_for(uri), stats.failure_for(uri)
            if settled or failure:
                found.append((settled, failure))
                stop.set()
                return
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(worker.run(sub, stop, fetch_timeout=1.0), timeout=time_limit)
    except TimeoutError:
        pass
    finally:
        stop.set()
        watcher.cancel()
    return found[0] if found else (None, None)


def _report_failure(
    sample: Path,
    reason: str,
    failure: FailedDelivery | None,
    queue: tiers.QueueSpec,
    echo: Echo,
) -> None:
    echo(f"❌ Processing {sample.name} failed: {reason}")
    if failure and failure.permanent:
        echo(f"   The event was dead-lettered to {tiers.DLQ_STREAM} (see `p8fs-run dlq list`)")
    elif failure:
        echo(f"   The failure looks transient: the event stays on {queue.stream} for a retry")


async def _report_success(
    db: Any,
    settings: RunnerSettings,
    sample: Path,
    tenant_id: str,
    settled: SettledFile,
    result: SelfTestResult,
    echo: Echo,
) -> None:
    """Fill ``result`` from the settled event and show the rows it made."""
    summary = settled.summary
    result.ok = True
    result.chunks = int(summary.get("chunks") or 0)
    result.seconds = float(summary.get("seconds") or 0.0)
    result.provider = summary.get("provider")
    echo(f"   Using the {result.provider} provider")
    if summary.get("skipped"):
        echo(f"   Unchanged since the last run: kept its {result.chunks} chunks")
    else:
        echo(f"   Created {result.chunks} chunks in {result.seconds:.1f}s")
    echo(f"✅ Successfully processed {sample.name}")
    echo("")
    for resource in (await db.list_resources(tenant_id, file_id=summary.get("file_id")))[:5]:
        result.rows.append(
            {"name": resource.name, "category": resource.category, "size": len(resource.content)}
        )
    echo("📊 Verify in database:")
    for line in verify_sql(settings, tenant_id):
        echo(f"   {line}")
    if result.rows:
        echo("")
        echo(f"   {'name':<24} | {'category':<14} | size")
        for row in result.rows:
            echo(f"   {row['name']:<24} | {row['category']:<14} | {row['size']}")
