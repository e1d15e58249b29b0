"""Group commit: concurrent writes share SQLite transactions, yet each caller's rows are
committed before it returns, and one bad write fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event

from p8fs import ids
from p8fs.database import Database
from p8fs.models import FileRecord, Job, JobStatus, Resource


def _file(tenant: str, n: int, chunks: int = 3, bad: bool = False) -> tuple[FileRecord, list[Resource]]:
    uri = f"/data/f{n}.txt"
    fid = ids.file_id(tenant, uri)
    record = FileRecord(id=fid, tenant_id=tenant, uri=uri, name=f"f{n}.txt", chunk_count=chunks)
    resources = [
        Resource(id=ids.resource_id(fid, i), tenant_id="intruder" if bad and i == 1 else tenant,
                 file_id=fid, name=f"f{n}_chunk_{i}", content=f"text {n}/{i}", ordinal=i, uri=f"{uri}#chunk_{i}")
        for i in range(chunks)
    ]
    return record, resources


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    await db.init_schema()
    yield db  # type: ignore[misc]
    await db.dispose()


async def test_concurrent_stores_share_commits_and_all_land(sqlite_db: Database) -> None:
    assert sqlite_db.group_commit
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    assert sqlite_db.sqlite_engine is not None, "a SQLite file runs on the sqlite3 driver in threads"
    event.listen(sqlite_db.sqlite_engine, "commit", count)
    files = [_file("t", n) for n in range(40)]
    await asyncio.gather(*(sqlite_db.store_file_stream(f, r) for f, r in files))
    assert await sqlite_db.count("files", "t") == 40
    assert await sqlite_db.count("resources", "t") == 120
    assert commits < 40, f"{commits} commits for 40 concurrent stores: nothing was grouped"


async def test_one_bad_write_fails_alone(sqlite_db: Database) -> None:
    good = [_file("t", n) for n in range(6)]
    bad = _file("t", 99, bad=True)
    results = await asyncio.gather(
        *(sqlite_db.store_file_stream(f, r) for f, r in [*good[:3], bad, *good[3:]]),
        return_exceptions=True,
    )
    assert isinstance(results[3], Exception)
    assert all(isinstance(r, FileRecord) for i, r in enumerate(results) if i != 3)
    assert await sqlite_db.count("files", "t") == 6
    assert await sqlite_db.get_file("t", bad[0].id) is None


async def test_a_job_commits_with_the_file(sqlite_db: Database) -> None:
    record, resources = _file("t", 1)
    job = Job(tenant_id="t", job_type="file_processing", status=JobStatus.RUNNING)

    def done(stored: FileRecord) -> Job:
        job.status = JobStatus.DONE
        job.result = {"chunks": stored.chunk_count}
        return job

    await sqlite_db.store_file_stream(record, resources, job=done)
    stored = await sqlite_db.get_job("t", job.id)
    assert stored is not None and stored.status == JobStatus.DONE and stored.result == {"chunks": 3}


async def test_group_commit_is_off_for_server_databases() -> None:
    assert not Database("postgresql+asyncpg://u@127.0.0.1:1/x").group_commit
    assert not Database("mysql+aiomysql://u@127.0.0.1:1/x").group_commit
    assert Database("postgresql+asyncpg://u@127.0.0.1:1/x", group_commit=True).group_commit
