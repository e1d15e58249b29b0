"""Real failures of real servers become the typed errors a queue worker settles by.

A deadlock or a dropped connection must come out as ``TransientError`` (retry) or heal by itself;
a database without the schema, or one that does not exist, as ``ConfigurationError`` naming what
to fix (retrying would never help).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from p8fs.database import Database
from p8fs.database.errors import classify
from p8fs.errors import ConfigurationError, TransientError
from tests.fixtures.db import server_url

ALL_KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]
SERVER_KINDS = ALL_KINDS[1:]


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_missing_schema_is_a_configuration_error(
    kind: str, database_url_for: Callable[[str], str]
) -> None:
    async with Database(database_url_for(kind)) as db:
        with pytest.raises(ConfigurationError, match="p8fs db init"):
            await db.get_file("t", "f")


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_unknown_database_is_a_configuration_error(
    kind: str, database_url_for: Callable[[str], str]
) -> None:
    database_url_for(kind)  # skips (or fails in CI) when the server is down
    url = server_url(kind).set(database="p8fs_no_such_database")
    async with Database(url.render_as_string(hide_password=False)) as db:
        with pytest.raises(ConfigurationError, match="P8FS_DATABASE_URL"):
            await db.count("files")


async def _deadlock(url: str) -> BaseException:
    """Make the server detect a real deadlock between two transactions; return its error."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as setup:
            await setup.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY, v INTEGER)"))
            await setup.execute(text("INSERT INTO probe (id, v) VALUES (1, 0), (2, 0)"))
        first, second = await engine.connect(), await engine.connect()
        try:
            await first.begin()
            await second.begin()
            await first.execute(text("UPDATE probe SET v = 1 WHERE id = 1"))
            await second.execute(text("UPDATE probe SET v = 2 WHERE id = 2"))

            async def cross(conn: AsyncConnection, row: int) -> None:
                await conn.execute(text(f"UPDATE probe SET v = 3 WHERE id = {row}"))

            waiting = asyncio.create_task(cross(first, 2))  # blocks on second's row lock
            await asyncio.sleep(0.3)
            outcomes = await asyncio.gather(waiting, cross(second, 1), return_exceptions=True)
        finally:
            for conn in (first, second):
                try:
                    await conn.rollback()
                finally:
                    await conn.close()
    finally:
        await engine.dispose()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1, outcomes
    return errors[0]


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_real_deadlock_is_transient(
    kind: str, database_url_for: Callable[[str], str]
) -> None:
    url = database_url_for(kind)
    error = await _deadlock(url)
    assert isinstance(error, sa_exc.DBAPIError)
    typed = classify(error, url)
    assert isinstance(typed, TransientError), (error, typed)
    assert "deadlock" in str(typed).lower()


async def _kill_other_connections(url: str, kind: str) -> int:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if kind == "postgresql":
                result = await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                return len(result.all())
            ids = (
                await conn.execute(
                    text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                    )
                )
            ).scalars()
            killed = 0
            for connection_id in list(ids):
                await conn.execute(text(f"KILL {int(connection_id)}"))
                killed += 1
            return killed
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_pool_survives_killed_connections(
    kind: str, database_url_for: Callable[[str], str]
) -> None:
    """A server restart kills pooled connections; the next call reconnects (pre-ping)."""
    url = database_url_for(kind)
    async with Database(url) as db:
        await db.init_schema()
        assert await db.count("files") == 0  # leaves a connection in the pool
        assert await _kill_other_connections(url, kind) >= 1
        assert await db.count("files") == 0


def test_classify_leaves_foreign_errors_alone() -> None:
    url = make_url("sqlite+aiosqlite:///x.db")
    assert classify(ValueError("bug"), url) is None
    assert isinstance(classify(ConnectionResetError("reset"), url), TransientError)
