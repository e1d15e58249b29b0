"""Both agents end to end on a real llama.cpp server (SmolLM2-135M-Instruct, 4,096-token window).

What a user who runs a local model does: set ``P8FS_LLM_BASE_URL`` and nothing else (no key, no
window, a bare model name). The server does not report its window, so the first call over a
transcript longer than the window is refused with a context-length error; the agent learns the
window from it, re-plans the transcript into parts that fit with room for the answer, calls
each part with a ``max_tokens`` the window can hold, merges, writes the summary in one final
call, and the worker stores the rows. A 135M model writes poor moments, so the test checks
shapes, bounds, provenance and stored rows, not wording.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from p8fs.agents import DreamModel, MomentBuilder
from p8fs.agents.config import resolve_llm
from p8fs.agents.errors import AgentTruncatedError
from p8fs.agents.limits import facts_for, window_of
from p8fs.agents.moments import MOMENT_TYPES
from p8fs.database import Database
from p8fs.errors import ConfigurationError
from p8fs.jobs.dreaming import DreamingWorker
from p8fs.jobs.moments import MomentWorker
from p8fs.models import JobStatus, Resource, Session
from tests.fixtures.llama_server import LLAMA_N_CTX, LlamaServer, llama_env, llama_server

__all__ = ["llama_env", "llama_server"]  # fixtures used here by name

START = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
TOPICS = [
    "the quarterly budget for the mobile app and which features to cut",
    "hiring a second designer and the interview schedule for next week",
    "a customer complaint about slow sync on old Android phones",
    "moving the weekly standup to Tuesday mornings and keeping it short",
    "the launch checklist, the press release draft and the beta testers",
    "a worry that the backend migration will slip past the end of the month",
]


#: Turns of the long transcript: about 4,300 tokens by SmolLM2's tokenizer, over the window.
SEGMENTS = 50


def long_transcript(segments: int = SEGMENTS) -> dict[str, Any]:
    """A planning meeting of ``segments`` turns, longer than the server's whole window."""
    speakers = [
        {"speaker_id": "s1", "fingerprint_id": "fp_ana", "user_id": "u_ana", "user_label": "Ana"},
        {"speaker_id": "s2", "fingerprint_id": "fp_ben", "user_id": "u_ben", "user_label": "Ben"},
    ]
    segs = []
    for i in range(segments):
        topic = TOPICS[(i // 10) % len(TOPICS)]
        speaker = speakers[i % 2]
        segs.append(
            {
                "timestamp": (START + timedelta(seconds=30 * i)).isoformat().replace("+00:00", "Z"),
                "speaker_id": speaker["speaker_id"],
                "speaker_label": speaker["user_label"],
                "text": f"About {topic}: I think we should decide today, because point {i} "
                "keeps coming back and the team needs a clear answer before Friday, so let us "
                "write down who owns it and what the next step is.",
                "duration_seconds": 28,
            }
        )
    return {
        "transcript_id": "llama_long_meeting",
        "source_uri": "s3://recordings/llama_long_meeting.wav",
        "start_timestamp": START.isoformat().replace("+00:00", "Z"),
        "end_timestamp": (START + timedelta(seconds=30 * segments))
        .isoformat()
        .replace("+00:00", "Z"),
        "segments": segs,
        "speakers": speakers,
        "environment": {"location": "office", "background_sounds": "keyboard"},
    }


def server_tokens(server: LlamaServer, text: str) -> int:
    request = urllib.request.Request(
        server.root_url + "/extras/tokenize/count",
        json.dumps({"input": text}).encode(),
        {"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(json.loads(response.read())["count"])


@pytest.fixture
def small_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short answers and no re-asks: on two shared cores this model evaluates prompts at
    25-100 tokens/s, and a 135M model's re-asks rarely fix what they are asked to (the
    lenient parse and MomentBuilder's time repair keep what is usable instead)."""
    monkeypatch.setenv("P8FS_LLM_MAX_OUTPUT_TOKENS", "300")
    monkeypatch.setenv("P8FS_LLM_MAX_RETRIES", "0")
    # The server's own sampling, not greedy decoding (P8FS_LLM_TEMPERATURE=0): greedy, this
    # 135M model repeats itself until max_tokens on every part, which measures the model.


#: What a run's failure says when an answer was cut off at max_tokens.
CUT_OFF = "stopped before its answer was complete"

#: Each call evaluates a ~3,000-token prompt; under load that takes minutes.
pytestmark = pytest.mark.timeout(1800)


async def test_moments_of_a_transcript_longer_than_the_window(
    llama_env: LlamaServer, small_answers: None, sqlite_database: Database
) -> None:
    data = long_transcript()
    agent_input = MomentBuilder.prepare_input(data)
    config = resolve_llm("smollm2")  # a bare name, no key: routed to P8FS_LLM_BASE_URL
    assert (config.provider, config.base_url, config.api_key) == (
        "openai",
        llama_env.base_url,
        "not-needed",
    )
    assert window_of(config) == (None, "")  # llama-cpp-python reports no window
    whole = "\n\n".join(r.text for r in agent_input.records)
    assert server_tokens(llama_env, whole) > LLAMA_N_CTX  # by the server's own tokenizer

    worker = MomentWorker(sqlite_database, model="smollm2")
    started = time.monotonic()
    # Sampling differs per request, and a 135M model now and then writes one part's answer
    # until max_tokens even after the runtime halved it twice (the cut-off is reported, as it
    # must be; a clean clone's full run saw it once in five). Such a run gets two more tries;
    # any other failure fails at once.
    for attempt in range(3):
        run = await worker.process_many("tenant-llama", {"meeting.json": data})
        cut_off = all(CUT_OFF in message for message in run.failures.values())
        if not run.failures or not cut_off or attempt == 2:
            break
    elapsed = time.monotonic() - started
    assert run.failures == {}, run.failures

    # The window was learned from the server's own context-length error.
    facts = facts_for(config)
    assert facts.context_window == LLAMA_N_CTX
    assert "context-length error" in facts.window_source
    assert facts.tokenizer == "llama-cpp-python"

    [moments] = run.stored.values()
    assert moments, "at least one moment"
    stored = await sqlite_database.list_moments("tenant-llama")
    assert {m.id for m in stored} == {m.id for m in moments}
    end = START + timedelta(seconds=30 * SEGMENTS)
    for m in stored:
        assert m.moment_type in MOMENT_TYPES
        assert m.resource_timestamp is not None and m.resource_ends_timestamp is not None
        assert START - timedelta(seconds=1) <= m.resource_timestamp <= end + timedelta(seconds=1)
        assert m.resource_timestamp <= m.resource_ends_timestamp <= end + timedelta(seconds=1)
        assert m.uri == "s3://recordings/llama_long_meeting.wav"
        assert m.name.strip() and m.content.strip()
    print(f"\nMomentBuilder on llama.cpp: {len(stored)} moment(s) in {elapsed:.0f} s")


async def test_dream_direct_on_llama_and_batch_refused(
    llama_env: LlamaServer, small_answers: None, sqlite_database: Database
) -> None:
    tenant = "tenant-dream-llama"
    await sqlite_database.upsert_session(
        Session(
            tenant_id=tenant,
            name="chat",
            messages=[
                {
                    "role": "user",
                    "content": "I want to run a marathon in May and I worry "
                    "about my knee. Remind me to book the physio on Thursday.",
                },
            ],
        )
    )
    await sqlite_database.store_file(
        *_note(
            tenant,
            "plan.md",
            "Goal: launch the bakery website before June. Ana handles "
            "the photos; Ben writes the menu. Fear: running out of money in the summer.",
        )
    )
    worker = DreamingWorker(sqlite_database, model="smollm2")
    started = time.monotonic()
    job = await worker.process_direct(tenant)
    elapsed = time.monotonic() - started
    assert job.status == JobStatus.COMPLETED, job.error
    assert job.result is not None
    result = DreamModel.model_validate(job.result)
    assert result.user_id == tenant and result.metrics.total_documents_analyzed == 2
    [stored] = await sqlite_database.list_jobs(tenant_id=tenant, status=JobStatus.COMPLETED)
    assert stored.id == job.id
    print(f"\nDreamModel on llama.cpp: direct run in {elapsed:.0f} s")

    # Batch mode: refused before anything is collected, saying why and what to do.
    with pytest.raises(ConfigurationError) as info:
        await worker.process_batch([tenant])
    message = str(info.value)
    assert "no Batches API" in message and "--mode direct" in message
    assert llama_env.base_url in message
    assert not await sqlite_database.list_jobs(tenant_id=tenant, status=JobStatus.SUBMITTED)


class Tally(BaseModel):
    """Count the animals the user mentions."""

    zebra_count: int = Field(ge=0)
    quoll_names: list[str]
    habitat: Literal["savanna", "forest"]


@pytest.mark.parametrize("mode", ["tools", "json_schema", "grammar"])
async def test_each_structured_output_mode_is_enforced_by_the_server(
    llama_env: LlamaServer, small_answers: None, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each P8FS_LLM_STRUCTURED_OUTPUT mode, as the real server receives it, constrains the
    answer to the schema. The prompt never names the fields (none of these modes shows the
    schema to the model on a self-hosted server), so a valid ``Tally`` can only come from the
    server enforcing it: tools and json_schema (sent as llama-cpp-python's ``json_object`` +
    ``schema``, since it refuses the ``json_schema`` type) through its own schema grammar,
    grammar through the GBNF that p8fs wrote. Usage is metered per HTTP request."""
    from p8fs.agents.runtime import USAGE, UsageMeter, close_client, make_client
    from p8fs.agents.runtime import structured_call as call

    monkeypatch.setenv("P8FS_LLM_STRUCTURED_OUTPUT", mode)
    config = resolve_llm("smollm2")
    assert config.mode == mode and not config.schema_in_prompt
    from p8fs.agents.limits import probe_server

    await probe_server(config)  # learns that the server is llama-cpp-python
    meter = UsageMeter()
    token = USAGE.set(meter)
    client = make_client(config)
    try:
        text = "Three zebras drank at the river; two quolls, Ada and Bo, watched them."
        result = await call(client, Tally, text, config, max_tokens=120)
    finally:
        USAGE.reset(token)
        await close_client(client)
    assert isinstance(result, Tally) and result.zebra_count >= 0
    assert result.habitat in ("savanna", "forest")
    [record] = meter.calls
    assert record.prompt_tokens and record.completion_tokens and record.seconds > 0
    # The field names were not in the prompt: the answer's keys came from the constraint.
    assert "zebra_count" not in text and "habitat" not in text


def test_every_agents_grammar_is_accepted_by_the_server(llama_server: LlamaServer) -> None:
    """llama.cpp parses the GBNF p8fs writes for each registered agent (a grammar it cannot
    parse is a 500); the first tokens it then samples start the schema's JSON object."""
    from p8fs.agents.grammar import grammar_for
    from p8fs.plugins import get_registry

    for registration in get_registry().agents:
        body = {
            "model": "x",
            "max_tokens": 6,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}],
            "grammar": grammar_for(registration.cls),
        }
        request = urllib.request.Request(
            llama_server.base_url + "/chat/completions",
            json.dumps(body).encode(),
            {"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
        compact = answer["choices"][0]["message"]["content"].replace(" ", "")
        schema = registration.cls.model_json_schema()
        # Required keys come first; with none required, any property may open the object.
        required = [p for p in schema["properties"] if p in schema.get("required", [])]
        starts = ['{"' + key + '"' for key in required[:1] or schema["properties"]]
        if not required:
            starts.append("{}")  # an empty object is a valid answer to such a grammar
        assert compact and any(
            start.startswith(compact) or compact.startswith(start) for start in starts
        ), (registration.name, compact)


async def test_moment_builder_in_grammar_mode(
    llama_env: LlamaServer, small_answers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MomentBuilder end to end with the GBNF grammar p8fs writes: typed moments inside the
    transcript (the grammar keeps timestamps well formed, so the time repair can clamp them)."""
    monkeypatch.setenv("P8FS_LLM_STRUCTURED_OUTPUT", "grammar")
    monkeypatch.setenv("P8FS_LLM_MAX_OUTPUT_TOKENS", "800")
    data = long_transcript(4)
    # The grammar fixes the answer's shape, not its length: a 135M model sometimes writes one
    # string until max_tokens (a cut-off the runtime reports, tested above). Sampling differs
    # per request, so a cut-off answer gets two more tries; any other failure fails at once.
    for attempt in range(3):
        try:
            result = await MomentBuilder.arun(data, model="smollm2")
            break
        except AgentTruncatedError:
            if attempt == 2:
                raise
    assert result.moments
    end = START + timedelta(seconds=30 * 4)
    for m in result.moments:
        assert m.moment_type in MOMENT_TYPES
        assert START <= m.resource_timestamp <= m.resource_ends_timestamp <= end


def _note(tenant: str, name: str, text: str) -> tuple[Any, list[Resource]]:
    from p8fs.ids import stable_id
    from p8fs.models import FileRecord

    uri = f"s3://{tenant}/{name}"
    file = FileRecord(id=stable_id("file", tenant, uri), tenant_id=tenant, name=name, uri=uri)
    resource = Resource(
        tenant_id=tenant, file_id=file.id, name=name, content=text, ordinal=0, uri=uri
    )
    return file, [resource]
