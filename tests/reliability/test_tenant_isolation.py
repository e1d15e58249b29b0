"""Tenant isolation: every way in tries to reach another tenant's rows, and none gets there.

The boundaries, each crossed on purpose here:

* **worker** (real nats-server, weed mini, SQLite, the real pipeline): an event naming tenant A
  whose object sits in tenant B's bucket, and a rename from A's bucket into B's, are refused
  before any read or write: no row of either tenant, no job, an ``errors`` row and a dead
  letter each; a genuine event of A beside them writes rows of A only;
* **agents**: ``DreamingWorker.collect_user_data``, a direct DreamModel run and a batch
  submission for A read A's sessions and resources only, checked in what reached the (local)
  LLM server; the moment worker turns only A's transcripts into A's moments;
* **Database API** (SQLite, PostgreSQL, MariaDB): upserts of sessions, moments and errors under
  another tenant's ids, and the pipeline's ``adelete``/``arename`` aimed at another tenant's
  file, leave that tenant's rows as they were (``tests/core/test_database.py::
  test_tenants_are_isolated`` covers reads, ``get_job``/``delete_file`` across tenants and the
  files/jobs upserts);
* **CLI**: ``p8fs process --tenant-id A`` on the very files B already processed leaves B's rows
  byte for byte unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from p8fs.database import Database
from p8fs.database.schema import TABLE_NAMES
from p8fs.ids import file_id, resource_id
from p8fs.models import ErrorRecord, FileRecord, JobStatus, Moment, Resource, Session
from p8fs.pipeline import adelete, aingest, arename
from p8fs.settings import Settings
from p8fs_runner import tiers
from p8fs_runner.dlq import list_dead_letters
from p8fs_runner.processing import PipelineProcessor
from p8fs_runner.topology import bind_consumer, ensure_topology
from p8fs_runner.worker import Worker
from tests.fixtures.llm import FakeLLMServer, RecordedRequest, corpus_moment_reply
from tests.fixtures.servers import corpus_path
from tests.runner.test_worker import run_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from p8fs_runner.settings import RunnerSettings

#: The small tier with short waits, so a test settles in seconds.
FAST = tiers.SMALL.with_overrides(backoff=(2.0,), max_deliver=2, batch=4, concurrency=2)


def marker(tenant: str) -> str:
    """Text only ``tenant``'s data contains, to be looked for where it must not be."""
    return f"PRIVATE-{tenant}-{uuid.uuid4().hex[:8]}"


async def all_rows(db: Database, table: str) -> list[dict[str, Any]]:
    """Every row of ``table``, whatever its tenant (what an attacker would hope to reach)."""
    from p8fs.database import schema

    t = schema.metadata.tables[table]
    async with db.engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(t.select())).all()]


# -- the worker ---------------------------------------------------------------------------------


