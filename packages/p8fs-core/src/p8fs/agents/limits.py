"""How much one call may carry: the context window, the server's tokenizer, the answer's budget.

A call must fit the model's context window *whole*: prompt (system, schema where it is part of
the prompt, header, data) plus the answer (``max_tokens``). Asking for ``max_tokens`` the window
cannot hold is refused by strict servers (OpenAI, vLLM) and silently shortened by others
(llama-cpp-python), which then cut the answer off mid-JSON. So every call's ``max_tokens`` is
what is left of the window after its prompt (capped by ``P8FS_LLM_MAX_OUTPUT_TOKENS``), and
input chunks are sized to leave room for an answer.

Where the numbers come from, best first:

* the window: ``P8FS_LLM_CONTEXT_WINDOW``; what the server reports (llama.cpp's ``/props``,
  ``max_model_len`` of vLLM's ``/v1/models``, LM Studio's ``loaded_context_length``); what the
  server's first context-length error says ("maximum context length is 4096 tokens" — OpenAI,
  vLLM and llama-cpp-python all word it so); else the provider's published size.
* token counts: the server's own tokenizer (llama-cpp-python's ``/extras/tokenize/count``,
  llama.cpp's ``/tokenize``) calibrates the ``o200k_base`` counts the chunker uses, as a ratio
  measured on the input itself; Claude's tokenizer is not public, so ``o200k_base`` stands.

What a run learns (a window from an error) is kept per server and model for the process, so
the next run does not pay for the same lesson.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from p8fs.agents.config import LLMConfig

log = logging.getLogger(__name__)

#: Tokens kept free for the wrapping of a call (role markers, tool framing, part notes).
FRAMING_TOKENS = 200
#: Share of the window kept for the answer when chunks are planned (capped by max_output_tokens).
ANSWER_SHARE = 3
#: Smallest answer budget worth sending; below it the chunk is split instead.
MIN_ANSWER_TOKENS = 256
#: Tokens of the "(This is part i of n ...)" note added to a part's message.
PART_NOTE_TOKENS = 40
#: Calibrated counts are raised by this much: chunk edges and chat templates add a little.
COUNT_SAFETY = 1.05

_CONTEXT_ERROR = re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE)
_REQUESTED = re.compile(r"(\d+) in the messages", re.IGNORECASE)


@dataclass
class ServerFacts:
    """What is known about one server and model: its window, and how to count its tokens."""

    context_window: int | None = None
    window_source: str = ""
    tokenizer: str | None = None  # "llama-cpp-python" | "llama.cpp"
    root_url: str | None = None
    probed: bool = False
    #: Prompt tokens the server counted beyond our estimate (its chat template, tools it shows).
    prompt_correction: int = 0
    notes: list[str] = field(default_factory=list)


_FACTS: dict[tuple[str, str], ServerFacts] = {}


def facts_for(config: LLMConfig) -> ServerFacts:
    """The facts kept for this server and model (empty until probed or learned)."""
    key = (config.base_url or config.provider, config.model)
    return _FACTS.setdefault(key, ServerFacts())


def forget_servers() -> None:
    """Drop everything learned (tests start servers on new ports with other windows)."""
    _FACTS.clear()


def root_of(base_url: str) -> str:
    """``http://h:8000/v1`` → ``http://h:8000`` (llama.cpp's own routes live at the root)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _window_from_models(payload: Any, model: str) -> tuple[int | None, str]:
    entries = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(entries, list) or not entries:
        return None, ""
    chosen = next((e for e in entries if isinstance(e, dict) and e.get("id") == model), None)
    if chosen is None and len(entries) == 1 and isinstance(entries[0], dict):
        chosen = entries[0]
    if chosen is None:
        return None, ""
    for key in ("max_model_len", "loaded_context_length", "context_length", "max_context_length"):
        value = chosen.get(key)
        if isinstance(value, int) and value > 0:
            return value, f"/v1/models {key}"
    meta = chosen.get("meta")
    if isinstance(meta, dict):
        for key in ("n_ctx", "n_ctx_train"):
            value = meta.get(key)
            if isinstance(value, int) and value > 0:
                return value, f"/v1/models meta.{key}"
    return None, ""


