"""The dreaming worker: data collection, direct mode, batch submit → completion, the CLI.

The database is real (SQLite; the batch life cycle also on PostgreSQL and MariaDB) and the LLM
is the local Anthropic-speaking server, batches included. The tenant's data is the corpus'
dreaming sample (voice memos, documents and a chat session).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p8fs.agents.dream import render_resource, render_session
from p8fs.cli.jobs import dreaming as dreaming_cli
from p8fs.database import Database
from p8fs.ids import file_id, resource_id
from p8fs.jobs.dreaming import DreamingLimits, DreamingWorker
from p8fs.models import FileRecord, JobStatus, Resource, Session
from p8fs.tokens import count_tokens
from tests.fixtures.llm import FakeLLMServer, RecordedRequest
from tests.fixtures.servers import REPO_ROOT, corpus_path

DREAMING = "p8fs_sample_data/dreaming"
T0 = datetime(2025, 1, 5, 8, 0, tzinfo=UTC)


async def load_corpus_tenant(db: Database, tenant_id: str) -> dict[str, str]:
    """The dreaming sample as one tenant's data: each document a file with one resource."""
    root = corpus_path(DREAMING)
    contents: dict[str, str] = {}
    for i, path in enumerate(sorted((root / "resources").rglob("*.md"))):
        text = path.read_text(encoding="utf-8")
        uri = f"s3://{tenant_id}/{path.relative_to(root).as_posix()}"
        fid = file_id(tenant_id, uri)
        created = T0 + timedelta(hours=i)
        await db.store_file(
            FileRecord(
                id=fid, tenant_id=tenant_id, uri=uri, name=path.name, mime_type="text/markdown"
            ),
            [
                Resource(
                    id=resource_id(fid, 0),
                    tenant_id=tenant_id,
                    file_id=fid,
                    name=path.stem,
                    content=text,
                    ordinal=0,
                    uri=uri,
                    created_at=created,
                )
            ],
        )
        contents[path.stem] = text
    chat = json.loads((root / "sessions" / "chat_project_alpha_discussion.json").read_text())
    await db.upsert_session(
        Session(
            tenant_id=tenant_id,
            name=chat["session_id"],
            messages=[{"role": m["role"], "content": m["content"]} for m in chat["messages"]],
            created_at=datetime.fromisoformat(chat["created_at"].replace("Z", "+00:00")),
        )
    )
    return contents


def dream_from_request(request: RecordedRequest) -> dict[str, Any]:
    """A plausible analysis built from what the request really contains."""
    text = request.user_text
    user = re.search(r"# Data of user (\S+)", text)
    goals = []
    if "Project Alpha" in text:
        goals.append(
            {"goal": "Launch Project Alpha in Q1", "category": "career", "priority": "high"}
        )
    if "microservices" in text.lower():
        goals.append(
            {"goal": "Plan the microservices migration", "category": "career", "priority": "medium"}
        )
    return {
        "user_id": user.group(1) if user else "",
        "executive_summary": "Focused on Project Alpha and the Acme contract.",
        "key_themes": ["project-alpha", "acme-contract"],
        "goals": goals,
        "dreams": [
            {"dream": "Lead a platform team", "category": "career", "timeline": "long-term"}
        ],
        "fears": [{"fear": "Missing the 99.9% SLA", "intensity": "high"}]
        if "99.9%" in text
        else [],
        "pending_tasks": [{"task": "Review the Acme contract SLA", "priority": "high"}],
        "metrics": {
            "total_documents_analyzed": 99,
            "confidence_score": 0.8,
            "data_completeness": 0.9,
        },
    }


async def test_collect_user_data_limits_newest_first(sqlite_database: Database) -> None:
    tenant = "tenant-limits"
    for i in range(5):
        await sqlite_database.upsert_session(
            Session(
                tenant_id=tenant,
                name=f"s{i}",
                messages=[{"role": "user", "content": f"hello {i}"}],
                created_at=T0 + timedelta(days=i),
            )
        )
    uri = f"s3://{tenant}/notes.md"
    fid = file_id(tenant, uri)
    await sqlite_database.store_file(
        FileRecord(id=fid, tenant_id=tenant, uri=uri),
        [
            Resource(
                id=resource_id(fid, i),
                tenant_id=tenant,
                file_id=fid,
                name=f"notes_chunk_{i}",
                content=f"note {i} " + "word " * 200,
                ordinal=i,
                uri=uri,
                created_at=T0 + timedelta(days=i, hours=1),
            )
            for i in range(8)
        ],
    )
    worker = DreamingWorker(sqlite_database, limits=DreamingLimits(max_sessions=3, max_resources=4))
    data = await worker.collect_user_data(tenant)
    assert [s.name for s in data.sessions] == ["s4", "s3", "s2"]
    assert [r.name for r in data.resources] == [f"notes_chunk_{i}" for i in (7, 6, 5, 4)]
    assert data.resources[0].content == "note 7 " + "word " * 200  # whole, not a sample

    # A budget for two resources and the (small) sessions keeps the newest items, skips the
    # older resources that no longer fit, and counts them.
    def cost(text: str) -> int:
        return count_tokens(text) + 2

    budget = sum(cost(render_resource(r)) for r in data.resources[:2])
    budget += sum(cost(render_session(s)) for s in data.sessions)
    small = await worker.collect_user_data(tenant, token_budget=budget + 5)
    assert [r.name for r in small.resources] == ["notes_chunk_7", "notes_chunk_6"]
    assert small.resources_skipped == 2
    assert small.token_count <= budget + 5
    assert [s.name for s in small.sessions] == ["s4", "s3", "s2"]  # small, newest, they fit