@pytest.fixture
async def js(runner_settings: RunnerSettings) -> AsyncIterator[Any]:
    from p8fs_runner.connection import connect_nats

    nc = await connect_nats(runner_settings)
    try:
        await ensure_topology(nc.jetstream(), (tiers.ROUTER, FAST))
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_a_worker_never_writes_across_tenants(
    js: Any,
    sqlite_database: Database,
    runner_settings: RunnerSettings,
    s3_bucket: str,
    s3fs_filesystem: Any,
) -> None:
    tenant_a = s3_bucket
    tenant_b = f"t-{uuid.uuid4().hex[:16]}"
    s3fs_filesystem.mkdir(tenant_b)
    secret_of_b = marker(tenant_b)
    s3fs_filesystem.pipe(f"{tenant_b}/doc.txt", f"Only B may read this: {secret_of_b}\n".encode())
    s3fs_filesystem.pipe(f"{tenant_a}/own.txt", b"A's own notes, processed normally.\n")

    events = [
        # Tenant A claims an object of B's bucket.
        {"event_type": "create", "tenant_id": tenant_a, "path": f"/buckets/{tenant_b}/doc.txt"},
        # The same claim through the bucket/key form.
        {"event_type": "create", "tenant_id": tenant_a, "bucket": tenant_b, "key": "doc.txt"},
        # A rename that would move B's object into A's bucket.
        {
            "event_type": "rename",
            "old_path": f"/buckets/{tenant_b}/doc.txt",
            "path": f"/buckets/{tenant_a}/stolen.txt",
        },
        # A genuine event of A.
        {"event_type": "create", "path": f"/buckets/{tenant_a}/own.txt"},
    ]
    payloads = [json.dumps({"size": 40, **event}).encode() for event in events]
    for payload in payloads:
        await js.publish(FAST.subject, payload)

    processor = PipelineProcessor(sqlite_database, runner_settings, process="storage-worker-small")
    worker = Worker(
        js, FAST, processor, errors=sqlite_database.record_error, jobs=sqlite_database.upsert_job
    )
    sub = await bind_consumer(js, FAST)
    await run_until(worker, sub, lambda w: w.stats.dead_lettered + w.stats.acked >= 4)
    assert (worker.stats.acked, worker.stats.dead_lettered) == (1, 3), worker.stats.failures

    # B: not one row anywhere, and B's text in no row of any tenant.
    for table in TABLE_NAMES:
        assert await sqlite_database.count(table, tenant_b) == 0, table
        for row in await all_rows(sqlite_database, table):
            assert secret_of_b not in json.dumps(row, default=str), (table, row)
    # A: exactly its own file, its resources and its one job; nothing from the refused events.
    [own] = await sqlite_database.list_files(tenant_a)
    assert own.uri == f"s3://{tenant_a}/own.txt"
    assert {r.file_id for r in await sqlite_database.list_resources(tenant_a)} == {own.id}
    [job] = await sqlite_database.list_jobs(tenant_id=tenant_a)
    assert job.status == JobStatus.DONE and job.payload["uri"] == own.uri
    assert await sqlite_database.count("files") == 1
    assert await sqlite_database.count("jobs") == 1

    # Each refusal left an errors row and a dead letter naming the mismatch.
    errors = await sqlite_database.list_errors()
    assert len(errors) == 3
    assert {e.metadata["code"] for e in errors} == {"invalid_event"}
    assert all(e.tenant_id not in (tenant_a, tenant_b) for e in errors)
    assert sum("tenant mismatch" in e.message for e in errors) == 2
    assert sum("is not in bucket" in e.message for e in errors) == 1
    letters = await list_dead_letters(js)
    assert sorted(letter.code for letter in letters) == ["invalid_event"] * 3
    assert sorted(letter.data for letter in letters) == sorted(payloads[:3])


# -- agents ---------------------------------------------------------------------------------------


async def seed_tenant(db: Database, tenant: str, secret: str, *, hour: int) -> None:
    """A session, a document (file + resource) and a moment, each carrying ``secret``."""
    from datetime import UTC, datetime

    when = datetime(2025, 3, 1, hour, tzinfo=UTC)
    await db.upsert_session(
        Session(
            tenant_id=tenant,
            name=f"chat of {tenant}",
            messages=[{"role": "user", "content": f"my plan: {secret}"}],
            created_at=when,
        )
    )
    uri = f"s3://{tenant}/notes.md"
    fid = file_id(tenant, uri)
    await db.store_file(
        FileRecord(id=fid, tenant_id=tenant, uri=uri, name="notes.md", chunk_count=1),
        [
            Resource(
                id=resource_id(fid, 0),
                tenant_id=tenant,
                file_id=fid,
                name="notes_chunk_0",
                content=f"Notes of {tenant}: {secret}",
                uri=f"{uri}#chunk_0",
                ordinal=0,
                created_at=when,
            )
        ],
    )
    await db.store_moments([Moment(tenant_id=tenant, name=f"moment {secret}", content=secret)])


