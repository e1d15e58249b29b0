"""Scrubbing secrets from anything p8fs shows: log lines, error rows, dead letters, CLI output.

Secrets reach text by three roads, and each has its rule here, so that every place that prints
something from outside asks one module instead of knowing the roads itself:

* **settings**: the values of ``SecretStr`` fields (database, S3, NATS, LLM credentials) and
  passwords written inside URL settings (``P8FS_DATABASE_URL``, ``P8FS_NATS_URL``);
* **URLs** anywhere in a text: ``scheme://user:password@host`` keeps the user, loses the password;
  ``scheme://token@host`` loses the token;
* **mappings** from outside (an event's ``metadata``, the ``x-amz-meta-*`` of an object): values
  under keys that name a secret (``password``, ``secret``, ``token``, ``api_key``, ...).

Masking keeps the shape (``***`` where the secret was) so a reader still sees *that* a value was
given, which is often the whole diagnosis ("a password was sent, and it was wrong").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from pydantic import SecretStr

MASK = "***"

#: ``scheme://userinfo@`` in running text; the userinfo is what may hold a secret.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"<>]+)@")

#: Words that make a mapping key a secret's name when they are one of its parts.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "creds",
        "auth",
        "authorization",
        "cookie",
        "seed",
    }
)
_KEY_PARTS = re.compile(r"[^a-z0-9]+")

#: Secrets shorter than this are not searched for in free text (masking every "a" in a log
#: because a test set the password "a" would destroy the text and protect nothing).
MIN_SECRET_LENGTH = 4


def is_secret_key(name: str) -> bool:
    """Whether a mapping key names a secret: ``password``, ``x-amz-meta-password``,
    ``api_key``, ``s3SecretKey``... but not ``token_count`` or ``keyword``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name)).lower()
    parts = [p for p in _KEY_PARTS.split(spaced) if p]
    if not parts:
        return False
    if "password" in spaced or "secret" in spaced:
        return True
    return parts[-1] in _SECRET_WORDS


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/...`` → ``scheme://user:***@host/...``; a lone
    ``scheme://token@host`` → ``scheme://***@host``. Anything else is returned unchanged."""
    return _URL_USERINFO.sub(_mask_userinfo, url)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _secret = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"


def url_secrets(url: str) -> list[str]:
    """The password (or token) written in a URL's userinfo, raw and percent-decoded."""
    found: list[str] = []
    for match in _URL_USERINFO.finditer(url):
        user, sep, secret = match["userinfo"].partition(":")
        value = secret if sep else user
        if value:
            found.extend({value, unquote(value)})
    return found


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL userinfo secrets masked and every known secret value replaced."""
    out = redact_url(text)
    for secret in sorted(
        {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
    ):
        out = out.replace(secret, MASK)
    return out


def redact_mapping(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``data`` (mappings, lists, strings, nested) with values under secret keys
    masked and secrets in strings redacted as by :func:`redact_text`."""
    known = list(secrets)
    if isinstance(data, Mapping):
        return {
            key: (
                MASK
                if is_secret_key(str(key)) and value not in (None, "")
                else redact_mapping(value, known)
            )
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact_mapping(item, known) for item in data]
    if isinstance(data, str):
        return redact_text(data, known)
    if isinstance(data, SecretStr):
        return MASK
    return data


def mapping_secrets(data: Any) -> list[str]:
    """The string values held under secret keys anywhere in ``data`` (to scrub them from
    free text that may quote them, such as an error message)."""
    found: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if is_secret_key(str(key)) and isinstance(value, str | int) and str(value):
                found.append(str(value))
            else:
                found.extend(mapping_secrets(value))
    elif isinstance(data, list | tuple):
        for item in data:
            found.extend(mapping_secrets(item))
    return found
