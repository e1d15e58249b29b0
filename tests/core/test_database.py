"""The repository layer over real SQLite, PostgreSQL and MariaDB (TiDB stand-in) connections.

Every test taking ``database`` runs three times (ids ``sqlite``, ``postgresql``, ``mariadb``):
the same behaviour is demanded from each dialect.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc

from p8fs.database import Database, plan_ddl
from p8fs.database.errors import UnstorableText
from p8fs.database.schema import TABLE_NAMES
from p8fs.errors import ConfigurationError, InvalidPath, TransientError
from p8fs.ids import file_id, resource_id, stable_id
from p8fs.models import (
    ErrorRecord,
    FileRecord,
    Job,
    JobStatus,
    Moment,
    PresentPerson,
    Resource,
    Session,
)
from p8fs.settings import Settings
from tests.fixtures.servers import free_port

TENANT = "tenant-a"
OTHER = "tenant-b"

#: Text that trips up databases: astral emoji (4-byte UTF-8), ZWJ sequences, CJK, Arabic (RTL),
#: combining marks, CRLF, tabs and trailing whitespace.
HARD_TEXT = (
    "Emoji 😀🧠👩‍👩‍👧‍👦 and flags 🇯🇵\r\n"
    "中文：数据库测试。日本語のテキスト。한국어 텍스트\n"
    "العربية: مرحبا بالعالم\n"
    "combining: e\u0301 a\u0308 \u2028line sep\ttab   \n  trailing  "
)


def make_file(tenant: str, uri: str, **kw: object) -> FileRecord:
    return FileRecord(id=file_id(tenant, uri), tenant_id=tenant, uri=uri, name=Path(uri).name, **kw)  # type: ignore[arg-type]


def make_chunks(file: FileRecord, texts: list[str]) -> list[Resource]:
    stem = Path(file.uri).stem
    return [
        Resource(
            id=resource_id(file.id, i),
            tenant_id=file.tenant_id,
            file_id=file.id,
            name=f"{stem}_chunk_{i}",
            content=text,
            ordinal=i,
            uri=f"{file.uri}#chunk_{i}",
            token_count=len(text.split()),
            metadata={"page": i + 1, "headings": ["Intro", "Détails"]},
        )
        for i, text in enumerate(texts)
    ]


async def test_init_schema_is_idempotent(database: Database) -> None:
    await database.init_schema()
    await database.init_schema()
    assert await database.existing_tables() == list(TABLE_NAMES)
    for table in TABLE_NAMES:
        assert await database.count(table) == 0


async def test_store_and_read_back_a_file(database: Database) -> None:
    file = make_file(
        TENANT,
        "/docs/report.md",
        file_size=1234,
        mime_type="text/markdown",
        content_hash="sha256:abc",
        provider="text",
        chunk_count=2,
        metadata={"encoding": "utf-8", "nested": {"list": [1, 2.5, None, "ü"]}},
    )
    chunks = make_chunks(file, ["first chunk", "second chunk"])
    await database.store_file(file, chunks)

    assert await database.get_file(TENANT, file.id) == file
    assert await database.get_file_by_uri(TENANT, file.uri) == file
    assert await database.get_file_by_uri(TENANT, "/docs/other.md") is None
    assert await database.list_resources(TENANT, file_id=file.id) == chunks
    assert await database.list_files(TENANT) == [file]


async def test_changed_content_leaves_no_stale_chunk(database: Database) -> None:
    file = make_file(TENANT, "/docs/a.txt", content_hash="v1")
    await database.store_file(file, make_chunks(file, ["one", "two", "three"]))
    assert await database.count("resources", TENANT) == 3

    updated = file.model_copy(update={"content_hash": "v2", "chunk_count": 2})
    new_chunks = make_chunks(updated, ["uno", "dos"])
    await database.store_file(updated, new_chunks)

    stored = await database.list_resources(TENANT, file_id=file.id)
    assert [r.content for r in stored] == ["uno", "dos"]
    assert await database.count("resources", TENANT) == 2
    assert await database.count("files", TENANT) == 1
    got = await database.get_file(TENANT, file.id)
    assert got is not None and got.content_hash == "v2" and got.chunk_count == 2


async def test_store_file_is_one_transaction(database: Database) -> None:
    """A resource violating a constraint rolls back the file upsert and the deletion too."""
    file = make_file(TENANT, "/docs/t.txt", content_hash="v1")
    old_chunks = make_chunks(file, ["old 0", "old 1"])
    await database.store_file(file, old_chunks)

    broken = file.model_copy(update={"content_hash": "v2"})
    chunks = make_chunks(broken, ["new 0", "new 1", "new 2"])
    # Two chunks with the same ordinal violate uq_resources_file_ordinal, after the file row
    # has been upserted and the old chunks deleted inside the transaction.
    chunks[2] = chunks[2].model_copy(update={"ordinal": 1})
    with pytest.raises(sa_exc.IntegrityError):
        await database.store_file(broken, chunks)

    got = await database.get_file(TENANT, file.id)
    assert got is not None and got.content_hash == "v1"
    assert await database.list_resources(TENANT, file_id=file.id) == old_chunks


async def test_store_file_refuses_resources_of_another_file(database: Database) -> None:
    file = make_file(TENANT, "/docs/x.txt")
    other = make_file(TENANT, "/docs/y.txt")
    with pytest.raises(ValueError, match="file_id"):
        await database.store_file(file, make_chunks(other, ["not mine"]))
    foreign = make_file(OTHER, "/docs/x.txt").model_copy(update={"id": file.id})
    with pytest.raises(InvalidPath, match="tenant"):
        await database.store_file(file, make_chunks(foreign, ["other tenant"]))
    assert await database.count("files") == 0
    assert await database.count("resources") == 0


async def test_delete_file(database: Database) -> None:
    keep = make_file(TENANT, "/keep.txt")
    gone = make_file(TENANT, "/gone.txt")
    await database.store_file(keep, make_chunks(keep, ["k"]))
    await database.store_file(gone, make_chunks(gone, ["g1", "g2"]))

    assert await database.delete_file(TENANT, gone.id) is True
    assert await database.delete_file(TENANT, gone.id) is False
    assert await database.get_file(TENANT, gone.id) is None
    assert await database.list_resources(TENANT, file_id=gone.id) == []
    assert await database.get_file(TENANT, keep.id) == keep
    assert [r.content for r in await database.list_resources(TENANT)] == ["k"]


async def test_replace_file_renames(database: Database) -> None:
    old = make_file(TENANT, "/inbox/draft.md")
    await database.store_file(old, make_chunks(old, ["body"]))

    new = make_file(TENANT, "/archive/final.md", content_hash=old.content_hash)
    new_chunks = make_chunks(new, ["body"])
    await database.replace_file(old.id, TENANT, new, new_chunks)

    assert await database.get_file(TENANT, old.id) is None
    assert await database.get_file_by_uri(TENANT, "/inbox/draft.md") is None
    assert await database.get_file_by_uri(TENANT, "/archive/final.md") == new
    assert await database.list_resources(TENANT) == new_chunks
    assert new_chunks[0].name == "final_chunk_0"


async def test_replace_file_rolls_back_as_a_whole(database: Database) -> None:
    old = make_file(TENANT, "/inbox/a.md")
    old_chunks = make_chunks(old, ["a0", "a1"])
    await database.store_file(old, old_chunks)

    new = make_file(TENANT, "/inbox/b.md")
    bad = make_chunks(new, ["b0", "b1"])
    bad[1] = bad[1].model_copy(update={"id": bad[0].id})  # duplicate primary key
    with pytest.raises(sa_exc.IntegrityError):
        await database.replace_file(old.id, TENANT, new, bad)

    assert await database.get_file(TENANT, old.id) == old
    assert await database.get_file(TENANT, new.id) is None
    assert await database.list_resources(TENANT, file_id=old.id) == old_chunks


async def test_replace_file_refuses_another_tenant(database: Database) -> None:
    old = make_file(TENANT, "/a.md")
    await database.store_file(old, [])
    intruder = make_file(OTHER, "/b.md")
    with pytest.raises(InvalidPath):
        await database.replace_file(old.id, TENANT, intruder, [])
    assert await database.get_file(TENANT, old.id) == old


async def test_list_resources_filters_and_orders(database: Database) -> None:
    first = make_file(TENANT, "/1.txt")
    second = make_file(TENANT, "/2.txt")
    early = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    late = early + timedelta(hours=3)
    chunks1 = [c.model_copy(update={"created_at": early}) for c in make_chunks(first, ["a", "b"])]
    chunks2 = [c.model_copy(update={"created_at": late}) for c in make_chunks(second, ["c"])]
    chunks2[0] = chunks2[0].model_copy(update={"category": "summary"})
    await database.store_file(first, chunks1)
    await database.store_file(second, chunks2)

    assert [r.content for r in await database.list_resources(TENANT)] == ["a", "b", "c"]
    newest = await database.list_resources(TENANT, newest_first=True, limit=2)
    assert [r.content for r in newest] == ["c", "a"]
    assert [r.content for r in await database.list_resources(TENANT, category="summary")] == ["c"]
    content = await database.list_resources(TENANT, category="content_chunk", file_id=first.id)
    assert [r.ordinal for r in content] == [0, 1]


async def test_jobs_round_trip(database: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    job = Job(
        tenant_id=TENANT,
        job_type="dreaming",
        payload={"batch_id": "msgbatch_1", "requests": [{"custom_id": "a", "n": 1}]},
        queued_at=datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=plus_two),
        created_at=datetime(2024, 1, 1, 10, 0, 1, tzinfo=UTC),
    )
    await database.upsert_job(job)
    got = await database.get_job(TENANT, job.id)
    assert got == job
    assert got is not None
    assert got.queued_at.tzinfo == UTC and got.queued_at.hour == 10
    assert got.queued_at.microsecond == 123456
    assert got.status is JobStatus.PENDING

    done = job.model_copy(update={"status": JobStatus.COMPLETED, "result": {"moments": 3}})
    await database.upsert_job(done)
    assert await database.get_job(TENANT, job.id) == done
    assert await database.count("jobs") == 1

    other = Job(tenant_id=TENANT, job_type="file", status=JobStatus.RUNNING)
    await database.upsert_job(other)
    assert await database.list_jobs(tenant_id=TENANT, status="COMPLETED") == [done]
    assert await database.list_jobs(job_type="file") == [other]
    assert await database.list_jobs(tenant_id=TENANT, status=JobStatus.FAILED) == []
    assert [j.id for j in await database.list_jobs(tenant_id=TENANT)] == [job.id, other.id]


async def test_a_finished_job_is_never_reopened(database: Database) -> None:
    """DONE/COMPLETED/FAILED stay; a late RUNNING or PENDING (a redelivery) changes nothing."""
    job = Job(tenant_id=TENANT, job_type="file_processing", status=JobStatus.PENDING)
    await database.upsert_job(job)
    running = job.model_copy(update={"status": JobStatus.RUNNING, "payload": {"delivery": 1}})
    await database.upsert_job(running)
    assert await database.get_job(TENANT, job.id) == running  # unfinished -> anything: applied
    done = job.model_copy(update={"status": JobStatus.DONE, "result": {"chunks": 2}})
    await database.upsert_job(done)
    for late in (JobStatus.RUNNING, JobStatus.PENDING, JobStatus.SUBMITTED):
        await database.upsert_job(
            job.model_copy(update={"status": late, "result": None, "error": "late", "payload": {"delivery": 2}})
        )
        assert await database.get_job(TENANT, job.id) == done, late
    # One final status may replace another (a retry that succeeded after all).
    failed = job.model_copy(update={"status": JobStatus.FAILED, "error": "corrupt"})
    await database.upsert_job(failed)
    assert await database.get_job(TENANT, job.id) == failed
    again = job.model_copy(update={"status": JobStatus.DONE, "error": None, "result": {"chunks": 1}})
    await database.upsert_job(again)
    assert await database.get_job(TENANT, job.id) == again
    # The same rule inside a file's transaction (the pipeline commits DONE with the file).
    file = FileRecord(tenant_id=TENANT, uri="/a.txt", name="a.txt", file_size=1, content_hash="h")
    await database.store_file_stream(
        file, [], job=lambda record: job.model_copy(update={"status": JobStatus.RUNNING})
    )
    assert await database.get_job(TENANT, job.id) == again


async def test_naive_datetimes_are_taken_as_utc(database: Database) -> None:
    job = Job(tenant_id=TENANT, job_type="x", queued_at=datetime(2024, 3, 1, 9, 30))
    await database.upsert_job(job)
    got = await database.get_job(TENANT, job.id)
    assert got is not None and got.queued_at == datetime(2024, 3, 1, 9, 30, tzinfo=UTC)


async def test_errors_round_trip(database: Database) -> None:
    older = ErrorRecord(
        tenant_id=TENANT,
        date=datetime(2024, 1, 1, tzinfo=UTC),
        process="storage-worker-small",
        message="corrupt PDF: startxref not found",
        stack_trace="Traceback (most recent call last):\n  ...\n",
        metadata={"uri": "s3://bucket/a.pdf", "code": "corrupt"},
    )
    newer = ErrorRecord(tenant_id=TENANT, message=HARD_TEXT, level="WARNING")
    await database.record_error(older)
    await database.record_error(newer)
    await database.record_error(older)  # redelivery: idempotent by id
    await database.record_error(ErrorRecord(tenant_id=OTHER, message="other"))

    assert await database.list_errors(TENANT) == [newer, older]
    assert await database.list_errors(TENANT, limit=1) == [newer]
    assert len(await database.list_errors()) == 3


async def test_sessions_round_trip(database: Database) -> None:
    base = datetime(2024, 6, 1, tzinfo=UTC)
    sessions = [
        Session(
            tenant_id=TENANT,
            name=f"chat {i}",
            query="what did I do?",
            messages=[{"role": "user", "content": HARD_TEXT}, {"role": "assistant", "content": ""}],
            metadata={"i": i},
            created_at=base + timedelta(minutes=i),
        )
        for i in range(3)
    ]
    for s in sessions:
        await database.upsert_session(s)
    renamed = sessions[0].model_copy(update={"name": "renamed"})
    await database.upsert_session(renamed)

    assert await database.list_sessions(TENANT) == [sessions[2], sessions[1], renamed]
    assert await database.list_sessions(TENANT, limit=1) == [sessions[2]]
    assert await database.list_sessions(OTHER) == []


async def test_moments_round_trip(database: Database) -> None:
    start = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)
    undated = Moment(tenant_id=TENANT, name="undated", content="no time")
    late = Moment(
        id=stable_id(TENANT, "transcript-1", "1"),
        tenant_id=TENANT,
        name="Stand-up",
        content=HARD_TEXT,
        summary="Daily stand-up",
        category="meeting",
        uri="s3://b/t.json",
        resource_timestamp=start + timedelta(hours=1),
        resource_ends_timestamp=start + timedelta(hours=1, minutes=15),
        moment_type="meeting",
        emotion_tags=["focused"],
        topic_tags=["release", "数据库"],
        present_persons=[PresentPerson(fingerprint_id="fp1", user_id="u1", user_label="Ana")],
        location="office",
        background_sounds="keyboard",
        metadata={"speakers": 2},
        source_resource_id="r1",
    )
    early = Moment(tenant_id=TENANT, name="Coffee", resource_timestamp=start)
    await database.store_moments([undated, late, early])
    assert await database.list_moments(TENANT) == [early, late, undated]

    revised = late.model_copy(update={"summary": "Stand-up, revised", "topic_tags": []})
    await database.store_moments([revised])
    assert await database.list_moments(TENANT) == [early, revised, undated]
    assert await database.count("moments", TENANT) == 3
    assert await database.list_moments(OTHER) == []
    await database.store_moments([])  # nothing to do, no error


async def test_tenants_are_isolated(database: Database) -> None:
    file = make_file(TENANT, "/shared/name.txt")
    chunks = make_chunks(file, ["secret of A"])
    await database.store_file(file, chunks)
    # One vector of A's chunk (resource_embeddings is a tenant table like the others).
    from p8fs.embedding import content_hash

    await database.store_embeddings(TENANT, "m", [(chunks[0].id, content_hash(chunks[0].content), [1.0, 0.0])])
    job = Job(tenant_id=TENANT, job_type="file")
    await database.upsert_job(job)
    await database.record_error(ErrorRecord(tenant_id=TENANT, message="A failed"))
    await database.upsert_session(Session(tenant_id=TENANT, name="A's chat"))
    await database.store_moments([Moment(tenant_id=TENANT, name="A's moment")])

    assert await database.get_file(OTHER, file.id) is None
    assert await database.get_file_by_uri(OTHER, file.uri) is None
    assert await database.list_files(OTHER) == []
    assert await database.list_resources(OTHER) == []
    assert await database.list_resources(OTHER, file_id=file.id) == []
    assert await database.get_job(OTHER, job.id) is None
    assert await database.list_jobs(tenant_id=OTHER) == []
    assert await database.list_errors(OTHER) == []
    assert await database.list_sessions(OTHER) == []
    assert await database.list_moments(OTHER) == []
    for table in TABLE_NAMES:
        assert await database.count(table, OTHER) == 0
        assert await database.count(table, TENANT) == 1
    assert await database.delete_file(OTHER, file.id) is False
    assert await database.get_file(TENANT, file.id) == file

    # The same id in another tenant is another row: neither upsert touches the other's.
    twin = make_file(OTHER, file.uri).model_copy(update={"id": file.id})
    await database.store_file(twin, make_chunks(twin, ["B's own"]))
    await database.upsert_job(
        job.model_copy(update={"tenant_id": OTHER, "status": JobStatus.FAILED})
    )
    assert [r.content for r in await database.list_resources(TENANT)] == ["secret of A"]
    assert [r.content for r in await database.list_resources(OTHER)] == ["B's own"]
    got = await database.get_job(TENANT, job.id)
    assert got is not None and got.status is JobStatus.PENDING


async def test_unicode_round_trips_byte_exact(database: Database) -> None:
    file = make_file(TENANT, "/données/日本語/مرحبا 😀.md", metadata={"title": HARD_TEXT})
    chunks = make_chunks(file, [HARD_TEXT, HARD_TEXT[::-1], "A" + "\U0001f600" * 1000])
    await database.store_file(file, chunks)
    stored = await database.list_resources(TENANT, file_id=file.id)
    for want, got in zip(chunks, stored, strict=True):
        assert got.content.encode("utf-8") == want.content.encode("utf-8")
        assert got.uri == want.uri and got.name == want.name
    got_file = await database.get_file_by_uri(TENANT, file.uri)
    assert got_file is not None and got_file.metadata["title"] == HARD_TEXT


async def test_nul_characters(database: Database) -> None:
    """SQLite and MariaDB keep U+0000; PostgreSQL cannot, and the write is refused whole."""
    file = make_file(TENANT, "/nul.txt", metadata={"raw": "a\x00b"})
    chunks = make_chunks(file, ["before\x00after"])
    if database.dialect == "postgresql":
        with pytest.raises(UnstorableText, match=r"files\.metadata"):
            await database.store_file(file, chunks)
        clean = file.model_copy(update={"metadata": {}})
        with pytest.raises(UnstorableText, match=r"resources\.content"):
            await database.store_file(clean, chunks)
        with pytest.raises(UnstorableText):
            await database.record_error(ErrorRecord(tenant_id=TENANT, message="x\x00"))
        assert await database.count("files") == 0
        assert await database.count("errors") == 0
    else:
        await database.store_file(file, chunks)
        assert await database.get_file(TENANT, file.id) == file
        assert await database.list_resources(TENANT) == chunks


async def test_uri_longer_than_an_index_key(database: Database) -> None:
    """TiDB caps index keys at 3,072 bytes: the uri itself is not indexed, its hash is."""
    uri = "s3://bucket/" + "/".join(["dossier-été-🗂"] * 600) + "/file.txt"
    assert len(uri.encode()) > 3 * 3072
    file = make_file(TENANT, uri)
    await database.store_file(file, make_chunks(file, ["deep"]))
    assert await database.get_file_by_uri(TENANT, uri) == file
    assert await database.get_file_by_uri(TENANT, uri[:-1]) is None


async def test_large_content(database: Database) -> None:
    """3 MB in one chunk: beyond MySQL's TEXT (64 KiB) and MEDIUMTEXT-sized packets."""
    big = ("p8fs ¶ 數據 " * 300_000)[: 3 * 1024 * 1024]
    file = make_file(TENANT, "/big.txt")
    await database.store_file(file, make_chunks(file, [big]))
    [stored] = await database.list_resources(TENANT, file_id=file.id)
    assert len(stored.content) == len(big)
    assert stored.content == big


