"""Model lifecycle: refuse a retired Claude model before any request, warn once on a deprecated one.

Anthropic retires models on announced dates; a request to a retired model fails with a bare
404. The installed ``anthropic`` SDK carries the announced dates (``anthropic._data.
DEPRECATED_MODELS``, model → "November 30th, 2026"), but it only raises a ``DeprecationWarning``
that Python hides by default. We read the SDK's own table (never a copy of it, so upgrading the
SDK updates the dates) and turn it into something a user sees: a :class:`ConfigurationError`
naming the model, the date and ``P8FS_DEFAULT_MODEL`` once the date has passed, and one
logged warning with the date before that.

``today`` is a parameter everywhere so tests pin the date and do not rot as the calendar moves.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime

from p8fs.errors import ConfigurationError

log = logging.getLogger(__name__)

#: The setting that chooses the model when a call names none (named in every error).
MODEL_SETTING = "P8FS_DEFAULT_MODEL"

_warned: set[str] = set()
_DATE = re.compile(r"^\s*([A-Za-z]+)\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})\s*$")


def deprecated_models() -> dict[str, str]:
    """The SDK's table of deprecated models and their end-of-life dates (as the SDK words them).

    Empty when the SDK is not installed or no longer has the table (then nothing is checked:
    the API's own 404 still comes back translated by the runtime).
    """
    try:
        from anthropic._data import DEPRECATED_MODELS
    except ImportError:  # pragma: no cover - SDK missing or reorganised
        return {}
    return dict(DEPRECATED_MODELS)


def parse_sdk_date(text: str) -> date | None:
    """``"November 30th, 2026"`` → ``date(2026, 11, 30)``; ISO dates too; ``None`` if unreadable."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        pass
    match = _DATE.match(text)
    if match is None:
        return None
    month, day, year = match.groups()
    try:
        return datetime.strptime(f"{month[:3]} {day} {year}", "%b %d %Y").date()
    except ValueError:
        return None


def end_of_life(model: str) -> date | None:
    """The model's announced end-of-life date, or ``None`` when it is not deprecated."""
    text = deprecated_models().get(model)
    return parse_sdk_date(text) if text else None


def today_utc() -> date:
    return datetime.now(UTC).date()


def check_model(model: str, *, today: date | None = None) -> None:
    """Raise for a retired model; log one warning (per process and model) for a deprecated one.

    Only Anthropic model names are in the SDK's table, so other providers' names pass through.
    """
    eol = end_of_life(model)
    if eol is None:
        return
    today = today or today_utc()
    if today >= eol:
        raise ConfigurationError(
            f"model {model!r} reached its end of life on {eol.isoformat()} and no longer "
            f"answers; set {MODEL_SETTING} (or pass --model / model=) to a current model, "
            f"e.g. {newest_sonnet() or 'a newer Claude model'}",
            setting=MODEL_SETTING,
            model=model,
            end_of_life=eol.isoformat(),
        )
    if model not in _warned:
        _warned.add(model)
        log.warning(
            "model %r is deprecated and reaches its end of life on %s; set %s to a newer model "
            "(e.g. %s) before then",
            model,
            eol.isoformat(),
            MODEL_SETTING,
            newest_sonnet() or "a newer Claude model",
        )


def retired_message(model: str, *, today: date | None = None) -> str:
    """Words for a "model not found" answer: the end-of-life date when the SDK knows one."""
    eol = end_of_life(model)
    if eol is not None and (today or today_utc()) >= eol:
        return f" (it reached its end of life on {eol.isoformat()})"
    return ""


def _version(name: str) -> tuple[int, ...] | None:
    """``claude-sonnet-4-6`` → ``(4, 6)``; dated snapshots and other shapes → ``None``."""
    match = re.fullmatch(r"claude-sonnet-(\d+(?:-\d{1,2})*)", name)
    if match is None:
        return None
    return tuple(int(p) for p in match.group(1).split("-"))


def sdk_models() -> list[str]:
    """The model names the installed SDK knows (its ``Model`` type's literal values)."""
    try:
        from typing import get_args

        from anthropic.types import Model
    except ImportError:  # pragma: no cover - SDK missing
        return []
    names: list[str] = []
    for arg in get_args(Model):
        names += [a for a in get_args(arg) if isinstance(a, str)]
    return names


def newest_sonnet() -> str | None:
    """The newest Sonnet alias of the installed SDK that is not deprecated.

    The project's default (``Settings.default_model``) is this name written down once; a test
    checks that the two agree, so upgrading the SDK past a new Sonnet is noticed.
    """
    deprecated = deprecated_models()
    candidates = [
        (version, name)
        for name in sdk_models()
        if name not in deprecated and (version := _version(name)) is not None
    ]
    return max(candidates)[1] if candidates else None
