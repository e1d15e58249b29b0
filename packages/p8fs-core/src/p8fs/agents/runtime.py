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
import inspect
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError

from p8fs.agents.config import LLMConfig, LLMSettings, resolve_llm
from p8fs.agents.contract import AgentContract, AgentInput
from p8fs.agents.errors import (
    AgentContextError,
    AgentOutputError,
    AgentRequestError,
    AgentServiceError,
    AgentTruncatedError,
)
from p8fs.agents.grammar import grammar_for
from p8fs.agents.lifecycle import MODEL_SETTING, retired_message
from p8fs.agents.limits import (
    COUNT_SAFETY,
    FRAMING_TOKENS,
    MIN_ANSWER_TOKENS,
    answer_reserve,
    facts_for,
    learn_from_context_error,
    max_tokens_for,
    probe_server,
    requested_prompt_tokens,
    server_token_count,
    window_of,
)
from p8fs.errors import ConfigurationError, P8fsError
from p8fs.providers import Section
from p8fs.settings import Settings

log = logging.getLogger(__name__)

A = TypeVar("A", bound=AgentContract)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

__all__ = ["FRAMING_TOKENS", "arun_agent", "plan_parts", "prompt_overhead", "run_agent"]


# -- clients ----------------------------------------------------------------------------------
#: (provider, P8FS_LLM_STRUCTURED_OUTPUT) → instructor's Mode member.
INSTRUCTOR_MODES: dict[tuple[str, str], str] = {
    ("anthropic", "tools"): "TOOLS",
    ("anthropic", "json_schema"): "JSON_SCHEMA",
    ("anthropic", "json"): "JSON",
    ("openai", "tools"): "TOOLS",
    ("openai", "json_schema"): "JSON_SCHEMA",
    # instructor has no grammar mode: its JSON_SCHEMA mode (the answer read from the message
    # text, no schema in the prompt) with the request rewritten by :func:`adapt_request`.
    ("openai", "grammar"): "JSON_SCHEMA",
    ("openai", "json"): "JSON",
    ("openai", "md_json"): "MD_JSON",
}


def instructor_mode(config: LLMConfig) -> Any:
    """instructor's mode for the configured structured output (a clear error if unsupported)."""
    import instructor

    name = INSTRUCTOR_MODES.get((config.provider, config.mode))
    if name is None:
        allowed = ", ".join(sorted(m for p, m in INSTRUCTOR_MODES if p == config.provider))
        raise ConfigurationError(
            f"P8FS_LLM_STRUCTURED_OUTPUT={config.mode} is not available for {config.provider} "
            f"models (use auto, {allowed})",
            setting="P8FS_LLM_STRUCTURED_OUTPUT",
        )
    return getattr(instructor.Mode, name)


def make_client(config: LLMConfig) -> Any:
    """An async instructor client for ``config`` (SDK retries and timeout applied)."""
    try:
        import instructor
    except ImportError as exc:  # pragma: no cover - the agents extra is missing
        raise ConfigurationError(
            "agents need the 'agents' extra: pip install 'p8fs-core[agents]'"
        ) from exc
    mode = instructor_mode(config)
    if config.provider == "anthropic":
        import anthropic

        client = anthropic.AsyncAnthropic(
            api_key=config.api_key,
            max_retries=config.sdk_max_retries,
            timeout=config.timeout,
        )
        client.messages.create = _metered(client.messages.create)  # type: ignore[method-assign]
        return instructor.from_anthropic(client, mode=mode)
    import openai

    oclient = openai.AsyncOpenAI(
        api_key=config.api_key,
        base_url=config.base_url,
        max_retries=config.sdk_max_retries,
        timeout=config.timeout,
    )
    guard_requests(oclient, config)
    return instructor.from_openai(oclient, mode=mode)