async def test_concurrent_writers_all_commit(database: Database) -> None:
    """Many transactions at once (SQLite: WAL + busy timeout make them wait, not fail)."""
    files = [make_file(TENANT, f"/parallel/{i}.txt") for i in range(12)]
    await asyncio.gather(*(database.store_file(f, make_chunks(f, ["x", "y"])) for f in files))
    assert await database.count("files", TENANT) == 12
    assert await database.count("resources", TENANT) == 24


async def test_plan_ddl_is_what_init_applies(database: Database) -> None:
    """The plan for this dialect runs cleanly on a database that already has the schema."""
    provider = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "tidb"}[database.dialect]
    statements = [s for s in plan_ddl(provider).split(";\n") if s.strip() and "CREATE" in s]
    assert len(statements) >= len(TABLE_NAMES)
    async with database.engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)
    assert await database.existing_tables() == list(TABLE_NAMES)


async def test_count_refuses_unknown_tables(database: Database) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        await database.count("users; DROP TABLE files")


# -- failures become typed errors -------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            "postgresql+asyncpg://postgres:s3cr3t-pw@127.0.0.1:{port}/test", id="postgresql"
        ),
        pytest.param("mysql+aiomysql://root:s3cr3t-pw@127.0.0.1:{port}/test", id="mysql"),
    ],
)
async def test_unreachable_server_is_transient(url: str) -> None:
    port = free_port()  # nothing listens there
    db = Database(url.format(port=port))
    try:
        with pytest.raises(TransientError) as info:
            await db.get_file(TENANT, "x")
    finally:
        await db.dispose()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cr3t-pw" not in message and "s3cr3t-pw" not in repr(db)
    assert info.value.permanent is False


