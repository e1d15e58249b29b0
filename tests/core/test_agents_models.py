"""Which model the agents use, and what happens with a model Anthropic has retired or deprecated.

The dates come from the installed anthropic SDK's own ``DEPRECATED_MODELS`` table, read here
too (no copy of it in the tests). Today is pinned (2026-12-05) so the tests mean the same thing
next year: ``claude-sonnet-4-5`` reached end of life on 2026-11-30 and ``claude-opus-4-5``
reaches it on 2027-01-22.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import date
from typing import Any

import pytest

from p8fs.agents import MomentBuilder, lifecycle
from p8fs.agents.config import resolve_llm
from p8fs.errors import ConfigurationError
from p8fs.settings import Settings
from tests.fixtures.llm import FakeLLMServer, HTTPFailure
from tests.fixtures.servers import REPO_ROOT

TODAY = date(2026, 12, 5)
TRANSCRIPT = {
    "transcript_id": "t1",
    "start_timestamp": "2025-01-13T09:00:00Z",
    "end_timestamp": "2025-01-13T09:10:00Z",
    "segments": [
        {"timestamp": "2025-01-13T09:00:00Z", "speaker_id": "s1", "text": "Hello team."},
    ],
}
#: The fake server's answer to TRANSCRIPT: one moment over its ten minutes.
ONE_GREETING = {
    "moments": [
        {
            "name": "Hello",
            "content": "A greeting.",
            "resource_timestamp": "2025-01-13T09:00:00Z",
            "resource_ends_timestamp": "2025-01-13T09:10:00Z",
            "moment_type": "meeting",
        }
    ],
    "analysis_summary": "One greeting.",
}


@pytest.fixture(autouse=True)
def pinned_today(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "today_utc", lambda: TODAY)
    lifecycle._warned.clear()


def sdk_table() -> dict[str, str]:
    from anthropic._data import DEPRECATED_MODELS

    return dict(DEPRECATED_MODELS)


def retired_and_deprecated() -> tuple[str, str]:
    """One model of the SDK's table past its date on TODAY, one not yet."""
    retired = deprecated = None
    for name, when in sdk_table().items():
        eol = lifecycle.parse_sdk_date(when)
        assert eol is not None, f"the SDK's date {when!r} for {name} did not parse"
        if eol <= TODAY and retired is None:
            retired = name
        if eol > TODAY and deprecated is None:
            deprecated = name
    assert retired and deprecated, sdk_table()
    return retired, deprecated


def test_default_model_is_the_sdks_newest_current_sonnet() -> None:
    default = Settings().default_model
    assert default == lifecycle.newest_sonnet()
    assert default not in sdk_table()
    assert default.startswith("claude-sonnet-")
    lifecycle.check_model(default)  # neither raises nor is past any date


def test_docs_notebook_and_manifests_name_the_default() -> None:
    default = Settings().default_model
    agents_md = (REPO_ROOT / "docs" / "agents.md").read_text()
    assert f"`{default}`" in agents_md
    notebook = json.loads((REPO_ROOT / "docs" / "agents-in-notebooks.ipynb").read_text())
    text = "".join("".join(cell["source"]) for cell in notebook["cells"])
    assert default in text
    for path in [
        REPO_ROOT / "docs" / "agents.md",
        REPO_ROOT / "docs" / "agents-in-notebooks.ipynb",
        *sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml")),
    ]:
        named = set(re.findall(r"claude-[a-z]+-[0-9][0-9a-z-]*", path.read_text()))
        assert named <= {default}, f"{path.relative_to(REPO_ROOT)} names {named - {default}}"


def test_sdk_dates_parse() -> None:
    assert lifecycle.parse_sdk_date("November 30th, 2026") == date(2026, 11, 30)
    assert lifecycle.parse_sdk_date("January 22nd, 2027") == date(2027, 1, 22)
    assert lifecycle.parse_sdk_date("2026-06-30") == date(2026, 6, 30)
    assert lifecycle.parse_sdk_date("soon") is None


def test_retired_model_fails_before_any_request(llm_server: FakeLLMServer) -> None:
    retired, _ = retired_and_deprecated()
    eol = lifecycle.end_of_life(retired)
    assert eol is not None
    with pytest.raises(ConfigurationError) as info:
        MomentBuilder.run(TRANSCRIPT, model=retired)
    message = str(info.value)
    assert retired in message and eol.isoformat() in message and "P8FS_DEFAULT_MODEL" in message
    assert info.value.details["setting"] == "P8FS_DEFAULT_MODEL"
    assert llm_server.requests == []  # refused before anything was sent


