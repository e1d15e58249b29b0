"""The typed errors of p8fs, and the one bit that matters to a queue: is it worth retrying?

A worker settles every message by this classification: a *permanent* error (the file is corrupt,
encrypted, unsupported, too large, gone) will fail the same way on every delivery, so it is
recorded, dead-lettered and terminated at once; a *transient* one (database, object store or
broker unreachable) is retried with a growing delay. Anything that is not a ``P8fsError`` is
treated as permanent by the pipeline after being recorded, since nobody knows it would heal.
"""

from __future__ import annotations

from typing import Any


class P8fsError(Exception):
    """Base of every error p8fs raises on purpose."""

    #: Retrying cannot help; the queue should dead-letter the message.
    permanent: bool = True
    #: A short stable name for the kind of failure, stored in ``errors.metadata.code``.
    code: str = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class ConfigurationError(P8fsError):
    """A setting is missing or wrong; the message names the setting to fix."""

    code = "configuration"


class PluginError(P8fsError):
    """A plugin could not be loaded or registered something invalid."""

    code = "plugin"


class ProviderError(P8fsError):
    """The content of a file cannot be turned into text."""

    code = "provider"


class UnsupportedContent(ProviderError):
    """No provider claims this file's type."""

    code = "unsupported"


class CorruptDocument(ProviderError):
    """The file is damaged or truncated beyond what its provider can read."""

    code = "corrupt"


class EncryptedDocument(ProviderError):
    """The file is encrypted and no (correct) password was given."""

    code = "encrypted"


class EmptyDocument(ProviderError):
    """The file has no bytes at all, or no text but whitespace (``chunking.require_text``)."""

    code = "empty"


class LimitExceeded(ProviderError):
    """The file exceeds a configured safety limit (size, pages, duration, decompression)."""

    code = "limit"


class DocumentTimeout(ProviderError):
    """Extraction took longer than the per-document time limit."""

    code = "timeout"


class ProviderUnavailable(ProviderError):
    """The provider's optional dependencies are not installed; the message names the extra."""

    code = "unavailable"


class SourceNotFound(P8fsError):
    """The file named by the event or path does not exist (any more)."""

    code = "not_found"


class InvalidPath(P8fsError):
    """A path or tenant is malformed or hostile (traversal, NUL, mismatched tenant)."""

    code = "invalid_path"


class TransientError(P8fsError):
    """A dependency (database, object store, broker) failed in a way that may heal on retry."""

    permanent = False
    code = "transient"


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying ``exc`` is pointless. Unknown exceptions count as permanent."""
    if isinstance(exc, P8fsError):
        return exc.permanent
    return True


def error_code(exc: BaseException) -> str:
    """The stable code stored with an error row (``type`` name for foreign exceptions)."""
    if isinstance(exc, P8fsError):
        return exc.code
    return type(exc).__name__