def dream_reply(request: RecordedRequest) -> dict[str, Any]:
    return {"executive_summary": "one person's focus", "key_themes": ["planning"]}


async def test_dreaming_reads_only_its_tenant(
    llm_server: FakeLLMServer, sqlite_database: Database, tmp_path: Path
) -> None:
    from p8fs.jobs.dreaming import DreamingWorker

    secrets_of = {t: marker(t) for t in ("tenant-a", "tenant-b")}
    # B's data is the newest: a query that forgot its tenant filter would pick it first.
    await seed_tenant(sqlite_database, "tenant-a", secrets_of["tenant-a"], hour=8)
    await seed_tenant(sqlite_database, "tenant-b", secrets_of["tenant-b"], hour=9)
    worker = DreamingWorker(sqlite_database, settings=Settings(data_dir=tmp_path))

    data = await worker.collect_user_data("tenant-a")
    assert [s.tenant_id for s in data.sessions] == ["tenant-a"]
    assert [r.tenant_id for r in data.resources] == ["tenant-a"]
    assert secrets_of["tenant-b"] not in data.model_dump_json()

    llm_server.responder = dream_reply
    job = await worker.process_direct("tenant-a")
    assert job.status == JobStatus.COMPLETED, job.error
    llm_server.auto_end_batches = True
    [submitted] = await worker.process_batch(["tenant-a"])
    assert submitted.status == JobStatus.SUBMITTED, submitted.error

    sent = [r for r in llm_server.requests if r.raw]
    assert sent, "the agent never reached the LLM server"
    everything_sent = b"\n".join(r.raw for r in sent).decode()
    # The session and the document of A were both sent, in the direct and the batch request.
    assert everything_sent.count(secrets_of["tenant-a"]) >= 4
    assert secrets_of["tenant-b"] not in everything_sent
    assert "tenant-b" not in everything_sent
    # Jobs and their results are A's only.
    assert await sqlite_database.list_jobs(tenant_id="tenant-b") == []
    assert {j.tenant_id for j in await sqlite_database.list_jobs()} == {"tenant-a"}


async def test_the_moment_worker_reads_only_its_tenant(
    llm_server: FakeLLMServer, sqlite_database: Database, tmp_path: Path
) -> None:
    from p8fs.jobs.moments import MomentWorker

    root = corpus_path("transcripts/p8fs_moment_samples")
    cases = {
        "tenant-a": "tenant_1/transcript_2025-01-13T09-00-00Z",
        "tenant-b": "tenant_2/transcript_2025-01-14T18-00-00Z",
    }
    settings = Settings(data_dir=tmp_path, chunk_tokens=256, chunk_overlap=32)
    transcript_ids: dict[str, str] = {}
    expected: dict[str, dict[str, Any]] = {}
    for tenant, case in cases.items():
        source = root / f"{case}_input.json"
        transcript_ids[tenant] = json.loads(source.read_text())["transcript_id"]
        expected[transcript_ids[tenant]] = json.loads(
            (root / f"{case}_expected_moment.json").read_text()
        )
        await aingest(str(source), tenant, database=sqlite_database, settings=settings)

    def respond(request: RecordedRequest) -> dict[str, Any]:
        for transcript_id, moment in expected.items():
            if transcript_id in request.user_text:
                return corpus_moment_reply(moment)
        raise AssertionError("a request without a known transcript")

    llm_server.responder = respond
    run = await MomentWorker(sqlite_database, settings=settings).process_files("tenant-a")
    assert run.moments >= 1 and not run.failures

    sent = "\n".join(r.raw.decode() for r in llm_server.message_requests())
    assert transcript_ids["tenant-a"] in sent
    assert transcript_ids["tenant-b"] not in sent
    assert await sqlite_database.list_moments("tenant-b") == []
    assert {m.tenant_id for m in await sqlite_database.list_moments("tenant-a")} == {"tenant-a"}


# -- the Database API and the pipeline's row operations ------------------------------------------


