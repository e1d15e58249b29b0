"""``p8fs process``: files and folders in, rows and a summary out, exit status tells failures."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.servers import CORPUS_DIR, corpus_path


def run_process(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "P8FS_DATA_DIR": str(data_dir), "COLUMNS": "200", **(env or {})}
    environment.pop("P8FS_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "p8fs.cli", "process", *args],
        capture_output=True, text=True, env=environment, timeout=600,
    )


def rows(data_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "p8fs.db") as conn:
        return conn.execute(sql).fetchall()


def test_good_files_exit_zero_then_unchanged_then_forced(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\n" + "alpha " * 1500)
    (docs / "sub" / "b.txt").write_text("beta " * 50)
    (docs / ".hidden").write_text("never read")
    data = tmp_path / "data"

    first = run_process(str(docs), "--tenant-id", "t1", data_dir=data)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "summary" in first.stdout and "stored" in first.stdout
    assert rows(data, "SELECT name, tenant_id FROM files ORDER BY name") == [("a.md", "t1"), ("b.txt", "t1")]
    chunks = rows(data, "SELECT count(*) FROM resources")[0][0]
    assert chunks >= 3

    again = run_process(str(docs), "--tenant-id", "t1", data_dir=data)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert rows(data, "SELECT count(*) FROM resources")[0][0] == chunks

    forced = run_process(str(docs), "--tenant-id", "t1", "--force", "--no-show-files", data_dir=data)
    assert forced.returncode == 0
    assert rows(data, "SELECT count(*) FROM resources")[0][0] == chunks


def test_a_failure_is_an_errors_row_and_a_nonzero_exit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    encrypted = corpus_path("pdf/spf_libreoffice-writer-password.pdf")
    result = run_process(str(encrypted), data_dir=data)
    assert result.returncode == 1
    assert "EncryptedDocument" in result.stdout
    (message,) = rows(data, "SELECT message FROM errors")[0:1][0]
    assert "password" in message

    unlocked = run_process(str(encrypted), "--password", "openpassword", data_dir=data)
    assert unlocked.returncode == 0, unlocked.stdout
    assert rows(data, "SELECT count(*) FROM files")[0][0] == 1


@pytest.mark.timeout(900)
def test_the_whole_corpus_ends_as_resources_or_precise_errors(tmp_path: Path) -> None:
    if not CORPUS_DIR.is_dir():
        pytest.fail(f"corpus missing at {CORPUS_DIR}")
    from tests.node.tiny_whisper import build_tiny_whisper

    model = build_tiny_whisper(tmp_path / "whisper")
    data = tmp_path / "data"
    result = run_process(str(CORPUS_DIR), "--no-show-files", data_dir=data,
                         env={"P8FS_WHISPER_MODEL": str(model)})
    files = [p for p in CORPUS_DIR.rglob("*") if p.is_file() and not p.name.startswith(".")]
    stored = {r[0] for r in rows(data, "SELECT uri FROM files")}
    errors = rows(data, "SELECT message, metadata FROM errors")
    import json

    failed = {json.loads(meta)["uri"]: message for message, meta in errors}
    assert result.returncode == 1, "the corpus holds broken files on purpose: the exit status must say so"
    for path in files:
        uri = str(path.resolve())
        assert (uri in stored) != (uri in failed), f"{path} must end as resources or as one errors row"
    # Precise reasons: a typed error name and the file, never a bare traceback.
    for uri, message in failed.items():
        assert message.split(":", 1)[0] in {
            "EmptyDocument", "CorruptDocument", "EncryptedDocument", "UnsupportedContent", "LimitExceeded",
        }, message
        assert Path(uri).name in message or "password" in message
    assert len(failed) <= 6, failed
