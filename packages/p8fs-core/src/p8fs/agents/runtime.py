"""Running an agent: instructor over the Anthropic (or an OpenAI-compatible) SDK, chunk and merge.

One run is: resolve the model and key (:func:`p8fs.agents.config.resolve_llm`), let the agent
turn its input into a header and records, pack the records into as few calls as the context
allows (the ``records`` chunker keeps each one whole), make the calls through instructor (which
sends the agent's JSON schema as a forced tool and re-asks when the output fails validation),
merge the partial results the agent's way, and finish with the agent's final call if it has one.

Failures come out typed: no key → :class:`~p8fs.errors.ConfigurationError` naming the variable;
output still invalid after the retries → :class:`AgentOutputError`; the service down or
overloaded after the SDK's own retries → :class:`AgentServiceError` (transient).

instructor and the SDKs are imported here, inside functions, so defining or registering an agent
costs nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel

from p8fs.agents.base import Agent, AgentInput
from p8fs.agents.config import LLMConfig, LLMSettings, resolve_llm
from p8fs.agents.errors import AgentOutputError, AgentRequestError, AgentServiceError
from p8fs.errors import ConfigurationError, P8fsError
from p8fs.settings import Settings

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Agent)
M = TypeVar("M", bound=BaseModel)

#: Tokens kept free for the wrapping of a call (role markers, tool framing, part notes).
FRAMING_TOKENS = 200


# -- clients ----------------------------------------------------------------------------------
def make_client(config: LLMConfig) -> Any:
    """An async instructor client for ``config`` (SDK retries and timeout applied)."""
    try:
        import instructor
    except ImportError as exc:  # pragma: no cover - the agents extra is missing
        raise ConfigurationError(
            "agents need the 'agents' extra: pip install 'p8fs-core[agents]'"
        ) from exc
    if config.provider == "anthropic":
        import anthropic

        client = anthropic.AsyncAnthropic(
            api_key=config.api_key,
            max_retries=config.sdk_max_retries,
            timeout=config.timeout,
        )
        return instructor.from_anthropic(client)
    import openai

    oclient = openai.AsyncOpenAI(
        api_key=config.api_key,
        base_url=config.base_url,
        max_retries=config.sdk_max_retries,
        timeout=config.timeout,
    )
    return instructor.from_openai(oclient, mode=instructor.Mode.TOOLS)


def tool_definition(model: type[BaseModel]) -> dict[str, Any]:
    """The Anthropic tool a model is sent as (what instructor sends: name, docstring, schema)."""
    import inspect

    return {
        "name": model.__name__,
        "description": inspect.cleandoc(model.__doc__ or model.__name__),
        "input_schema": model.model_json_schema(),
    }


def system_prompt_of(model: type[BaseModel]) -> str:
    if isinstance(model, type) and issubclass(model, Agent):
        return model.system_prompt()
    import inspect

    return inspect.cleandoc(model.__doc__ or "")


# -- chunking ---------------------------------------------------------------------------------
def count_tokens(text: str, config: LLMConfig) -> int:
    from p8fs.tokens import count_tokens as count

    return count(text, config.encoding)


def prompt_overhead(cls: type[Agent], agent_input: AgentInput, config: LLMConfig) -> int:
    """Tokens every call spends before any record: system prompt, tool schema, header."""
    schema = json.dumps(tool_definition(cls))
    return (
        count_tokens(cls.system_prompt(), config)
        + count_tokens(schema, config)
        + count_tokens(agent_input.header, config)
        + FRAMING_TOKENS
    )


def plan_chunks(cls: type[Agent], agent_input: AgentInput, config: LLMConfig) -> list[str]:
    """The records packed into call-sized texts, each record whole (``records`` chunker)."""
    budget = config.context_tokens - prompt_overhead(cls, agent_input, config)
    if budget < 64:
        raise ConfigurationError(
            f"P8FS_LLM_CONTEXT_TOKENS={config.context_tokens} leaves no room for data after "
            f"{cls.__name__}'s prompt and schema ({config.context_tokens - budget} tokens)",
            setting="P8FS_LLM_CONTEXT_TOKENS",
        )
    from p8fs.chunking import SECTION_SEPARATOR

    whole = SECTION_SEPARATOR.join(record.text for record in agent_input.records)
    if count_tokens(whole, config) <= budget:
        return [whole]  # fits one call: nothing to plan
    from p8fs.chunking import RecordChunker

    chunker = RecordChunker(max_tokens=budget, overlap_tokens=0, encoding=config.encoding)
    return [chunk.text for chunk in chunker.chunk(agent_input.records)]


def user_message(agent_input: AgentInput, text: str, part: int, parts: int) -> str:
    note = (
        f"\n\n(This is part {part} of {parts} of the input, split to fit the context; "
        "describe only this part.)"
        if parts > 1
        else ""
    )
    header = agent_input.header + "\n\n" if agent_input.header else ""
    return f"{header}{text}{note}"


# -- one call ---------------------------------------------------------------------------------
async def structured_call(
    client: Any,
    response_model: type[M],
    user_text: str,
    config: LLMConfig,
    *,
    context: dict[str, Any] | None = None,
    system: str | None = None,
) -> M:
    """One instructor call with errors translated into p8fs's typed errors."""
    system = system if system is not None else system_prompt_of(response_model)
    kwargs: dict[str, Any] = {
        "model": config.model,
        "response_model": response_model,
        "max_retries": config.max_retries,
        "context": context,
        "max_tokens": config.max_output_tokens,
    }
    if config.provider == "anthropic":
        kwargs["system"] = system
        kwargs["messages"] = [{"role": "user", "content": user_text}]
    else:
        kwargs["messages"] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user_text},
        ]
    try:
        result: M = await client.create(**kwargs)
    except Exception as exc:
        raise translate_error(exc, response_model, config) from exc
    return result


