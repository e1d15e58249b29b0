"""MomentBuilder and DreamModel through the real anthropic SDK and instructor, over HTTP.

The fake server (``tests/fixtures/llm.py``) answers ``/v1/messages`` like Anthropic does; these
tests check what the agents *send* (schema, system prompt, forced tool) and how they handle what
comes back (valid output, output instructor must re-ask for, errors after the SDK's retries).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from p8fs.agents import (
    AgentOutputError,
    AgentServiceError,
    DreamModel,
    MomentBuilder,
    read_transcript,
)
from p8fs.agents.moments import MOMENT_TYPES
from p8fs.errors import ConfigurationError, is_permanent
from tests.fixtures.llm import FakeLLMServer, HTTPFailure, Text, corpus_moment_reply
from tests.fixtures.servers import corpus_path

SAMPLES = "transcripts/p8fs_moment_samples"
STANDUP = f"{SAMPLES}/tenant_1/transcript_2025-01-13T09-00-00Z"


expected_as_output = corpus_moment_reply


@pytest.fixture
def standup() -> tuple[Path, dict[str, Any]]:
    path = corpus_path(f"{STANDUP}_input.json")
    expected = json.loads(corpus_path(f"{STANDUP}_expected_moment.json").read_text())
    return path, expected


async def test_sends_schema_docstring_and_forced_tool(llm_server: FakeLLMServer, standup) -> None:
    path, expected = standup
    llm_server.replies.append(expected_as_output(expected))

    result = await MomentBuilder.arun(path)

    [request] = llm_server.message_requests()
    assert request.path == "/v1/messages"
    # The key from ANTHROPIC_API_KEY travels as the SDK sends it (x-api-key or bearer).
    sent = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    assert sent.removeprefix("Bearer ") == "sk-ant-test-not-a-real-key"
    assert request.body is not None
    assert request.body["model"] == "claude-sonnet-5-5"
    assert request.tool_schema == MomentBuilder.model_json_schema()
    assert request.body["tools"][0]["name"] == "MomentBuilder"
    assert request.body["tool_choice"]["type"] == "tool"
    assert request.body["tool_choice"]["name"] == "MomentBuilder"
    assert request.system_text == MomentBuilder.system_prompt()
    assert "You classify a recorded transcript into moments" in request.system_text
    # The transcript itself is in the prompt: header facts and every segment.
    transcript = read_transcript(path)
    assert "fp_jordan_t1" in request.user_text
    for segment in transcript.segments:
        assert segment.text in request.user_text
    # The moment_type enum sent is the fixed set.
    moment_def = request.tool_schema["$defs"]["ExtractedMoment"]
    assert tuple(moment_def["properties"]["moment_type"]["enum"]) == MOMENT_TYPES

    assert result.total_moments == 1
    [moment] = result.moments
    assert moment.moment_type == "meeting"
    assert [p.user_label for p in moment.present_persons] == ["Alex", "Jordan", "Sam"]
    assert moment.present_persons[0].user_id == "user_alex_001"


async def test_invalid_output_is_reasked_then_accepted(llm_server: FakeLLMServer, standup) -> None:
    path, expected = standup
    outside = expected_as_output(expected)
    outside["moments"][0] = dict(
        outside["moments"][0], resource_ends_timestamp="2025-01-13T11:00:00Z"
    )
    llm_server.replies.extend([outside, expected_as_output(expected)])

    result = await MomentBuilder.arun(path, max_retries=2)

    first, second = llm_server.message_requests()
    assert len(first.body["messages"]) == 1  # type: ignore[index]
    # instructor re-asked with the validation error as the tool_result of the first call.
    reask = second.body["messages"][-1]["content"][0]  # type: ignore[index]
    assert reask["type"] == "tool_result" and reask["is_error"] is True
    assert "after the transcript ends (2025-01-13T09:10:12Z)" in reask["content"]
    assert second.body["messages"][1]["role"] == "assistant"  # type: ignore[index]
    assert result.moments[0].end.isoformat() == "2025-01-13T09:10:12+00:00"


async def test_usage_is_metered_per_request_re_asks_included(
    llm_server: FakeLLMServer, standup
) -> None:
    """USAGE counts every answered HTTP request with the service's token counts: the rejected
    first answer and its re-ask both cost tokens (benchmarks/moments_eval.py reports them)."""
    from p8fs.agents.runtime import USAGE, UsageMeter

    path, expected = standup
    outside = expected_as_output(expected)
    outside["moments"][0] = dict(
        outside["moments"][0], resource_ends_timestamp="2025-01-13T11:00:00Z"
    )
    llm_server.replies.extend([outside, expected_as_output(expected)])
    meter = UsageMeter()
    token = USAGE.set(meter)
    try:
        await MomentBuilder.arun(path, max_retries=2)
    finally:
        USAGE.reset(token)
    assert len(meter.calls) == len(llm_server.message_requests()) == 2
    assert all(c.prompt_tokens and c.completion_tokens and c.seconds > 0 for c in meter.calls)


async def test_a_failed_part_cancels_the_parts_still_running() -> None:
    """When one part of a run fails, the others are cancelled rather than left calling the
    server through a client the run then closes."""
    from p8fs.agents.runtime import all_or_none
    from p8fs.errors import P8fsError

    cancelled: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.Event().wait()  # never set: only cancellation ends it
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    async def fails() -> str:
        await asyncio.sleep(0)
        raise P8fsError("part 2 failed")

    with pytest.raises(P8fsError, match="part 2 failed"):
        await all_or_none([slow("a"), fails(), slow("c")])
    assert sorted(cancelled) == ["a", "c"]

    async def value(x: int) -> int:
        await asyncio.sleep(0)
        return x

    assert await all_or_none([value(1), value(2), value(3)]) == [1, 2, 3]


async def test_output_invalid_every_time_is_a_typed_error(
    llm_server: FakeLLMServer, standup
) -> None:
    path, expected = standup
    bad = expected_as_output(expected)
    bad["moments"][0] = dict(bad["moments"][0], moment_type="brunch")
    llm_server.responder = lambda request: bad

    with pytest.raises(AgentOutputError) as info:
        await MomentBuilder.arun(path, max_retries=1)

    assert len(llm_server.message_requests()) == 2  # the first try and one re-ask
    assert info.value.attempts == 2
    assert "moment_type" in str(info.value)
    assert is_permanent(info.value)


async def test_text_instead_of_tool_call_is_reasked(llm_server: FakeLLMServer, standup) -> None:
    path, expected = standup
    llm_server.replies.extend(
        [Text("Sure! Here are the moments: ..."), expected_as_output(expected)]
    )
    result = await MomentBuilder.arun(path)
    assert len(llm_server.message_requests()) == 2
    assert result.moments[0].name == expected["name"]


async def test_missing_key_names_the_variable(
    llm_server: FakeLLMServer, standup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        await MomentBuilder.arun(standup[0])
    assert llm_server.message_requests() == []


@pytest.mark.parametrize("status", [500, 529])
async def test_server_errors_retried_by_sdk_then_typed(
    llm_server: FakeLLMServer, standup, status: int
) -> None:
    llm_server.responder = lambda request: HTTPFailure(status)
    with pytest.raises(AgentServiceError) as info:
        await MomentBuilder.arun(standup[0])
    # P8FS_LLM_SDK_MAX_RETRIES=2 in the fixture: the SDK tried three times.
    assert len(llm_server.message_requests()) == 3
    assert info.value.status_code == status
    assert not is_permanent(info.value)


async def test_server_error_then_recovery(llm_server: FakeLLMServer, standup) -> None:
    path, expected = standup
    llm_server.replies.extend([HTTPFailure(529), expected_as_output(expected)])
    result = await MomentBuilder.arun(path)
    assert len(llm_server.message_requests()) == 2
    assert result.total_moments == 1


async def test_blocking_run_inside_a_running_loop(llm_server: FakeLLMServer, standup) -> None:
    """What Jupyter does: a loop is running and the user calls the blocking API."""
    path, expected = standup
    llm_server.replies.append(expected_as_output(expected))
    asyncio.get_running_loop()  # we are inside one
    result = MomentBuilder.run(path)
    assert result.moments[0].moment_type == "meeting"


def test_blocking_run_without_a_loop(llm_server: FakeLLMServer, standup) -> None:
    path, expected = standup
    llm_server.replies.append(expected_as_output(expected))
    result = MomentBuilder.run(path.read_text())
    printed = str(result)
    assert yaml.safe_load(printed)["moments"][0]["name"] == expected["name"]
    assert "```yaml" in result._repr_markdown_()


async def test_plain_text_input(llm_server: FakeLLMServer) -> None:
    llm_server.responder = lambda request: {
        "moments": [
            {
                "name": "Voice note",
                "content": "Planning the week.",
                "resource_timestamp": "2025-01-05T08:00:00Z",
                "resource_ends_timestamp": "2025-01-05T08:05:00Z",
                "moment_type": "planning",
            }
        ],
        "analysis_summary": "One planning note.",
        "total_moments": 3,  # wrong count: derived, not trusted
    }
    result = await MomentBuilder.arun(
        "Monday: finish the spec.\n\nTuesday: call Acme about the SLA."
    )
    [request] = llm_server.message_requests()
    assert "Tuesday: call Acme about the SLA." in request.user_text
    assert result.total_moments == 1


async def test_openai_compatible_server(
    llm_server: FakeLLMServer, standup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-hosted model behind an OpenAI-compatible API (vLLM, llama.cpp, Ollama...)."""
    path, expected = standup
    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm_server.replies.append(expected_as_output(expected))

    result = await MomentBuilder.arun(path, model="openai/local-llama")

    [request] = llm_server.message_requests()
    assert request.path == "/v1/chat/completions"
    assert request.body is not None
    assert request.body["model"] == "local-llama"
    assert request.body["messages"][0] == {
        "role": "system",
        "content": MomentBuilder.system_prompt(),
    }
    tool = request.body["tools"][0]["function"]
    assert tool["name"] == "MomentBuilder"
    assert set(tool["parameters"]["properties"]) == set(MomentBuilder.model_fields)
    assert result.moments[0].moment_type == "meeting"


def test_openai_without_key_or_server_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "P8FS_OPENAI_API_KEY", "OPENAI_BASE_URL", "P8FS_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        MomentBuilder.run("hello", model="gpt-4o")


def test_registry_resolves_the_original_names() -> None:
    from p8fs.plugins import get_registry

    agents = get_registry().agents
    assert agents.get("agentlets.moments.MomentBuilder") is MomentBuilder
    assert agents.get("agentlets.dreaming.DreamModel") is DreamModel
    assert agents.get("MomentBuilder") is MomentBuilder


def test_defining_agents_does_not_import_the_sdks() -> None:
    import subprocess

    code = (
        "import sys, p8fs.agents, p8fs.builtin.agents\n"
        "from p8fs.plugins import get_registry\n"
        "get_registry().agents.get('agentlets.moments.MomentBuilder')\n"
        "heavy = [m for m in ('instructor', 'anthropic', 'openai') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