async def probe_server(config: LLMConfig) -> ServerFacts:
    """Ask a self-hosted server for its window and tokenizer (once per process and model).

    Every probe is optional: a server that answers none of them keeps the defaults, and a
    failure here is logged, never raised (the real call will say what is wrong).
    """
    facts = facts_for(config)
    if facts.probed or not config.self_hosted or config.base_url is None:
        return facts
    facts.probed = True
    import httpx

    root = root_of(config.base_url)
    facts.root_url = root
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    async with httpx.AsyncClient(timeout=5.0, headers=headers) as http:

        async def get(url: str) -> Any:
            try:
                response = await http.get(url)
                return response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None

        async def post(url: str, body: dict[str, Any]) -> Any:
            try:
                response = await http.post(url, json=body)
                return response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None

        if config.context_window is None:
            props = await get(root + "/props")
            if isinstance(props, dict):
                settings = props.get("default_generation_settings") or {}
                n_ctx = props.get("n_ctx") or settings.get("n_ctx")
                if isinstance(n_ctx, int) and n_ctx > 0:
                    facts.context_window, facts.window_source = n_ctx, "/props n_ctx"
            if facts.context_window is None:
                window, source = _window_from_models(
                    await get(config.base_url.rstrip("/") + "/models"), config.model
                )
                if window:
                    facts.context_window, facts.window_source = window, source
        counted = await post(root + "/extras/tokenize/count", {"input": "hello world"})
        if isinstance(counted, dict) and isinstance(counted.get("count"), int):
            facts.tokenizer = "llama-cpp-python"
        else:
            tokens = await post(root + "/tokenize", {"content": "hello world"})
            if isinstance(tokens, dict) and isinstance(tokens.get("tokens"), list):
                facts.tokenizer = "llama.cpp"
    log.info(
        "server %s: context window %s (%s), tokenizer %s",
        config.base_url,
        facts.context_window,
        facts.window_source or "not reported",
        facts.tokenizer or "none",
    )
    return facts


async def server_token_count(config: LLMConfig, facts: ServerFacts, text: str) -> int | None:
    """Tokens of ``text`` by the server's own tokenizer, or ``None`` when it has none."""
    if facts.tokenizer is None or facts.root_url is None:
        return None
    import httpx

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=30.0, headers=headers) as http:
            if facts.tokenizer == "llama-cpp-python":
                response = await http.post(
                    facts.root_url + "/extras/tokenize/count", json={"input": text}
                )
                return int(response.json()["count"])
            response = await http.post(facts.root_url + "/tokenize", json={"content": text})
            return len(response.json()["tokens"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def learn_from_context_error(config: LLMConfig, message: str) -> int | None:
    """Remember the window a context-length error states; returns it (``None``: not such an
    error). The prompt size it reports, when larger than ours, corrects later estimates."""
    match = _CONTEXT_ERROR.search(message)
    if match is None:
        return None
    window = int(match.group(1))
    facts = facts_for(config)
    if config.context_window is None:
        facts.context_window, facts.window_source = window, "the server's context-length error"
    return window


def window_of(config: LLMConfig) -> tuple[int | None, str]:
    """The window in force and where it came from."""
    if config.context_window is not None:
        return config.context_window, "P8FS_LLM_CONTEXT_WINDOW"
    facts = facts_for(config)
    if facts.context_window is not None:
        return facts.context_window, facts.window_source
    default = config.default_window()
    return default, ("the provider's published window" if default else "")


def answer_reserve(config: LLMConfig, window: int) -> int:
    """Tokens of the window kept for the answer when input is planned: the answer itself, the
    safety margin :func:`max_tokens_for` keeps, and the "part i of n" note."""
    answer = min(config.max_output_tokens, max(window // ANSWER_SHARE, MIN_ANSWER_TOKENS))
    return answer + window_margin(window) + PART_NOTE_TOKENS


def window_margin(window: int) -> int:
    """Tokens of the window never planned for: chat-template tokens we cannot count."""
    return max(32, window // 50)


def max_tokens_for(config: LLMConfig, prompt_tokens: int) -> int:
    """``max_tokens`` of one call: what the window leaves after the prompt, capped by the
    setting. Without a known window, the setting."""
    window, _ = window_of(config)
    if window is None:
        return config.max_output_tokens
    margin = window_margin(window)
    return max(1, min(config.max_output_tokens, window - prompt_tokens - margin))


def requested_prompt_tokens(message: str) -> int | None:
    """The prompt size a context-length error reports ("... (4386 in the messages, ...")."""
    match = _REQUESTED.search(message)
    return int(match.group(1)) if match else None
