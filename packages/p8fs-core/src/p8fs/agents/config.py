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

from p8fs.errors import ConfigurationError
from p8fs.settings import Settings

Provider = Literal["anthropic", "openai"]


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
    max_output_tokens: int = Field(8192, ge=256, description="max_tokens of each call.")
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

    @property
    def key_variable(self) -> str:
        return "ANTHROPIC_API_KEY" if self.provider == "anthropic" else "OPENAI_API_KEY"


def split_model_name(name: str, default_provider: Provider | None = None) -> tuple[Provider, str]:
    """``"openai/gpt-4o"`` → ``("openai", "gpt-4o")``; a bare name uses the default provider.

    A bare name that is unmistakably OpenAI's (``gpt-*``, ``o1``/``o3``/``o4``...) goes to OpenAI
    when no provider is configured, so ``--model gpt-4o`` does what its user means.
    """
    prefix, sep, rest = name.partition("/")
    if sep and prefix in ("anthropic", "openai"):
        return prefix, rest  # type: ignore[return-value]
    if default_provider is not None:
        return default_provider, name
    lowered = name.lower()
    if lowered.startswith(("gpt-", "chatgpt-")) or (
        len(lowered) > 1 and lowered[0] == "o" and lowered[1].isdigit()
    ):
        return "openai", name
    return "anthropic", name


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
    provider, model_name = split_model_name(model or settings.default_model, llm.provider)
    if provider == "anthropic":
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
        raise ConfigurationError(
            f"no API key for {provider} (model {model_name!r}): set {variable}"
            + (
                ", or point P8FS_LLM_BASE_URL at a self-hosted OpenAI-compatible server"
                if provider == "openai"
                else ""
            ),
            setting=variable,
        )
    values: dict[str, object] = {
        "context_tokens": llm.context_tokens,
        "max_output_tokens": llm.max_output_tokens,
        "max_retries": llm.max_retries,
        "sdk_max_retries": llm.sdk_max_retries,
        "timeout": llm.timeout,
        "concurrency": llm.concurrency,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return LLMConfig(
        provider=provider,
        model=model_name,
        api_key=api_key,
        base_url=base_url,
        encoding=settings.token_encoding,
        **values,  # type: ignore[arg-type]
    )