async def test_upserts_and_row_operations_stay_in_their_tenant(
    database: Database, tmp_path: Path
) -> None:
    owner, intruder = "tenant-owner", "tenant-intruder"
    session = Session(tenant_id=owner, name="owner's chat")
    moment = Moment(tenant_id=owner, name="owner's moment", content="kept")
    error = ErrorRecord(tenant_id=owner, message="owner's failure")
    await database.upsert_session(session)
    await database.store_moments([moment])
    await database.record_error(error)
    document = tmp_path / "shared-name.md"
    document.write_text("# Owner\n\nThe owner's document.\n")
    settings = Settings(data_dir=tmp_path / "data")
    await aingest(str(document), owner, database=database, settings=settings)
    [owner_file] = await database.list_files(owner)
    before = {t: await all_rows(database, t) for t in TABLE_NAMES}

    # The intruder reuses every id of the owner's rows under its own tenant.
    await database.upsert_session(session.model_copy(update={"tenant_id": intruder, "name": "x"}))
    await database.store_moments(
        [moment.model_copy(update={"tenant_id": intruder, "content": "x"})]
    )
    await database.record_error(error.model_copy(update={"tenant_id": intruder, "message": "x"}))
    # ... and aims the pipeline's delete and rename at the owner's file.
    assert await adelete(str(document), intruder, database=database) is False
    assert (
        await arename(str(document), str(tmp_path / "moved.md"), intruder, database=database)
        is None
    )
    assert await database.delete_file(intruder, owner_file.id) is False

    for table in TABLE_NAMES:
        rows = await all_rows(database, table)
        owners = [r for r in rows if r["tenant_id"] == owner]
        assert owners == [r for r in before[table] if r["tenant_id"] == owner], table
    assert (await database.list_sessions(owner))[0].name == "owner's chat"
    assert (await database.list_moments(owner))[0].content == "kept"
    assert (await database.list_errors(owner))[0].message == "owner's failure"
    assert (await database.list_sessions(intruder))[0].name == "x"  # its own, separate row
    assert await database.list_errors(intruder) != await database.list_errors(owner)
    assert await database.get_file(owner, owner_file.id) == owner_file


# -- the CLI ----------------------------------------------------------------------------------------


def cli_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P8FS_", "ANTHROPIC_"))}
    env.update(P8FS_DATABASE_URL=database_url, P8FS_DATA_DIR=str(data_dir))
    return env


def p8fs(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p8fs.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_p8fs_process_for_one_tenant_never_touches_another(
    sqlite_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "one.md").write_text("# One\n\nThe same file, processed by two tenants.\n")
    (folder / "two.txt").write_text("Plain text, processed by two tenants.\n")
    env = cli_env(sqlite_url, tmp_path / "data")
    first = p8fs("process", "--tenant-id", "tenant-b", str(folder), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    async with Database(sqlite_url) as db:
        b_before = {t: await db.count(t, "tenant-b") for t in TABLE_NAMES}
        b_rows = {t: await all_rows(db, t) for t in ("files", "resources")}
    assert b_before["files"] == 2 and b_before["resources"] >= 2

    # A processes the same paths, twice (the second forced): new rows of A, none of B's touched.
    for extra in ((), ("--force",)):
        run = p8fs("process", "--tenant-id", "tenant-a", *extra, str(folder), env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr

    async with Database(sqlite_url) as db:
        assert {t: await db.count(t, "tenant-b") for t in TABLE_NAMES} == b_before
        for table, rows in b_rows.items():
            now = [r for r in await all_rows(db, table) if r["tenant_id"] == "tenant-b"]
            assert now == [r for r in rows if r["tenant_id"] == "tenant-b"], table
        a_files = await db.list_files("tenant-a")
        assert len(a_files) == 2
        b_ids = {f.id for f in await db.list_files("tenant-b")}
        assert not b_ids & {f.id for f in a_files}  # same paths, different tenants: other ids