def translate_error(exc: BaseException, model: type[BaseModel], config: LLMConfig) -> P8fsError:
    """An SDK or instructor exception → the p8fs error a worker can classify."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for err in chain:
        if isinstance(err, P8fsError):
            return err
        status = getattr(err, "status_code", None)
        module = type(err).__module__.split(".", 1)[0]
        if module in ("anthropic", "openai"):
            name = type(err).__name__
            where = f"{config.provider} model {config.model!r}"
            if name == "AuthenticationError" or status in (401, 403):
                return ConfigurationError(
                    f"{where}: the API key was refused ({status}); check {config.key_variable}",
                    setting=config.key_variable,
                )
            if name in ("APIConnectionError", "APITimeoutError") or (
                isinstance(status, int) and (status in (408, 409, 429) or status >= 500)
            ):
                return AgentServiceError(
                    f"{where}: service unavailable after {config.sdk_max_retries} SDK retries: "
                    f"{name}{f' {status}' if status else ''}: {_short(err)}",
                    status_code=status,
                )
            return AgentRequestError(
                f"{where} refused the request: {name}{f' {status}' if status else ''}: "
                f"{_short(err)}",
                status_code=status,
            )
    attempts = int(getattr(exc, "n_attempts", 0) or 0)
    return AgentOutputError(
        f"{model.__name__}: the model's output did not validate after {attempts or '?'} "
        f"attempt(s): {_short(exc)}",
        attempts=attempts,
    )


def _short(exc: BaseException, limit: int = 600) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- a whole run -----------------------------------------------------------------------------
async def arun_agent(
    cls: type[A],
    data: Any,
    *,
    model: str | None = None,
    max_retries: int | None = None,
    context_tokens: int | None = None,
    settings: Settings | None = None,
    llm: LLMSettings | None = None,
    config: LLMConfig | None = None,
    client: Any = None,
) -> A:
    """Run ``cls`` over ``data``: chunk if needed, call, merge, finalize.

    ``model`` may carry a provider prefix (``openai/gpt-4o``); ``max_retries`` is instructor's
    re-asks after invalid output; ``context_tokens`` the input one call may carry.
    """
    agent_input = cls.prepare_input(data)
    config = config or resolve_llm(
        model,
        settings=settings,
        llm=llm,
        max_retries=max_retries,
        context_tokens=context_tokens,
    )
    chunks = plan_chunks(cls, agent_input, config)
    if client is not None:
        return await _run_chunks(cls, agent_input, chunks, client, config)
    client = make_client(config)
    try:
        return await _run_chunks(cls, agent_input, chunks, client, config)
    finally:
        await close_client(client)


async def close_client(client: Any) -> None:
    """Close the SDK client under an instructor client (its HTTP connection pool)."""
    inner = getattr(client, "client", None)
    close = getattr(inner, "close", None)
    if close is not None:
        await close()


async def _run_chunks(
    cls: type[A], agent_input: AgentInput, chunks: list[str], client: Any, config: LLMConfig
) -> A:
    limiter = asyncio.Semaphore(config.concurrency)

    async def one(index: int, text: str) -> A:
        async with limiter:
            return await structured_call(
                client,
                cls,
                user_message(agent_input, text, index + 1, len(chunks)),
                config,
                context=agent_input.context,
            )

    log.info("%s: %d record(s) in %d call(s)", cls.__name__, len(agent_input.records), len(chunks))
    parts: list[A] = list(await asyncio.gather(*(one(i, t) for i, t in enumerate(chunks))))
    if len(parts) == 1:
        return cls.postprocess(parts[0], agent_input)
    merged = cls.merge(parts, agent_input)

    async def follow_up(response_model: type[M], text: str) -> M:
        return await structured_call(client, response_model, text, config)

    merged = await cls.finalize(merged, follow_up, agent_input)
    return cls.postprocess(merged, agent_input)


def run_agent(cls: type[A], data: Any, **options: Any) -> A:
    """Blocking :func:`arun_agent`; inside a running loop (Jupyter) it runs on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_agent(cls, data, **options))
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p8fs-agent") as pool:
        future = pool.submit(ctx.run, asyncio.run, arun_agent(cls, data, **options))
        return future.result()
