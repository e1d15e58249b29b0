"""The moment worker: ingested transcripts (real pipeline, real SQLite) → stored moments.

Corpus transcripts are ingested by the real pipeline with small chunks (so each file is several
overlapping resources), then one worker run turns every transcript among the tenant's files into
moments — the corpus' invalid-JSON transcript fails alone with an ``errors`` row, a Markdown
note is not a transcript and is left alone, and a second run updates the same rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p8fs.cli.jobs import moments as moments_cli
from p8fs.database import Database
from p8fs.jobs.moments import MomentWorker, file_text
from p8fs.pipeline import aingest
from p8fs.settings import Settings
from tests.fixtures.llm import FakeLLMServer, RecordedRequest, corpus_moment_reply
from tests.fixtures.servers import corpus_path

SAMPLES = "transcripts/p8fs_moment_samples"
CASES = [
    "tenant_1/transcript_2025-01-13T09-00-00Z",
    "tenant_1/transcript_2025-01-13T14-30-00Z",
    "tenant_2/transcript_2025-01-14T18-00-00Z",
    "tenant_4/transcript_2025-01-13T07-30-00Z",
]
BROKEN = "tenant_2/transcript_2025-01-15T20-00-00Z"


@pytest.fixture
def expected_by_transcript() -> dict[str, dict[str, Any]]:
    root = corpus_path(SAMPLES)
    out = {}
    for case in CASES:
        data = json.loads((root / f"{case}_input.json").read_text())
        out[data["transcript_id"]] = json.loads((root / f"{case}_expected_moment.json").read_text())
    return out


def answer(table: dict[str, dict[str, Any]]) -> Any:
    def respond(request: RecordedRequest) -> dict[str, Any]:
        match = re.search(r"^transcript_id: (\S+)$", request.user_text, re.MULTILINE)
        assert match
        return corpus_moment_reply(table[match.group(1)])

    return respond


async def test_ingested_transcripts_to_moments(
    llm_server: FakeLLMServer, sqlite_database: Database, expected_by_transcript, tmp_path: Path
) -> None:
    root = corpus_path(SAMPLES)
    settings = Settings(chunk_tokens=256, chunk_overlap=32, data_dir=tmp_path)
    tenant = "tenant-moments"
    for case in [*CASES, BROKEN]:
        await aingest(
            str(root / f"{case}_input.json"), tenant, database=sqlite_database, settings=settings
        )
    note = tmp_path / "note.md"
    note.write_text("# Groceries\n\nMilk, eggs.\n")
    await aingest(str(note), tenant, database=sqlite_database, settings=settings)

    # The worker re-joins each file's overlapping chunks into exactly the file's text.
    files = {f.name: f for f in await sqlite_database.list_files(tenant)}
    first = root / f"{CASES[0]}_input.json"
    resources = await sqlite_database.list_resources(tenant, file_id=files[first.name].id)
    assert len(resources) > 1
    assert file_text(resources) == first.read_text(encoding="utf-8")

    llm_server.responder = answer(expected_by_transcript)
    worker = MomentWorker(sqlite_database)
    run = await worker.process_files(tenant)

    assert len(run.stored) == len(CASES) and run.moments == len(CASES)
    assert len(llm_server.message_requests()) == len(CASES)
    [(broken_uri, message)] = run.failures.items()
    assert broken_uri.endswith(f"{Path(BROKEN).name}_input.json")
    assert "invalid JSON at line 78 column 20" in message
    [error] = await sqlite_database.list_errors(tenant)
    assert error.process == "moment-worker" and error.metadata["code"] == "invalid_input"

    stored = await sqlite_database.list_moments(tenant)
    assert len(stored) == len(CASES)
    by_name = {m.name: m for m in stored}
    for expected in expected_by_transcript.values():
        moment = by_name[expected["name"]]
        assert moment.moment_type == expected["moment_type"]
        assert moment.topic_tags == expected["topic_tags"]
        assert [p.fingerprint_id for p in moment.present_persons] == [
            p["id"] for p in expected["present_persons"]
        ]
        assert moment.source_resource_id is not None
    assert [m.resource_timestamp for m in stored] == sorted(m.resource_timestamp for m in stored)

    # Again: the same rows are updated, none added.
    ids = {m.id for m in stored}
    await worker.process_files(tenant)
    assert {m.id for m in await sqlite_database.list_moments(tenant)} == ids


def test_cli_processes_many_files(
    llm_server: FakeLLMServer,
    expected_by_transcript,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("P8FS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'p8fs.db'}")
    llm_server.responder = answer(expected_by_transcript)
    root = corpus_path(SAMPLES)
    args = ["process", "--tenant-id", "t1"]
    for case in CASES:
        args += ["--file", str(root / f"{case}_input.json")]
    result = CliRunner().invoke(moments_cli, args)
    assert result.exit_code == 0, result.output
    assert f"{len(CASES)} moment(s) from {len(CASES)} transcript(s)" in result.output
    assert "[meeting]" in result.output

    with_broken = CliRunner().invoke(
        moments_cli, [*args[:3], "--file", str(root / f"{BROKEN}_input.json")]
    )
    assert with_broken.exit_code == 1
    assert "line 78 column 20" in with_broken.output


def _moment(name: str, start: str, end: str) -> dict[str, Any]:
    return {
        "name": name,
        "content": f"{name}.",
        "resource_timestamp": start,
        "resource_ends_timestamp": end,
        "moment_type": "meeting",
    }


async def test_fewer_moments_on_reprocessing_replace_the_old_rows(
    llm_server: FakeLLMServer, database: Database, tmp_path: Path
) -> None:
    """A transcript processed again that now yields one moment instead of three keeps one row;
    another transcript's moments are untouched (SQLite, PostgreSQL, MariaDB)."""

    def transcript(tid: str) -> dict[str, Any]:
        return {
            "transcript_id": tid,
            "source_uri": f"s3://rec/{tid}.wav",
            "start_timestamp": "2025-01-13T09:00:00Z",
            "end_timestamp": "2025-01-13T10:00:00Z",
            "segments": [{"timestamp": "2025-01-13T09:00:00Z", "speaker_id": "s", "text": "Hi."}],
        }

    three = {
        "moments": [
            _moment("A", "2025-01-13T09:00:00Z", "2025-01-13T09:20:00Z"),
            _moment("B", "2025-01-13T09:20:00Z", "2025-01-13T09:40:00Z"),
            _moment("C", "2025-01-13T09:40:00Z", "2025-01-13T10:00:00Z"),
        ],
        "analysis_summary": "Three.",
    }
    one = {
        "moments": [_moment("All", "2025-01-13T09:00:00Z", "2025-01-13T10:00:00Z")],
        "analysis_summary": "One.",
    }
    worker = MomentWorker(database)
    llm_server.replies.extend([three, three])
    await worker.process_many("t", {"a.json": transcript("a"), "b.json": transcript("b")})
    assert len(await database.list_moments("t")) == 6

    llm_server.replies.append(one)
    run = await worker.process_many("t", {"a.json": transcript("a")})
    assert run.moments == 1
    stored = await database.list_moments("t")
    by_uri: dict[str | None, list[str]] = {}
    for m in stored:
        by_uri.setdefault(m.uri, []).append(m.name)
    assert by_uri == {"s3://rec/a.wav": ["All"], "s3://rec/b.wav": ["A", "B", "C"]}

    # The database method on its own: an empty set empties the source, nothing else.
    assert await database.replace_moments("t", [], uri="s3://rec/b.wav") == 3
    assert [m.name for m in await database.list_moments("t")] == ["All"]
    with pytest.raises(ValueError):
        await database.replace_moments("t", [])