async def test_locked_sqlite_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite+aiosqlite:///{path}"
    async with Database(url) as setup:
        await setup.init_schema()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    db = Database(url, sqlite_busy_timeout_ms=50)
    try:
        file = make_file(TENANT, "/w.txt")
        with pytest.raises(TransientError, match="locked"):
            await db.store_file(file, make_chunks(file, ["x"]))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await db.dispose()
    # Once the lock is gone the same call succeeds: the retry a worker would do.
    async with Database(url) as db2:
        await db2.store_file(file, make_chunks(file, ["x"]))
        assert await db2.count("resources") == 1


async def test_sqlite_waits_for_a_short_lock(tmp_path: Path) -> None:
    """The busy timeout lets a writer wait for another's transaction rather than fail."""
    path = tmp_path / "wait.db"
    url = f"sqlite+aiosqlite:///{path}"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    async with Database(url) as db:
        await db.init_schema()
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            await db.upsert_job(Job(tenant_id=TENANT, job_type="x"))
        finally:
            release.join()
            holder.close()
        assert await db.count("jobs") == 1


async def test_sqlite_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing-folder' / 'p8fs.db'}")
    try:
        with pytest.raises(ConfigurationError, match="P8FS_DATABASE_URL"):
            await db.init_schema()
    finally:
        await db.dispose()
        await _aiosqlite_threads_finished()


