"""The search filters on a file (URI prefix, MIME types) as SQL conditions.

One definition, shared by the keyword query, the numpy vector scan and the pgvector query, so a
filter means the same thing in every search mode and on every database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def file_filters(uri_prefix: str | None, mime_types: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """SQL conditions on ``f`` (the ``files`` table) for a URI prefix and MIME types, each
    prefixed with ``AND``, and their parameters. ``type/*`` matches a whole family."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if uri_prefix:
        # substr, not LIKE: LIKE folds case on SQLite and would need escaping everywhere.
        clauses.append("substr(f.uri, 1, :prefix_len) = :prefix")
        params.update(prefix=uri_prefix, prefix_len=len(uri_prefix))
    if mime_types:
        alternatives: list[str] = []
        for i, mime in enumerate(mime_types):
            if mime.endswith("/*"):
                family = mime[:-1]
                alternatives.append(f"substr(f.mime_type, 1, :mime_len{i}) = :mime{i}")
                params.update({f"mime{i}": family, f"mime_len{i}": len(family)})
            else:
                alternatives.append(f"f.mime_type = :mime{i}")
                params[f"mime{i}"] = mime
        clauses.append("(" + " OR ".join(alternatives) + ")")
    return "".join(f" AND {c}" for c in clauses), params
