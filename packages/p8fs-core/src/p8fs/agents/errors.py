"""The typed errors of running an agent, classified for the queue like every p8fs error.

An LLM that keeps answering outside the schema will do so again (permanent); a server that is
overloaded or down may recover (transient). Workers store either in ``errors`` and settle the job
by :func:`p8fs.errors.is_permanent`.
"""

from __future__ import annotations

from typing import Any

from p8fs.errors import P8fsError


class AgentOutputError(P8fsError):
    """The model's output failed validation on every attempt instructor made."""

    code = "agent_output"

    def __init__(self, message: str, *, attempts: int = 0, **details: Any) -> None:
        super().__init__(message, attempts=attempts, **details)
        self.attempts = attempts


class AgentServiceError(P8fsError):
    """The LLM service failed (5xx, overloaded, rate limited, unreachable) after the SDK's retries."""

    permanent = False
    code = "llm_unavailable"

    def __init__(self, message: str, *, status_code: int | None = None, **details: Any) -> None:
        super().__init__(message, status_code=status_code, **details)
        self.status_code = status_code


class AgentRequestError(P8fsError):
    """The LLM service refused the request itself (400, 404, 413): retrying cannot help."""

    code = "llm_request"

    def __init__(self, message: str, *, status_code: int | None = None, **details: Any) -> None:
        super().__init__(message, status_code=status_code, **details)
        self.status_code = status_code


class InvalidAgentInput(P8fsError):
    """The input handed to an agent cannot be read (invalid JSON, wrong shape, empty)."""

    code = "invalid_input"

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, source=source, line=line, column=column, **details)
        self.source = source
        self.line = line
        self.column = column


class AgentTruncatedError(AgentOutputError):
    """The answer was cut off (at ``max_tokens`` or the end of the context window) before its
    JSON closed. The runtime splits the input and tries again; this is raised when the input
    cannot be split further."""

    code = "agent_truncated"


class AgentContextError(AgentRequestError):
    """The server refused a prompt larger than its context window. ``window`` is the size it
    stated, ``prompt_tokens`` the prompt it counted (when it said); the runtime re-plans with
    them."""

    code = "context_length_exceeded"

    def __init__(
        self,
        message: str,
        *,
        window: int | None = None,
        prompt_tokens: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, status_code=400, window=window, **details)
        self.window = window
        self.prompt_tokens = prompt_tokens
