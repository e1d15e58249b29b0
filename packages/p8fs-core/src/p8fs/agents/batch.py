"""Batch runs of an agent: Anthropic's Message Batches API, or OpenAI's Batch API.

A batch request is the same call :mod:`p8fs.agents.runtime` makes (system prompt = docstring,
the agent's schema as the one forced tool), submitted now and collected later. The result is the
*tool call's input* — a JSON object the API already parsed — validated with the agent's pydantic
model; no JSON is ever pulled out of free text. A result that does not validate is an
:class:`AgentOutputError` for that request alone (a batch cannot re-ask).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from p8fs.agents.config import LLMConfig
from p8fs.agents.contract import AgentContract, AgentInput
from p8fs.agents.errors import AgentOutputError
from p8fs.agents.runtime import (
    describe_error,
    system_prompt_of,
    tool_definition,
    translate_error,
)
from p8fs.errors import ConfigurationError

BatchState = Literal["in_progress", "ended", "failed"]


@dataclass
class BatchRequest:
    """One request of a batch: which agent, on what text, under which id."""

    custom_id: str
    agent: type[AgentContract]
    user_text: str
    #: The answer's budget (default P8FS_LLM_MAX_OUTPUT_TOKENS), sized to the window.
    max_tokens: int | None = None


@dataclass
class BatchResults:
    """What a batch returned so far: its state, and per custom id a tool input or an error."""

    state: BatchState
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    detail: str = ""


def anthropic_params(request: BatchRequest, config: LLMConfig) -> dict[str, Any]:
    """The Messages API parameters of one batch request (what instructor would send)."""
    name = request.agent.__name__
    params: dict[str, Any] = {
        "model": config.model,
        "max_tokens": request.max_tokens or config.max_output_tokens,
        "system": request.agent.system_prompt(),
        "messages": [{"role": "user", "content": request.user_text}],
        "tools": [tool_definition(request.agent)],
        "tool_choice": {"type": "tool", "name": name, "disable_parallel_tool_use": True},
    }
    if config.temperature is not None:
        params["temperature"] = config.temperature
    return params


def openai_line(request: BatchRequest, config: LLMConfig) -> dict[str, Any]:
    """One line of an OpenAI Batch input file (a chat completion with a forced function)."""
    tool = tool_definition(request.agent)
    line: dict[str, Any] = {
        "custom_id": request.custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": config.model,
            "max_tokens": request.max_tokens or config.max_output_tokens,
            "messages": [
                {"role": "system", "content": system_prompt_of(request.agent)},
                {"role": "user", "content": request.user_text},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": tool["name"],
                        "description": tool["description"],
                        "parameters": tool["input_schema"],
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": tool["name"]}},
        },
    }
    if config.temperature is not None:
        line["body"]["temperature"] = config.temperature
    return line


def _anthropic_client(config: LLMConfig) -> Any:
    import anthropic

    return anthropic.AsyncAnthropic(
        api_key=config.api_key, max_retries=config.sdk_max_retries, timeout=config.timeout
    )


def _openai_client(config: LLMConfig) -> Any:
    import openai

    return openai.AsyncOpenAI(
        api_key=config.api_key,
        base_url=config.base_url,
        max_retries=config.sdk_max_retries,
        timeout=config.timeout,
    )


def no_batches(config: LLMConfig, what: str) -> ConfigurationError:
    where = config.base_url or "ANTHROPIC_BASE_URL"
    return ConfigurationError(
        f"the {config.provider} server at {where} has no Batches API ({what}): batch mode needs "
        "a service with one (Anthropic's Message Batches, OpenAI's Batch API); run the dreaming "
        "worker with --mode direct for this server",
        setting="P8FS_LLM_BASE_URL" if config.base_url else "ANTHROPIC_BASE_URL",
    )


async def ensure_batches(config: LLMConfig) -> None:
    """Refuse batch mode up front on a self-hosted server without a Batches API.

    llama.cpp, Ollama and most self-hosted servers answer ``/v1/batches`` with 404; finding
    that out only after collecting every tenant's data, with a bare 404, helps nobody.
    """
    if not config.self_hosted or config.base_url is None:
        return
    import httpx

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    url = config.base_url.rstrip("/") + "/batches"
    try:
        async with httpx.AsyncClient(timeout=10.0, headers=headers) as http:
            response = await http.get(url, params={"limit": 1})
    except httpx.HTTPError:
        return  # unreachable now: the submission will say so, classified as transient
    if response.status_code in (404, 405, 501):
        raise no_batches(config, f"GET {url} answered {response.status_code}")


async def submit_batch(requests: list[BatchRequest], config: LLMConfig) -> str:
    """Submit the requests as one batch; returns the provider's batch id."""
    if not requests:
        raise ValueError("a batch needs at least one request")
    try:
        if config.provider == "anthropic":
            async with _anthropic_client(config) as client:
                batch = await client.messages.batches.create(
                    requests=[
                        {"custom_id": r.custom_id, "params": anthropic_params(r, config)}
                        for r in requests
                    ]
                )
                return str(batch.id)
        lines = "".join(json.dumps(openai_line(r, config)) + "\n" for r in requests)
        async with _openai_client(config) as oclient:
            uploaded = await oclient.files.create(
                file=("p8fs-batch.jsonl", io.BytesIO(lines.encode("utf-8"))), purpose="batch"
            )
            obatch = await oclient.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            return str(obatch.id)
    except Exception as exc:
        if getattr(exc, "status_code", None) in (404, 405, 501):
            raise no_batches(config, f"{type(exc).__name__} {exc.status_code}") from exc  # type: ignore[attr-defined]
        raise translate_error(exc, requests[0].agent, config) from exc


