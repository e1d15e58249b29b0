"""Which LLM an agent talks to, resolved from a model name and ``P8FS_LLM_*`` settings.

The SDKs' own variables keep working as their users expect (``ANTHROPIC_API_KEY``,
``ANTHROPIC_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); p8fs adds only what the SDKs do
not know: which provider a bare model name means, where a self-hosted OpenAI-compatible server
lives, and how much input one call may carry before the agent splits it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from p8fs.agents.lifecycle import check_model
from p8fs.errors import ConfigurationError
from p8fs.settings import Settings

Provider = Literal["anthropic", "openai"]
#: How the model is made to answer in the agent's schema (instructor's mode), per provider:
#: ``tools`` a forced tool/function call (Anthropic, OpenAI, vLLM, llama.cpp; llama-cpp-python
#: turns it into a JSON-schema grammar), ``json_schema`` the response_format structured output
#: (OpenAI, vLLM, llama.cpp's C++ server; sent in llama-cpp-python's own ``json_object`` +
#: ``schema`` form when the server is that one; Anthropic's structured outputs), ``grammar`` a
#: GBNF grammar written from the schema in the request's ``grammar`` field (llama.cpp's servers;
#: the strongest constraint a local server offers), ``json`` JSON mode with the schema in the
#: system prompt (servers without tool calling), ``md_json`` JSON in a Markdown block (anything
#: that returns text; OpenAI-compatible only).
StructuredOutput = Literal["auto", "tools", "json_schema", "grammar", "json", "md_json"]

#: Context windows (prompt + answer) assumed when neither the setting nor the server says.
DEFAULT_WINDOWS: dict[str, int] = {"anthropic": 200_000, "openai": 128_000}


class LLMSettings(BaseSettings):
    """Agent runtime settings (``P8FS_LLM_*``)."""

    model_config = SettingsConfigDict(env_prefix="P8FS_LLM_", env_file=".env", extra="ignore")

    provider: Provider | None = Field(
        None,
        description="Provider for model names without a prefix: anthropic (default) or openai "
        "(any OpenAI-compatible server, e.g. a self-hosted model with P8FS_LLM_BASE_URL).",
    )
    base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...). "
        "Anthropic's is ANTHROPIC_BASE_URL, read by its SDK.",
    )
    context_tokens: int = Field(
        150_000,
        ge=256,
        description="Input tokens one call may carry (prompt + schema + data); larger input is "
        "split into chunks whose results are merged.",
    )
    context_window: int | None = Field(
        None,
        ge=512,
        description="The model's whole context in tokens (prompt + answer). Unset: what the "
        "server reports (llama.cpp /props, vLLM and LM Studio /v1/models), else learned from "
        "the server's first context-length error, else 200000 for Anthropic and 128000 for "
        "OpenAI. Input chunks and each call's max_tokens are sized to fit it.",
    )
    max_output_tokens: int = Field(
        8192,
        ge=256,
        description="Most tokens one answer may use (max_tokens); lowered per call so that "
        "prompt + answer fit the context window.",
    )
    structured_output: StructuredOutput = Field(
        "auto",
        description="How the answer is forced into the agent's schema: tools (a forced tool "
        "call), json_schema (response_format structured output), grammar (a GBNF grammar "
        "written from the schema, in the request's grammar field: llama.cpp servers), json "
        "(JSON mode, schema in the prompt), md_json (JSON in a Markdown block). auto: tools, "
        "which Anthropic, OpenAI, vLLM and llama.cpp servers all honour.",
    )
    temperature: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description="Sampling temperature sent with every request; unset: the server's default. "
        "0 makes a local model's answers repeatable (greedy decoding).",
    )
    max_retries: int = Field(
        2, ge=0, description="instructor re-asks after output that fails validation."
    )
    sdk_max_retries: int = Field(
        4, ge=0, description="HTTP retries by the SDK on 429/5xx/529 and connection errors."
    )
    timeout: float = Field(600.0, gt=0, description="Seconds one HTTP request may take.")
    concurrency: int = Field(4, ge=1, description="Chunks of one input processed at once.")


@dataclass(frozen=True)
class LLMConfig:
    """Everything one agent run needs to reach its model."""

    provider: Provider
    model: str
    api_key: str | None = field(repr=False)  # never in a log line or a traceback
    base_url: str | None
    context_tokens: int
    max_output_tokens: int
    max_retries: int
    sdk_max_retries: int
    timeout: float
    concurrency: int
    encoding: str = "o200k_base"
    context_window: int | None = None
    structured_output: StructuredOutput = "auto"
    temperature: float | None = None
    #: Why this provider was chosen, for error messages ("the anthropic/ prefix", ...).
    route: str = ""

    @property
    def key_variable(self) -> str:
        return "ANTHROPIC_API_KEY" if self.provider == "anthropic" else "OPENAI_API_KEY"

    @property
    def self_hosted(self) -> bool:
        """An OpenAI-compatible server of the user's own (a base URL other than OpenAI's)."""
        return (
            self.provider == "openai"
            and self.base_url is not None
            and "api.openai.com" not in self.base_url
        )

    @property
    def mode(self) -> str:
        """The structured-output mode in effect (``auto`` resolved)."""
        if self.structured_output == "auto":
            return "tools"
        return self.structured_output

    @property
    def schema_in_prompt(self) -> bool:
        """Whether the schema costs prompt tokens: hosted APIs render tools into the prompt and
        JSON modes put the schema in the system message; a self-hosted server enforcing tools,
        json_schema or grammar with a grammar usually does not show the schema to the model at
        all (if its chat template does, its first context-length error corrects the estimate)."""
        if self.mode in ("json", "md_json"):
            return True
        return not self.self_hosted

    def default_window(self) -> int | None:
        """The context window when neither the setting nor the server tells."""
        if self.context_window is not None:
            return self.context_window
        if self.self_hosted:
            return None
        return DEFAULT_WINDOWS.get(self.provider)


def _route(
    name: str, default_provider: Provider | None, base_url: str | None
) -> tuple[Provider, str, str]:
    """Provider, model name, and the reason (for error messages).

    ``"openai/gpt-4o"`` is ``("openai", "gpt-4o")``. A bare name goes to the configured
    provider, else to the configured OpenAI-compatible server when ``P8FS_LLM_BASE_URL`` is set
    (the user said where their models live; ``anthropic/<name>`` still reaches Anthropic); a
    bare name that is unmistakably OpenAI's (``gpt-*``, ``o1``/``o3``/``o4``...) goes to OpenAI,
    so ``--model gpt-4o`` does what its user means; anything else to Anthropic.
    """
    prefix, sep, rest = name.partition("/")
    if sep and prefix in ("anthropic", "openai"):
        return prefix, rest, f"the {prefix}/ prefix"  # type: ignore[return-value]
    if default_provider is not None:
        return default_provider, name, f"P8FS_LLM_PROVIDER={default_provider}"
    if base_url:
        return "openai", name, "P8FS_LLM_BASE_URL is set"
    lowered = name.lower()
    if lowered.startswith(("gpt-", "chatgpt-")) or (
        len(lowered) > 1 and lowered[0] == "o" and lowered[1].isdigit()
    ):
        return "openai", name, "an OpenAI model name"
    return "anthropic", name, "the default provider"


def resolve_llm(
    model: str | None = None,
    *,
    settings: Settings | None = None,
    llm: LLMSettings | None = None,
    require_key: bool = True,
    **overrides: object,
) -> LLMConfig:
    """Resolve the provider, model, key and limits for one run.

    Raises :class:`ConfigurationError` naming ``ANTHROPIC_API_KEY`` (or ``OPENAI_API_KEY``) when
    the key is missing, before any request is made. A self-hosted OpenAI-compatible server
    (``P8FS_LLM_BASE_URL``/``OPENAI_BASE_URL``) may run without a key.
    """
    settings = settings or Settings()
    llm = llm or LLMSettings()
    provider, model_name, route = _route(
        model or settings.default_model, llm.provider, llm.base_url
    )
    if provider == "anthropic":
        check_model(model_name)  # a retired model fails here, before any request
        secret = settings.anthropic_api_key
        base_url = None  # the SDK reads ANTHROPIC_BASE_URL itself
    else:
        secret = settings.openai_api_key
        base_url = llm.base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = secret.get_secret_value() if secret is not None else None
    if not api_key and provider == "openai" and base_url:
        api_key = "not-needed"  # self-hosted servers usually ignore the key; the SDK wants one
    if not api_key and require_key:
        variable = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
        ignored = (
            f"; P8FS_LLM_BASE_URL ({llm.base_url}) is not used for {provider} models "
            f"(chosen by {route})"
            if llm.base_url and provider == "anthropic"
            else ""
        )
        raise ConfigurationError(
            f"no API key for {provider} (model {model_name!r}, chosen by {route}): set {variable}"
            + (
                ", or point P8FS_LLM_BASE_URL at a self-hosted OpenAI-compatible server"
                if provider == "openai"
                else ""
            )
            + ignored,
            setting=variable,
        )
    values: dict[str, object] = {
        "context_tokens": llm.context_tokens,
        "max_output_tokens": llm.max_output_tokens,
        "max_retries": llm.max_retries,
        "sdk_max_retries": llm.sdk_max_retries,
        "timeout": llm.timeout,
        "concurrency": llm.concurrency,
        "context_window": llm.context_window,
        "structured_output": llm.structured_output,
        "temperature": llm.temperature,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return LLMConfig(
        provider=provider,
        model=model_name,
        api_key=api_key,
        base_url=base_url,
        encoding=settings.token_encoding,
        route=route,
        **values,  # type: ignore[arg-type]
    )