async def test_process_direct_stores_a_completed_job(
    llm_server: FakeLLMServer, sqlite_database: Database
) -> None:
    contents = await load_corpus_tenant(sqlite_database, "tenant-test")
    llm_server.responder = dream_from_request
    worker = DreamingWorker(sqlite_database)

    data = await worker.collect_user_data("tenant-test")
    assert len(data.sessions) == 1 and len(data.resources) == len(contents) == 6

    job = await worker.process_direct("tenant-test")

    assert job.status == JobStatus.COMPLETED
    assert job.result is not None
    assert [g["goal"] for g in job.result["goals"]] == [
        "Launch Project Alpha in Q1",
        "Plan the microservices migration",
    ]
    assert job.result["user_id"] == "tenant-test"
    assert job.result["metrics"]["total_documents_analyzed"] == 7  # counted, not the model's 99
    stored = await sqlite_database.get_job("tenant-test", job.id)
    assert stored is not None and stored.status == JobStatus.COMPLETED
    assert stored.result == job.result
    # The prompt held every document in full and the chat session.
    [request] = llm_server.message_requests()
    for text in contents.values():
        assert text.strip().splitlines()[-1] in request.user_text
    assert "Can you summarize the Project Alpha API specification?" in request.user_text


async def test_invalid_output_fails_the_job_with_an_errors_row(
    llm_server: FakeLLMServer, sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await load_corpus_tenant(sqlite_database, "tenant-bad")
    monkeypatch.setenv("P8FS_LLM_MAX_RETRIES", "1")
    llm_server.responder = lambda request: {
        "goals": [{"goal": "x", "category": "y", "priority": "urgent!!"}]
    }

    job = await DreamingWorker(sqlite_database).process_direct("tenant-bad")

    assert job.status == JobStatus.FAILED
    assert job.error and "priority" in job.error
    assert len(llm_server.message_requests()) == 2
    [error] = await sqlite_database.list_errors("tenant-bad")
    assert error.metadata["code"] == "agent_output"
    assert error.metadata["job_id"] == job.id
    assert error.process == "dreaming-worker"


async def test_tenant_without_data_fails_clearly(
    llm_server: FakeLLMServer, sqlite_database: Database
) -> None:
    job = await DreamingWorker(sqlite_database).process_direct("nobody")
    assert job.status == JobStatus.FAILED
    assert "no sessions or resources" in (job.error or "")
    assert llm_server.message_requests() == []


async def test_batch_submit_then_completion_idempotent(
    llm_server: FakeLLMServer, database: Database
) -> None:
    await load_corpus_tenant(database, "tenant-a")
    await load_corpus_tenant(database, "tenant-b")
    llm_server.responder = dream_from_request
    worker = DreamingWorker(database)

    jobs = await worker.process_batch(["tenant-a", "tenant-b"])

    assert [j.status for j in jobs] == [JobStatus.SUBMITTED, JobStatus.SUBMITTED]
    [create] = [r for r in llm_server.requests if r.path == "/v1/messages/batches"]
    assert create.body is not None
    batch_requests = create.body["requests"]
    assert len(batch_requests) == 2
    from p8fs.agents import DreamModel

    for item, job in zip(batch_requests, jobs, strict=True):
        params = item["params"]
        assert params["tools"][0]["input_schema"] == DreamModel.model_json_schema()
        assert params["tool_choice"]["name"] == "DreamModel"
        assert params["system"] == DreamModel.system_prompt()
        assert [item["custom_id"]] == job.payload["custom_ids"]
    batch_id = jobs[0].payload["batch_id"]
    assert batch_id.startswith("msgbatch_") and jobs[1].payload["batch_id"] == batch_id
    stored = await database.list_jobs(job_type="dreaming", status=JobStatus.SUBMITTED)
    assert {j.tenant_id for j in stored} == {"tenant-a", "tenant-b"}

    # Not finished yet: completion leaves the jobs submitted.
    assert await worker.process_completion() == []
    assert len(await database.list_jobs(job_type="dreaming", status=JobStatus.SUBMITTED)) == 2

    llm_server.end_batches()
    changed = await worker.process_completion()
    assert sorted(j.tenant_id for j in changed) == ["tenant-a", "tenant-b"]
    for job in changed:
        assert job.status == JobStatus.COMPLETED
        stored_job = await database.get_job(job.tenant_id, job.id)
        assert stored_job is not None and stored_job.status == JobStatus.COMPLETED
        assert stored_job.result is not None
        assert stored_job.result["goals"][0]["goal"] == "Launch Project Alpha in Q1"
        assert stored_job.result["user_id"] == job.tenant_id

    before = {j.id: j.model_dump() for j in await database.list_jobs(job_type="dreaming")}
    requests_before = len(llm_server.requests)
    assert await worker.process_completion() == []
    after = {j.id: j.model_dump() for j in await database.list_jobs(job_type="dreaming")}
    assert after == before
    assert len(llm_server.requests) == requests_before  # nothing left to ask about


async def test_large_tenant_batched_in_parts_merged_on_completion(
    llm_server: FakeLLMServer, sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant whose data exceeds one call: several requests in the batch (every document in
    exactly one), merged on completion like a direct run, with the one summary call."""
    contents = await load_corpus_tenant(sqlite_database, "tenant-big")
    from p8fs.agents import DreamModel
    from p8fs.agents.config import resolve_llm
    from p8fs.agents.runtime import prompt_overhead

    biggest = max(count_tokens(text) for text in contents.values())
    overhead = prompt_overhead(DreamModel, None, resolve_llm()) + 100
    monkeypatch.setenv("P8FS_LLM_CONTEXT_TOKENS", str(overhead + biggest + 200))

    def reply(request: RecordedRequest) -> dict[str, Any]:
        if request.forced_tool == "ExecutiveSummary":
            goals = re.findall(r"goal: (.*)", request.user_text)
            return {"executive_summary": f"FINAL over {len(goals)} goals", "key_themes": ["x"]}
        return dream_from_request(request)

    llm_server.responder = reply
    worker = DreamingWorker(sqlite_database, limits=DreamingLimits(token_budget=1_000_000))
    [job] = await worker.process_batch(["tenant-big"])
    assert job.status == JobStatus.SUBMITTED, job.error
    [create] = [r for r in llm_server.requests if r.path == "/v1/messages/batches"]
    assert create.body is not None
    items = create.body["requests"]
    assert len(items) == job.payload["parts"] > 1
    assert [i["custom_id"] for i in items] == job.payload["custom_ids"]
    texts = [i["params"]["messages"][0]["content"] for i in items]
    for name in contents:
        assert sum(f"## Document {name} " in t for t in texts) == 1, name
    assert all(f"of {len(items)} of the input" in t for t in texts)

    llm_server.end_batches()
    [done] = await worker.process_completion()
    assert done.status == JobStatus.COMPLETED, done.error
    assert done.result is not None
    # Merged like a direct run: goals unioned over the parts, one final summary call made
    # directly (not batched), document count the input's.
    summaries = [r for r in llm_server.message_requests() if r.forced_tool == "ExecutiveSummary"]
    assert len(summaries) == 1
    goals = [g["goal"] for g in done.result["goals"]]
    assert len(goals) == len(set(goals)) and "Launch Project Alpha in Q1" in goals
    assert done.result["executive_summary"].startswith("FINAL over")
    assert done.result["user_id"] == "tenant-big"
    assert done.result["metrics"]["total_documents_analyzed"] == len(contents) + 1
    assert await worker.process_completion() == []


async def test_batch_refused_on_a_server_without_batches(
    llm_server: FakeLLMServer, sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-hosted server whose /v1/batches is 404 (llama.cpp, Ollama): a clear refusal
    before any data is collected or any job written."""
    await load_corpus_tenant(sqlite_database, "tenant-local")
    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/nobatches/v1")
    worker = DreamingWorker(sqlite_database, model="local-model")
    from p8fs.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        await worker.process_batch(["tenant-local"])
    assert "no Batches API" in str(info.value) and "--mode direct" in str(info.value)
    assert await sqlite_database.list_jobs(tenant_id="tenant-local") == []


async def test_batch_result_that_does_not_validate_fails_that_job(
    llm_server: FakeLLMServer, sqlite_database: Database
) -> None:
    await load_corpus_tenant(sqlite_database, "tenant-ok")
    await load_corpus_tenant(sqlite_database, "tenant-broken")

    def reply(request: RecordedRequest) -> dict[str, Any]:
        out = dream_from_request(request)
        if "tenant-broken" in request.user_text:
            out["dreams"] = [{"dream": "x", "category": "y", "timeline": "someday-maybe"}]
        return out

    llm_server.responder = reply
    worker = DreamingWorker(sqlite_database)
    await worker.process_batch(["tenant-ok", "tenant-broken"])
    llm_server.end_batches()
    changed = {j.tenant_id: j for j in await worker.process_completion()}
    assert changed["tenant-ok"].status == JobStatus.COMPLETED
    assert changed["tenant-broken"].status == JobStatus.FAILED
    assert "timeline" in (changed["tenant-broken"].error or "")
    [error] = await sqlite_database.list_errors("tenant-broken")
    assert error.metadata["batch_id"] == changed["tenant-broken"].payload["batch_id"]
    assert await sqlite_database.list_errors("tenant-ok") == []


def test_cli_batch_then_completion(
    llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.db import run_async

    url = f"sqlite+aiosqlite:///{tmp_path / 'p8fs.db'}"
    monkeypatch.setenv("P8FS_DATABASE_URL", url)

    async def seed() -> None:
        async with Database(url) as db:
            await db.init_schema()
            await load_corpus_tenant(db, "test-tenant")

    run_async(seed)
    llm_server.responder = dream_from_request
    runner = CliRunner()
    submitted = runner.invoke(
        dreaming_cli, ["process", "--mode", "batch", "--tenant-id", "test-tenant"]
    )
    assert submitted.exit_code == 0, submitted.output
    assert re.search(r"test-tenant: SUBMITTED job \S+ batch msgbatch_", submitted.output)
    llm_server.end_batches()
    done = runner.invoke(dreaming_cli, ["process", "--completion"])
    assert done.exit_code == 0, done.output
    assert "test-tenant: COMPLETED" in done.output and "(2 goals)" in done.output
    again = runner.invoke(dreaming_cli, ["process", "--completion"])
    assert again.exit_code == 0 and "no finished batches to collect" in again.output


def test_python_m_dreaming_direct(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """The seed's exact command line."""
    from tests.fixtures.db import run_async

    url = f"sqlite+aiosqlite:///{tmp_path / 'p8fs.db'}"

    async def seed() -> None:
        async with Database(url) as db:
            await db.init_schema()
            await load_corpus_tenant(db, "test-tenant")

    run_async(seed)
    llm_server.responder = dream_from_request
    env = {**os.environ, "P8FS_DATABASE_URL": url}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "p8fs.workers.dreaming",
            "process",
            "--mode",
            "direct",
            "--tenant-id",
            "test-tenant",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"test-tenant: COMPLETED job \S+ \(2 goals\)", proc.stdout)

    async def check() -> list[Any]:
        async with Database(url) as db:
            return await db.list_jobs(tenant_id="test-tenant", status=JobStatus.COMPLETED)

    [job] = run_async(check)
    assert job.result["goals"][0]["priority"] == "high"


async def test_openai_model_goes_through_openai_batch_api(
    llm_server: FakeLLMServer, sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenAI model: JSONL uploaded to /v1/files, /v1/batches, output file read back."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.url + "/v1")
    await load_corpus_tenant(sqlite_database, "tenant-oa")
    llm_server.responder = dream_from_request
    worker = DreamingWorker(sqlite_database, model="openai/gpt-4o-mini")

    [job] = await worker.process_batch(["tenant-oa"])

    assert job.status == JobStatus.SUBMITTED
    assert job.payload["provider"] == "openai" and job.payload["batch_id"].startswith("batch_")
    [upload] = [r for r in llm_server.requests if r.path == "/v1/files"]
    [line] = [
        json.loads(x) for x in upload.raw.decode().split("\r\n") if x.startswith('{"custom_id"')
    ]
    assert [line["custom_id"]] == job.payload["custom_ids"]
    assert line["body"]["model"] == "gpt-4o-mini"
    assert line["body"]["tool_choice"]["function"]["name"] == "DreamModel"
    from p8fs.agents import DreamModel

    assert line["body"]["tools"][0]["function"]["parameters"] == DreamModel.model_json_schema()

    assert await worker.process_completion() == []  # still in progress
    llm_server.end_batches()
    [done] = await worker.process_completion()
    assert done.status == JobStatus.COMPLETED
    assert (
        done.result is not None and done.result["goals"][0]["goal"] == "Launch Project Alpha in Q1"
    )
    assert await worker.process_completion() == []