async def fetch_batch(batch_id: str, config: LLMConfig, agent: type[AgentContract]) -> BatchResults:
    """The batch's state and, once it has ended, each request's tool input or error."""
    try:
        if config.provider == "anthropic":
            async with _anthropic_client(config) as client:
                return await _fetch_anthropic(client, batch_id, agent)
        async with _openai_client(config) as oclient:
            return await _fetch_openai(oclient, batch_id, agent)
    except Exception as exc:
        raise translate_error(exc, agent, config) from exc


async def _fetch_anthropic(client: Any, batch_id: str, agent: type[AgentContract]) -> BatchResults:
    batch = await client.messages.batches.retrieve(batch_id)
    if batch.processing_status != "ended":
        return BatchResults("in_progress", detail=str(batch.processing_status))
    out = BatchResults("ended")
    async for item in await client.messages.batches.results(batch_id):
        result = item.result
        if result.type != "succeeded":
            error = getattr(result, "error", None)
            inner = getattr(error, "error", None)
            message = getattr(inner, "message", None) or result.type
            out.errors[item.custom_id] = f"batch request {result.type}: {message}"
            continue
        blocks = [
            b for b in result.message.content if b.type == "tool_use" and b.name == agent.__name__
        ]
        if not blocks:
            out.errors[item.custom_id] = (
                f"the model did not call the {agent.__name__} tool "
                f"(stop_reason {result.message.stop_reason})"
            )
            continue
        out.outputs[item.custom_id] = dict(blocks[0].input)
    return out


async def _fetch_openai(client: Any, batch_id: str, agent: type[AgentContract]) -> BatchResults:
    batch = await client.batches.retrieve(batch_id)
    if batch.status in ("validating", "in_progress", "finalizing", "cancelling"):
        return BatchResults("in_progress", detail=str(batch.status))
    if batch.status != "completed":
        return BatchResults("failed", detail=f"batch {batch.status}")
    out = BatchResults("ended")
    for file_id, is_error in ((batch.output_file_id, False), (batch.error_file_id, True)):
        if not file_id:
            continue
        content = await client.files.content(file_id)
        for line in content.text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            custom_id = item["custom_id"]
            response = item.get("response") or {}
            if is_error or item.get("error") or response.get("status_code", 200) >= 400:
                out.errors[custom_id] = json.dumps(item.get("error") or response.get("body"))[:500]
                continue
            message = response["body"]["choices"][0]["message"]
            calls = [
                c
                for c in message.get("tool_calls") or []
                if c["function"]["name"] == agent.__name__
            ]
            if not calls:
                out.errors[custom_id] = f"the model did not call the {agent.__name__} function"
                continue
            # The API's own JSON-encoded arguments field: decoded, not searched for.
            out.outputs[custom_id] = json.loads(calls[0]["function"]["arguments"])
    return out


def validate_output(
    agent: type[AgentContract],
    output: dict[str, Any],
    agent_input: AgentInput,
    *,
    complete: bool = True,
) -> AgentContract:
    """A batch result as the agent: validated (same context as a direct run), then completed
    (``complete=False`` for one part of several, completed after the merge)."""
    try:
        result = agent.model_validate(output, context=agent_input.context)
    except ValidationError as exc:
        raise AgentOutputError(
            f"{agent.__name__}: the batch result does not validate: {describe_error(exc)}",
            attempts=1,
            last_error=str(exc),
        ) from exc
    return agent.postprocess(result, agent_input) if complete else result