def adapt_request(kwargs: dict[str, Any], config: LLMConfig) -> dict[str, Any]:
    """The request instructor built, in the dialect of the server it goes to.

    * ``grammar``: :func:`structured_call` put the GBNF grammar in the body's ``grammar``
      field; instructor's ``response_format`` is dropped (llama-cpp-python refuses its
      ``json_schema`` type, and a ``json_object`` one would replace the grammar).
    * ``json_schema`` on llama-cpp-python (known from its ``/extras/tokenize/count`` route):
      its server refuses ``{"type": "json_schema", ...}`` (its request model allows only
      ``text`` and ``json_object``) and enforces a schema given as
      ``{"type": "json_object", "schema": ...}``, so the schema is sent that way.
    """
    if config.mode == "grammar" and "grammar" in (kwargs.get("extra_body") or {}):
        kwargs.pop("response_format", None)
        return kwargs
    response_format = kwargs.get("response_format")
    if (
        config.mode == "json_schema"
        and isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
        and facts_for(config).tokenizer == "llama-cpp-python"
    ):
        schema = (response_format.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", "schema": schema}
    return kwargs


def guard_requests(oclient: Any, config: LLMConfig) -> None:
    """Send each request in the server's dialect (:func:`adapt_request`) and make a cut-off
    answer an ``IncompleteOutputException`` before instructor parses it.

    instructor detects a cut-off only by ``finish_reason == "length"``. llama-cpp-python
    reports ``tool_calls`` even when it stopped at ``max_tokens`` (or at the end of its window,
    to which it silently shortens ``max_tokens``), so instructor would re-ask with the broken
    JSON appended — a longer prompt that then overflows the window. Here a cut-off is also
    recognised by the usage (as many completion tokens as allowed) and by the text itself (JSON
    that is a valid prefix but does not close). instructor re-raises the exception at once,
    without a re-ask, and the runtime splits the input instead.
    """
    completions = oclient.chat.completions
    create = completions.create

    metered = _metered(create)

    async def create_checked(*args: Any, **kwargs: Any) -> Any:
        response = await metered(*args, **adapt_request(kwargs, config))
        reason = cut_off_reason(response, kwargs.get("max_tokens"))
        if reason is not None:
            from instructor.core import IncompleteOutputException

            raise IncompleteOutputException(
                last_completion=response, message=f"the answer was cut off: {reason}"
            )
        return response

    completions.create = create_checked


def cut_off_reason(response: Any, max_tokens: int | None) -> str | None:
    """Why an OpenAI-style chat completion looks cut off, or ``None`` when it looks whole."""
    choices = getattr(response, "choices", None) or []
    if not choices:
        return None
    choice = choices[0]
    usage = getattr(response, "usage", None)
    completion = getattr(usage, "completion_tokens", None)
    if choice.finish_reason == "length":
        return f"finish_reason length after {completion} tokens"
    if isinstance(completion, int) and max_tokens and completion >= max_tokens:
        return (
            f"{completion} completion tokens reached max_tokens={max_tokens} "
            f"(finish_reason {choice.finish_reason!r})"
        )
    message = choice.message
    texts = [c.function.arguments for c in (message.tool_calls or []) if c.function]
    texts += [message.content] if message.content else []
    for text in texts:
        if text and _json_prefix(text):
            return (
                f"the JSON stops before it closes after {completion} tokens "
                f"(finish_reason {choice.finish_reason!r})"
            )
    return None


def _json_prefix(text: str) -> bool:
    """True when ``text`` is not JSON but is the beginning of some JSON (it was cut off)."""
    body = text.strip()
    if body.startswith("```"):
        return False  # md_json: instructor extracts the block itself
    try:
        json.loads(body)
        return False
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Extra data"):
            return False
    try:
        pydantic_core.from_json(body, allow_partial=True)
    except ValueError:
        return False
    return bool(body)


def tool_definition(model: type[BaseModel]) -> dict[str, Any]:
    """The Anthropic tool a model is sent as (what instructor sends: name, docstring, schema)."""
    return {
        "name": model.__name__,
        "description": inspect.cleandoc(model.__doc__ or model.__name__),
        "input_schema": model.model_json_schema(),
    }


def system_prompt_of(model: type[BaseModel]) -> str:
    if isinstance(model, type) and issubclass(model, AgentContract):
        return model.system_prompt()
    return inspect.cleandoc(model.__doc__ or "")


# -- counting and planning ----------------------------------------------------------------------
def count_tokens(text: str, config: LLMConfig, ratio: float = 1.0) -> int:
    """Tokens of ``text``: ``o200k_base`` counts, times the server's calibrated ratio."""
    from p8fs.tokens import count_tokens as count

    n = count(text, config.encoding)
    return n if ratio == 1.0 else int(n * ratio + 0.999)


def prompt_overhead(
    cls: type[BaseModel], agent_input: AgentInput | None, config: LLMConfig, ratio: float = 1.0
) -> int:
    """Tokens every call spends before any record: system prompt, header, the schema where it
    is part of the prompt (:attr:`LLMConfig.schema_in_prompt`), framing, and what the server
    showed we under-count."""
    tokens = count_tokens(system_prompt_of(cls), config, ratio) + FRAMING_TOKENS
    if agent_input is not None:
        tokens += count_tokens(agent_input.header, config, ratio)
    if config.schema_in_prompt:
        tokens += count_tokens(json.dumps(tool_definition(cls)), config, ratio)
    return tokens + facts_for(config).prompt_correction


def input_budget(
    cls: type[AgentContract], agent_input: AgentInput, config: LLMConfig, ratio: float = 1.0
) -> int:
    """Tokens of records one call may carry (server tokens): the smaller of
    ``P8FS_LLM_CONTEXT_TOKENS`` and the window less room for the answer, less the overhead."""
    overhead = prompt_overhead(cls, agent_input, config, ratio)
    cap, setting = config.context_tokens, "P8FS_LLM_CONTEXT_TOKENS"
    window, source = window_of(config)
    if window is not None and window - answer_reserve(config, window) < cap:
        cap = window - answer_reserve(config, window)
        setting = f"P8FS_LLM_CONTEXT_WINDOW (window {window}, from {source})"
    budget = cap - overhead
    if budget < 64:
        raise ConfigurationError(
            f"{setting.split(' ')[0]}={cap if setting.startswith('P8FS_LLM_CONTEXT_TOKENS') else window} "
            f"leaves no room for data after {cls.__name__}'s prompt"
            f"{' and schema' if config.schema_in_prompt else ''} ({overhead} tokens)"
            + ("" if setting.startswith("P8FS_LLM_CONTEXT_TOKENS") else f"; {setting}"),
            setting=setting.split(" ")[0],
        )
    return budget


@dataclass
class Part:
    """Records sent together in one call, and their text."""

    records: list[Section]
    text: str


def _join(records: list[Section]) -> str:
    from p8fs.chunking import SECTION_SEPARATOR

    return SECTION_SEPARATOR.join(record.text for record in records)


def plan_parts(
    cls: type[AgentContract],
    agent_input: AgentInput,
    config: LLMConfig,
    ratio: float = 1.0,
    records: list[Section] | None = None,
) -> list[Part]:
    """The records packed into call-sized parts, each record whole (``records`` chunker)."""
    records = agent_input.records if records is None else records
    budget = input_budget(cls, agent_input, config, ratio)
    whole = _join(records)
    if count_tokens(whole, config, ratio) <= budget:
        return [Part(list(records), whole)]  # fits one call: nothing to plan
    from p8fs.chunking import RecordChunker

    chunker = RecordChunker(
        max_tokens=max(16, int(budget / ratio)), overlap_tokens=0, encoding=config.encoding
    )
    parts = []
    for chunk in chunker.chunk(records):
        first, last = chunk.metadata["records"]
        parts.append(Part(list(records[first : last + 1]), chunk.text))
    return parts


async def calibrate(cls: type[AgentContract], agent_input: AgentInput, config: LLMConfig) -> float:
    """Server tokens per ``o200k_base`` token, measured on this input with the server's own
    tokenizer (1.0 when the server has none, as for Claude, whose tokenizer is not public)."""
    facts = facts_for(config)
    if facts.tokenizer is None:
        return 1.0
    sample = (
        system_prompt_of(cls) + "\n\n" + agent_input.header + "\n\n" + _join(agent_input.records)
    )[:60_000]
    theirs = await server_token_count(config, facts, sample)
    ours = count_tokens(sample, config)
    if not theirs or not ours:
        return 1.0
    ratio = max(0.5, theirs / ours) * COUNT_SAFETY
    log.info(
        "%s: %d server tokens per %d o200k tokens (ratio %.2f)", config.model, theirs, ours, ratio
    )
    return ratio


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
@dataclass
class CallRecord:
    """One answered call: how long it took and the tokens the service counted."""

    seconds: float
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class UsageMeter:
    """Collects every answered HTTP request made while it is installed (benchmarks)."""

    calls: list[CallRecord] = field(default_factory=list)


#: The meter calls are recorded in, if any (a context variable: concurrent runs keep theirs).
USAGE: contextvars.ContextVar[UsageMeter | None] = contextvars.ContextVar(
    "p8fs_agent_usage", default=None
)


def _metered(create: Any) -> Any:
    """``create`` of an SDK client, recording each answered HTTP request in :data:`USAGE`.

    Metered at the SDK, under instructor, so that every request counts: re-asks, answers that
    failed validation and were repaired or salvaged, cut-off answers, final summary calls.
    """

    async def create_metered(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = await create(*args, **kwargs)
        meter = USAGE.get()
        if meter is not None:
            usage = getattr(response, "usage", None)
            prompt = getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", None)
            completion = getattr(usage, "completion_tokens", None) or getattr(
                usage, "output_tokens", None
            )
            meter.calls.append(CallRecord(time.perf_counter() - started, prompt, completion))
        return response

    return create_metered


async def structured_call(
    client: Any,
    response_model: type[M],
    user_text: str,
    config: LLMConfig,
    *,
    context: dict[str, Any] | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
) -> M:
    """One instructor call with errors translated into p8fs's typed errors."""
    system = system if system is not None else system_prompt_of(response_model)
    kwargs: dict[str, Any] = {
        "model": config.model,
        "response_model": response_model,
        "max_retries": config.max_retries,
        "context": context,
        "max_tokens": max_tokens or config.max_output_tokens,
    }
    if config.mode == "grammar":
        kwargs["extra_body"] = {"grammar": grammar_for(response_model)}
    if config.temperature is not None:
        kwargs["temperature"] = config.temperature
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
        error = translate_error(exc, response_model, config)
        lenient = _lenient(error, response_model, context)
        if lenient is None:
            raise error from exc
        log.warning(
            "%s: answer accepted once parsed leniently (%s)", response_model.__name__, error
        )
        return lenient
    return result


def _lenient(error: P8fsError, model: type[M], context: dict[str, Any] | None) -> M | None:
    """The last answer validated as it is, but parsed leniently.

    pydantic's JSON parser is strict: it refuses raw control characters inside strings (a
    newline that a llama.cpp grammar lets through), which instructor then re-asks about, at the
    cost of a whole call, often in vain. Parsed as most JSON parsers do, the same answer is
    validated once more with the same context; nothing in it is changed.
    """
    if type(error) is not AgentOutputError:
        return None
    raw = error.details.get("raw_output")
    if not raw:
        return None
    try:
        return model.model_validate(raw, context=context)
    except ValidationError:
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One line for an error: a validation error as its count and first problem."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or exc.title
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return _short(f"{where}: {first.get('msg', '')}{more}", limit)
    return _short(str(exc), limit)


def translate_error(exc: BaseException, model: type[BaseModel], config: LLMConfig) -> P8fsError:
    """An SDK or instructor exception → the p8fs error a worker can classify."""
    chain = _chain(exc)
    where = f"{config.provider} model {config.model!r}"
    retried = next((e for e in chain if type(e).__name__ == "InstructorRetryException"), None)
    failed = list(getattr(retried, "failed_attempts", None) or [])
    for err in chain:
        if isinstance(err, P8fsError):
            return err
        if type(err).__name__ == "IncompleteOutputException":
            completion = getattr(err, "last_completion", None)
            usage = getattr(completion, "usage", None)
            return AgentTruncatedError(
                f"{model.__name__}: {where} stopped before its answer was complete "
                f"({getattr(err, 'message', '') or 'max_tokens reached'}); the input is split "
                "where it can be, else raise P8FS_LLM_MAX_OUTPUT_TOKENS or use a model with a "
                "larger context window",
                attempts=1,
                usage=str(usage) if usage is not None else None,
                raw_text=_completion_text(completion),
            )
        status = getattr(err, "status_code", None)
        module = type(err).__module__.split(".", 1)[0]
        if module in ("anthropic", "openai"):
            name = type(err).__name__
            text = _error_text(err)
            if name == "AuthenticationError" or status in (401, 403):
                return ConfigurationError(
                    f"{where}: the API key was refused ({status}); check {config.key_variable}",
                    setting=config.key_variable,
                )
            window = learn_from_context_error(config, text) if status in (400, 413) else None
            if window is not None or "context_length_exceeded" in text:
                if failed:  # a re-ask (the failed answer appended) no longer fits
                    return AgentTruncatedError(
                        f"{model.__name__}: the answer did not validate "
                        f"({describe_error(failed[-1].exception)}) and the re-ask no longer "
                        f"fits {where}'s context window of {window} tokens",
                        attempts=len(failed),
                    )
                return AgentContextError(
                    f"{where}: the prompt does not fit its context window"
                    f"{f' of {window} tokens' if window else ''}: {_short(text, 300)}",
                    window=window,
                    prompt_tokens=requested_prompt_tokens(text),
                )
            if status == 404 and _model_not_found(text, config.model):
                return ConfigurationError(
                    f"{where} was not found by the service{retired_message(config.model)}: set "
                    f"{MODEL_SETTING} (or pass --model / model=) to a model it serves "
                    f"({_short(text, 200)})",
                    setting=MODEL_SETTING,
                    model=config.model,
                )
            if name in ("APIConnectionError", "APITimeoutError") or (
                isinstance(status, int) and (status in (408, 409, 429) or status >= 500)
            ):
                return AgentServiceError(
                    f"{where}: service unavailable after {config.sdk_max_retries} SDK retries: "
                    f"{name}{f' {status}' if status else ''}: {_short(text)}",
                    status_code=status,
                )
            return AgentRequestError(
                f"{where} refused the request: {name}{f' {status}' if status else ''}: "
                f"{_short(text)}",
                status_code=status,
            )
    attempts = int(getattr(exc, "n_attempts", 0) or 0) or len(failed)
    last = failed[-1].exception if failed else exc
    return AgentOutputError(
        f"{model.__name__}: the model's output did not validate after {attempts or '?'} "
        f"attempt(s); last error: {describe_error(last)}",
        attempts=attempts,
        last_error=str(last),
        attempt_errors=[describe_error(f.exception, 1000) for f in failed],
        raw_output=completion_json(failed[-1].completion) if failed else None,
    )


def _openai_texts(completion: Any) -> list[Any]:
    """What an OpenAI-style answer's first choice holds, in the order it is read: each tool
    call's arguments, then the message content."""
    texts: list[Any] = []
    for choice in (getattr(completion, "choices", None) or [])[:1]:
        message = choice.message
        texts += [c.function.arguments for c in (message.tool_calls or []) if c.function]
        texts.append(message.content)
    return texts


def _completion_text(completion: Any) -> str | None:
    """The raw text of an OpenAI-style answer (tool call arguments, else content)."""
    return next((str(text) for text in _openai_texts(completion) if text), None)


def salvage(
    model: type[M],
    text: str | None,
    context: dict[str, Any] | None,
    max_drops: int = 8,
    agent_input: AgentInput | None = None,
) -> M | None:
    """What a cut-off answer completed before it stopped, if that alone is valid.

    The JSON prefix is parsed as far as it goes (an unfinished string or item is left out);
    while it does not validate, the last item of its longest list (the one being written when
    the answer stopped) is dropped and it is tried again. Nothing is made up: every value kept
    is one the model wrote in full.
    """
    if not text:
        return None

    try:
        data = pydantic_core.from_json(text, allow_partial=True)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for _ in range(max_drops + 1):
        try:
            return model.model_validate(data, context=context)
        except ValidationError:
            if agent_input is not None and issubclass(model, AgentContract):
                repaired = model.repair(dict(data), agent_input)
                if repaired is not None:
                    return repaired
            lists = [k for k, v in data.items() if isinstance(v, list) and v]
            if not lists:
                return None
            longest = max(lists, key=lambda k: len(data[k]))
            data[longest] = data[longest][:-1]
    return None


def completion_json(completion: Any) -> dict[str, Any] | None:
    """The JSON object a completion answered with (tool call arguments, a tool_use block's
    input, or JSON text), as the service returned it; ``None`` when there is none."""
    candidates: list[Any] = []
    for block in getattr(completion, "content", None) or []:  # Anthropic Message
        if getattr(block, "type", None) == "tool_use":
            candidates.append(getattr(block, "input", None))
        elif getattr(block, "type", None) == "text":
            candidates.append(getattr(block, "text", None))
    candidates += _openai_texts(completion)  # OpenAI chat completion
    for candidate in candidates:
        if isinstance(candidate, dict):
            return candidate
        if isinstance(candidate, str) and candidate.strip():
            text = candidate.strip().removeprefix("```json").removeprefix("```")
            try:
                # strict=False: raw control characters inside strings (a newline a grammar
                # let through) are accepted here, as most JSON parsers do.
                value = json.loads(text.removesuffix("```").strip(), strict=False)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _error_text(err: BaseException) -> str:
    """The service's own error message (the body's ``error.message`` where there is one)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            code = inner.get("code")
            return str(inner["message"]) + (f" [{code}]" if code else "")
    return str(err)


def _model_not_found(text: str, model: str) -> bool:
    lowered = text.lower()
    return model.lower() in lowered or "model" in lowered


def _short(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
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
    """Run ``cls`` over ``data``: size, chunk, call, merge, finalize.

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
    await probe_server(config)
    ratio = await calibrate(cls, agent_input, config)
    parts = plan_parts(cls, agent_input, config, ratio)  # a setting too small fails here
    own_client = client is None
    client = client or make_client(config)
    try:
        return await _Run(cls, agent_input, client, config, ratio).run(parts)
    finally:
        if own_client:
            await close_client(client)


async def close_client(client: Any) -> None:
    """Close the SDK client under an instructor client (its HTTP connection pool)."""
    inner = getattr(client, "client", None)
    close = getattr(inner, "close", None)
    if close is not None:
        await close()


async def merge_results(
    cls: type[A], results: list[A], agent_input: AgentInput, config: LLMConfig
) -> A:
    """Finish results made elsewhere (a batch's parts) exactly as a direct run finishes its
    parts: merged the agent's way, then its final call (made directly), then postprocessed."""
    if len(results) == 1:
        return cls.postprocess(results[0], agent_input)
    client = make_client(config)
    try:
        finished: A = await _Run(cls, agent_input, client, config, 1.0).finish(list(results))
        return finished
    finally:
        await close_client(client)


async def all_or_none(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result in order, or the first failure with the other calls cancelled.

    ``asyncio.gather`` returns the first error but leaves the other parts running: their calls
    go on occupying the server and then fail against the client the run has closed
    ("Connection error" noise after the real error). A run that has failed stops them instead.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


#: How often one part may be re-planned (a learned window, a cut-off answer) before giving up.
MAX_REPLANS = 6
#: Halvings after cut-off answers before the runtime keeps what the answer completed instead.
#: Two (a quarter of the part, at most four calls more): after one, SmolLM2-135M on the llama.cpp
#: test server still wrote until max_tokens over half of a long transcript's second part and
#: completed nothing; a quarter it answers.
MAX_CUT_SPLITS = 2


@dataclass
class _Run:
    """One run's calls: every part answered, split further when it does not fit."""

    cls: type[AgentContract]
    agent_input: AgentInput
    client: Any
    config: LLMConfig
    ratio: float
    calls: int = 0
    splits: list[str] = field(default_factory=list)
    #: How many times a part's ancestors were split because an answer was cut off.
    cut_depth: dict[int, int] = field(default_factory=dict)

    async def run(self, parts: list[Part]) -> Any:
        limiter = asyncio.Semaphore(self.config.concurrency)
        total = len(parts)

        async def one(index: int, part: Part) -> list[Any]:
            return await self.solve(part, index + 1, total, limiter, 0)

        log.info(
            "%s: %d record(s) in %d call(s)",
            self.cls.__name__,
            len(self.agent_input.records),
            total,
        )
        nested = await all_or_none([one(i, p) for i, p in enumerate(parts)])
        return await self.finish([r for group in nested for r in group])

    async def finish(self, results: list[Any]) -> Any:
        """One result as it is; several merged the agent's way, then its final call."""
        if len(results) == 1:
            return self.cls.postprocess(results[0], self.agent_input)
        merged = self.cls.merge(results, self.agent_input)

        async def follow_up(response_model: type[M], text: str) -> M:
            prompt = prompt_overhead(response_model, None, self.config, self.ratio)
            prompt += count_tokens(text, self.config, self.ratio)
            return await structured_call(
                self.client,
                response_model,
                text,
                self.config,
                max_tokens=max_tokens_for(self.config, prompt),
            )

        merged = await self.cls.finalize(merged, follow_up, self.agent_input)
        return self.cls.postprocess(merged, self.agent_input)

    async def solve(
        self, part: Part, number: int, total: int, limiter: asyncio.Semaphore, depth: int
    ) -> list[Any]:
        """Answer one part; a part that does not fit or whose answer is cut off is split (the
        window learned from the error where there was one) and each piece answered."""
        text = user_message(self.agent_input, part.text, number, total)
        # The message carries the header itself: the overhead here is the rest.
        prompt = prompt_overhead(self.cls, None, self.config, self.ratio)
        prompt += count_tokens(text, self.config, self.ratio)
        max_tokens = max_tokens_for(self.config, prompt)
        try:
            if max_tokens < MIN_ANSWER_TOKENS and len(part.records) > 1:
                raise AgentTruncatedError(
                    f"only {max_tokens} tokens would be left for the answer", attempts=0
                )
            async with limiter:
                self.calls += 1
                result = await structured_call(
                    self.client,
                    self.cls,
                    text,
                    self.config,
                    context=self.agent_input.context,
                    max_tokens=max_tokens,
                )
            return [result]
        except AgentContextError as exc:
            if exc.prompt_tokens and exc.prompt_tokens > prompt:
                # The server counted more than we did (its chat template, a schema it shows):
                # later estimates add the difference (parts failing together add it once).
                facts = facts_for(self.config)
                needed = facts.prompt_correction + exc.prompt_tokens - prompt
                facts.prompt_correction = max(facts.prompt_correction, needed)
            if depth >= MAX_REPLANS:
                raise
            smaller = plan_parts(self.cls, self.agent_input, self.config, self.ratio, part.records)
            if len(smaller) == 1:
                if len(part.records) == 1:
                    raise
                smaller = self._halves(part)
            reason: str = str(exc)
        except AgentTruncatedError as exc:
            cuts = self.cut_depth.get(id(part), 0)
            if len(part.records) == 1 or depth >= MAX_REPLANS or cuts >= MAX_CUT_SPLITS:
                # Splitting further would not help (a model that writes until it is stopped
                # does so on any input): keep what the answer completed, if that is valid.
                kept = salvage(
                    self.cls,
                    exc.details.get("raw_text"),
                    self.agent_input.context,
                    agent_input=self.agent_input,
                )
                if kept is None:
                    raise
                log.warning(
                    "%s: part %d kept what its cut-off answer completed", self.cls.__name__, number
                )
                return [kept]
            smaller = self._halves(part)
            for piece in smaller:
                self.cut_depth[id(piece)] = cuts + 1
            reason = str(exc)
        except AgentOutputError as exc:
            repaired = self.cls.repair(exc.details.get("raw_output"), self.agent_input)
            if repaired is None:
                raise
            log.warning("%s: part %d kept after repair (%s)", self.cls.__name__, number, exc)
            return [repaired]
        self.splits.append(f"part {number}: {reason}")
        log.info("%s: part %d split into %d (%s)", self.cls.__name__, number, len(smaller), reason)
        groups = await all_or_none(
            [self.solve(p, number, total, limiter, depth + 1) for p in smaller]
        )
        return [r for group in groups for r in group]

    @staticmethod
    def _halves(part: Part) -> list[Part]:
        middle = len(part.records) // 2
        return [
            Part(part.records[:middle], _join(part.records[:middle])),
            Part(part.records[middle:], _join(part.records[middle:])),
        ]


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