async def _aiosqlite_threads_finished() -> None:
    """Let aiosqlite's worker thread end while this test's loop still runs.

    When ``sqlite3.connect`` fails, aiosqlite stops its thread without waiting for it; if the
    loop closes first, the thread reports "Event loop is closed" during a later test.
    """
    for _ in range(200):
        if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


def test_unsupported_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unsupported database"):
        Database("oracle://scott:tiger@db/orcl")
    with pytest.raises(ConfigurationError) as info:
        Database("oracle://scott:tiger@db/orcl")
    assert "tiger" not in str(info.value)


async def test_from_settings_creates_the_sqlite_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    settings = Settings(data_dir=data_dir, storage_provider="sqlite")
    async with Database.from_settings(settings) as db:
        assert db.dialect == "sqlite"
        await db.init_schema()
    assert (data_dir / "p8fs.db").is_file()


def test_from_settings_builds_server_urls() -> None:
    pg = Database.from_settings(
        Settings(storage_provider="postgresql", pg_host="db", pg_password="pw", pg_database="p8")  # type: ignore[arg-type]
    )
    tidb = Database.from_settings(Settings(storage_provider="tidb", tidb_host="tidb"))
    assert pg.dialect == "postgresql" and "pw" not in repr(pg) and "db:5432/p8" in pg.safe_url
    assert tidb.dialect == "mysql" and "tidb:4000/public" in tidb.safe_url
