"""Deterministic identifiers, so that processing the same event twice writes the same rows.

A file's id is derived from its tenant and normalised URI; a chunk's from its file id and index.
A redelivered event therefore upserts instead of duplicating, across every database.
"""

from __future__ import annotations

import hashlib
import uuid

#: Namespace for every p8fs uuid5 (fixed forever: changing it would re-key every row).
P8FS_NAMESPACE = uuid.UUID("4c1e2a9e-6f7b-5d2a-9c53-8f0e6d1b7a21")


def file_id(tenant_id: str, uri: str) -> str:
    """The id of the file at ``uri`` for ``tenant_id``."""
    return str(uuid.uuid5(P8FS_NAMESPACE, f"file\x00{tenant_id}\x00{uri}"))


def resource_id(file_id_: str, index: int) -> str:
    """The id of chunk ``index`` of file ``file_id_``."""
    return str(uuid.uuid5(P8FS_NAMESPACE, f"resource\x00{file_id_}\x00{index}"))


def stable_id(*parts: str) -> str:
    """A uuid5 over arbitrary parts, for other derived rows (moments, jobs)."""
    return str(uuid.uuid5(P8FS_NAMESPACE, "\x00".join(parts)))


def uri_hash(uri: str) -> str:
    """sha256 hex of a URI: indexable where the URI itself is too long (TiDB's 3,072 bytes)."""
    return hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()


def content_hash(text: str) -> str:
    """sha256 hex of a chunk's text: what "unchanged content" means for its stored vector."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