def test_retired_default_model_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    retired, _ = retired_and_deprecated()
    monkeypatch.setenv("P8FS_DEFAULT_MODEL", retired)
    monkeypatch.delenv("P8FS_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("P8FS_LLM_PROVIDER", raising=False)
    with pytest.raises(ConfigurationError, match="P8FS_DEFAULT_MODEL"):
        resolve_llm(require_key=False)


def test_deprecated_model_warns_once_with_the_date(
    llm_server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    _, deprecated = retired_and_deprecated()
    eol = lifecycle.end_of_life(deprecated)
    assert eol is not None
    caplog.set_level(logging.WARNING, logger="p8fs.agents.lifecycle")
    config = resolve_llm(deprecated)
    resolve_llm(deprecated)
    warnings = [r for r in caplog.records if r.name == "p8fs.agents.lifecycle"]
    assert len(warnings) == 1
    assert deprecated in warnings[0].getMessage() and eol.isoformat() in warnings[0].getMessage()
    assert config.model == deprecated  # still usable until the date


def test_model_not_found_names_the_model_and_setting(llm_server: FakeLLMServer) -> None:
    llm_server.replies.append(
        HTTPFailure(404, error_type="not_found_error", message="model: claude-nonexistent-9")
    )
    with pytest.raises(ConfigurationError) as info:
        MomentBuilder.run(TRANSCRIPT, model="claude-nonexistent-9")
    message = str(info.value)
    assert "claude-nonexistent-9" in message and "P8FS_DEFAULT_MODEL" in message


def test_model_not_found_for_a_retired_model_says_when(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model past its date that still got through (e.g. an old SDK table) names the date."""
    retired, _ = retired_and_deprecated()
    monkeypatch.setattr(lifecycle, "check_model", lambda model, today=None: None)
    llm_server.replies.append(
        HTTPFailure(404, error_type="not_found_error", message=f"model: {retired}")
    )
    with pytest.raises(ConfigurationError) as info:
        MomentBuilder.run(TRANSCRIPT, model=retired)
    eol = lifecycle.end_of_life(retired)
    assert eol is not None and eol.isoformat() in str(info.value)


def test_bare_name_goes_to_the_configured_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P8FS_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("P8FS_LLM_PROVIDER", raising=False)
    config = resolve_llm("my-local-model")
    assert (config.provider, config.model, config.base_url) == (
        "openai",
        "my-local-model",
        "http://127.0.0.1:9/v1",
    )
    assert "P8FS_LLM_BASE_URL" in config.route
    # The prefix still reaches Anthropic, and says why the base URL was not used.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("P8FS_ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        resolve_llm("anthropic/" + Settings().default_model)
    assert "P8FS_LLM_BASE_URL" in str(info.value) and "anthropic/ prefix" in str(info.value)
    # P8FS_LLM_BASE_URL set: even an OpenAI-looking name goes to the configured server.
    assert resolve_llm("gpt-4o").base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("P8FS_LLM_BASE_URL")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert (resolve_llm("gpt-4o").provider, resolve_llm("gpt-4o").route) == (
        "openai",
        "an OpenAI model name",
    )


def test_structured_output_setting_reaches_the_request(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """json_schema on an OpenAI-compatible server: response_format, no tools."""
    from tests.fixtures.llm import Text

    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")
    monkeypatch.setenv("P8FS_LLM_STRUCTURED_OUTPUT", "json_schema")
    reply = {**ONE_GREETING, "total_moments": 1}
    llm_server.replies.append(Text(json.dumps(reply)))
    result = MomentBuilder.run(TRANSCRIPT, model="local")
    assert result.moments[0].name == "Hello"
    [request] = [r for r in llm_server.requests if r.path == "/v1/chat/completions"]
    assert request.body is not None
    assert request.body["response_format"]["type"] == "json_schema"
    assert "tools" not in request.body
    monkeypatch.setenv("P8FS_LLM_STRUCTURED_OUTPUT", "md_json")
    with pytest.raises(ConfigurationError, match="P8FS_LLM_STRUCTURED_OUTPUT"):
        MomentBuilder.run(TRANSCRIPT, model="anthropic/" + Settings().default_model)


def test_grammar_mode_sends_a_gbnf_grammar_and_no_response_format(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grammar: the schema as GBNF in the body's ``grammar`` field, no response_format (which
    llama-cpp-python would let override the grammar) and no tools; Anthropic refuses it."""
    from p8fs.agents.grammar import grammar_for
    from tests.fixtures.llm import Text

    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")
    monkeypatch.setenv("P8FS_LLM_STRUCTURED_OUTPUT", "grammar")
    reply = ONE_GREETING
    llm_server.replies.append(Text(json.dumps(reply)))
    result = MomentBuilder.run(TRANSCRIPT, model="local")
    assert result.moments[0].name == "Hello"
    [request] = [r for r in llm_server.requests if r.path == "/v1/chat/completions"]
    assert request.body is not None
    assert request.body["grammar"] == grammar_for(MomentBuilder)
    assert "response_format" not in request.body and "tools" not in request.body
    grammar = request.body["grammar"]
    assert grammar.startswith("root ::= ")
    for moment_type in ("meeting", "worry", "travel"):  # the enum, one literal each
        assert f'"\\"{moment_type}\\""' in grammar
    with pytest.raises(ConfigurationError, match="grammar is not available for anthropic"):
        MomentBuilder.run(TRANSCRIPT, model="anthropic/" + Settings().default_model)


def test_temperature_is_sent_only_when_set(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P8FS_LLM_TEMPERATURE reaches the request body; unset, the server's default applies."""
    from tests.fixtures.llm import Text

    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")
    monkeypatch.setenv("P8FS_LLM_STRUCTURED_OUTPUT", "json")
    reply = ONE_GREETING
    for temperature in (None, "0"):
        if temperature is None:
            monkeypatch.delenv("P8FS_LLM_TEMPERATURE", raising=False)
        else:
            monkeypatch.setenv("P8FS_LLM_TEMPERATURE", temperature)
        llm_server.replies.append(Text(json.dumps(reply)))
        MomentBuilder.run(TRANSCRIPT, model="local")
    bodies = [r.body for r in llm_server.requests if r.path == "/v1/chat/completions"]
    assert len(bodies) == 2 and all(body is not None for body in bodies)
    assert "temperature" not in bodies[0]  # type: ignore[operator]
    assert bodies[1]["temperature"] == 0  # type: ignore[index]


def _two_segments() -> dict[str, Any]:
    return {
        "transcript_id": "cut",
        "start_timestamp": "2025-01-13T09:00:00Z",
        "end_timestamp": "2025-01-13T09:10:00Z",
        "segments": [
            {"timestamp": "2025-01-13T09:00:00Z", "speaker_id": "s1", "text": "First point."},
            {"timestamp": "2025-01-13T09:05:00Z", "speaker_id": "s2", "text": "Second point."},
        ],
    }


def _one_moment(name: str) -> dict[str, Any]:
    return {
        "moments": [
            {
                "name": name,
                "content": name,
                "resource_timestamp": "2025-01-13T09:00:00Z",
                "resource_ends_timestamp": "2025-01-13T09:10:00Z",
                "moment_type": "conversation",
            }
        ],
        "analysis_summary": name,
    }


def test_cut_off_answer_is_detected_and_the_input_split(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that says finish_reason tool_calls over JSON that stops mid-way (as
    llama-cpp-python does at max_tokens): no re-ask with the broken JSON, the part is split."""
    from tests.fixtures.llm import CutOff, RecordedRequest

    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")

    def reply(request: RecordedRequest) -> Any:
        body = request.body or {}
        text = body["messages"][-1]["content"]
        if "MomentsSummary" in json.dumps(body.get("tool_choice")):
            return {"analysis_summary": "both halves"}
        if "First point." in text and "Second point." in text:
            return CutOff('{"moments": [{"name": "Fir')
        return _one_moment("First" if "First point." in text else "Second")

    llm_server.responder = reply
    result = MomentBuilder.run(_two_segments(), model="local")
    chats = [r for r in llm_server.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 4  # the cut-off whole, its two halves, the summary
    assert all(len(r.body["messages"]) == 2 for r in chats if r.body)  # never a re-ask
    assert result.analysis_summary == "both halves"
    assert {m.name for m in result.moments} <= {"First", "Second"}


def test_cut_off_single_record_names_the_settings(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p8fs.agents.errors import AgentTruncatedError
    from tests.fixtures.llm import CutOff

    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")
    llm_server.responder = lambda request: CutOff('{"moments": [')
    with pytest.raises(AgentTruncatedError) as info:
        MomentBuilder.run(TRANSCRIPT, model="local")
    assert "P8FS_LLM_MAX_OUTPUT_TOKENS" in str(info.value)


def test_context_length_error_teaches_the_window(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call over input larger than an unknown window is refused with the server's
    context-length error; the window it states is used to re-plan, and max_tokens fits."""
    from p8fs.agents.limits import facts_for, forget_servers
    from tests.fixtures.llm import RecordedRequest

    forget_servers()
    monkeypatch.setenv("P8FS_LLM_BASE_URL", llm_server.url + "/v1")
    monkeypatch.setenv("P8FS_LLM_MAX_OUTPUT_TOKENS", "300")
    window = 1500

    def reply(request: RecordedRequest) -> Any:
        body = request.body or {}
        text = body["messages"][-1]["content"]
        if "MomentsSummary" in json.dumps(body.get("tool_choice")):
            return {"analysis_summary": "all"}
        if "Second point." in text and "First point." in text:
            return HTTPFailure(
                400,
                error_type="invalid_request_error",
                message=f"This model's maximum context length is {window} tokens. However, "
                "your messages resulted in 2100 tokens. Please reduce the length of the messages.",
            )
        return _one_moment("First" if "First point." in text else "Second")

    llm_server.responder = reply
    data = _two_segments()
    result = MomentBuilder.run(data, model="local")
    assert result.analysis_summary == "all"
    config = resolve_llm("local")
    assert facts_for(config).context_window == window
    chats = [r for r in llm_server.requests if r.path == "/v1/chat/completions"]
    assert all(r.body and r.body["max_tokens"] <= 300 for r in chats)
