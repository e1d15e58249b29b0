"""``p8fs db`` and the seed's ``python -m p8fs.models.p8`` against real databases."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from p8fs.cli import main
from p8fs.cli.db import models_p8 as seed_main
from p8fs.database import TABLE_NAMES, Database, plan_ddl
from tests.fixtures.db import server_url
from tests.fixtures.servers import free_port, server_missing

KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


def _tables(url: str) -> list[str]:
    async def _list() -> list[str]:
        async with Database(url) as db:
            return await db.existing_tables()

    return asyncio.run(_list())


@pytest.mark.parametrize("kind", KINDS)
def test_db_init_is_idempotent_and_says_what_it_did(
    kind: str, database_url_for: Callable[[str], str]
) -> None:
    url = database_url_for(kind)
    runner = CliRunner()
    first = runner.invoke(main, ["db", "init"], env={"P8FS_DATABASE_URL": url})
    assert first.exit_code == 0, first.output
    assert f"created tables: {', '.join(TABLE_NAMES)}" in first.output
    assert "already present: none" in first.output
    assert _tables(url) == list(TABLE_NAMES)

    second = runner.invoke(main, ["db", "init"], env={"P8FS_DATABASE_URL": url})
    assert second.exit_code == 0, second.output
    assert "created tables: none" in second.output
    assert f"already present: {', '.join(TABLE_NAMES)}" in second.output

    status = runner.invoke(main, ["db", "status"], env={"P8FS_DATABASE_URL": url})
    assert status.exit_code == 0, status.output
    assert "files      0" in status.output


def test_db_init_reports_an_unreachable_server_without_the_password() -> None:
    url = f"postgresql+asyncpg://postgres:hunter2@127.0.0.1:{free_port()}/test"
    result = CliRunner().invoke(main, ["db", "init", "--database-url", url])
    assert result.exit_code == 1
    assert "unreachable" in result.output and "***" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_db_init_refuses_a_provider_contradicting_the_url(tmp_path: object) -> None:
    result = CliRunner().invoke(
        main,
        ["db", "init", "--provider", "postgresql"],
        env={"P8FS_DATABASE_URL": "sqlite+aiosqlite:///x.db"},
    )
    assert result.exit_code == 2
    assert "contradicts P8FS_DATABASE_URL" in result.output


def test_db_plan_prints_the_dialect() -> None:
    result = CliRunner().invoke(main, ["db", "plan", "--provider", "postgresql"])
    assert result.exit_code == 0
    assert "TIMESTAMP WITH TIME ZONE" in result.output


def _seed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p8fs.models.p8", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_seed_command_prints_the_tidb_plan() -> None:
    done = _seed("--provider", "tidb", "--plan")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("CREATE TABLE IF NOT EXISTS") == len(TABLE_NAMES)
    assert "utf8mb4_bin" in done.stdout


def test_seed_command_applies_the_schema(database_url_for: Callable[[str], str]) -> None:
    url = database_url_for("sqlite")
    done = CliRunner().invoke(seed_main, ["--provider", "sqlite"], env={"P8FS_DATABASE_URL": url})
    assert done.exit_code == 0, done.output
    assert "created tables: files" in done.output
    assert _tables(url) == list(TABLE_NAMES)


@pytest.mark.mariadb
def test_tidb_plan_piped_into_the_mysql_client_twice(
    database_url_for: Callable[[str], str],
) -> None:
    """The seed's workflow: ``--plan > tidb_models.sql; mysql db < tidb_models.sql`` (twice)."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        server_missing("the mysql/mariadb command-line client")
    url = make_url(database_url_for("mariadb"))
    admin = server_url("mariadb")
    ddl = plan_ddl("tidb")
    command = [
        str(client),
        f"--host={admin.host}",
        f"--port={admin.port or 3306}",
        f"--user={admin.username}",
        str(url.database),
    ]
    env = {**os.environ, "MYSQL_PWD": admin.password or ""}
    for _ in range(2):
        done = subprocess.run(
            command, input=ddl, capture_output=True, text=True, env=env, check=False
        )
        assert done.returncode == 0, done.stderr
    assert _tables(url.render_as_string(hide_password=False)) == list(TABLE_NAMES)


@pytest.mark.postgresql
def test_postgresql_plan_piped_into_psql_twice(database_url_for: Callable[[str], str]) -> None:
    client = shutil.which("psql")
    if client is None:
        server_missing("the psql command-line client")
    url = make_url(database_url_for("postgresql"))
    ddl = plan_ddl("postgresql")
    command = [
        client,
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        f"--host={url.host}",
        f"--port={url.port or 5432}",
        f"--username={url.username}",
        str(url.database),
    ]
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    for _ in range(2):
        done = subprocess.run(
            command, input=ddl, capture_output=True, text=True, env=env, check=False
        )
        assert done.returncode == 0, done.stderr
    assert _tables(url.render_as_string(hide_password=False)) == list(TABLE_NAMES)
