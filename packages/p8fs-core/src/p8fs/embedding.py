"""Embedders and the embedding step: vectors per chunk, after the chunks are committed.

An :class:`Embedder` turns texts into vectors. Embedders are registered through the
``p8fs_register_embedders`` hook (the built-ins, ``openai`` and ``local``, through the same hook)
and chosen by name with ``P8FS_EMBEDDER``. :func:`create_embedder` builds the configured one;
with none configured it returns ``None`` and semantic search explains how to configure one
(:func:`require_embedder`).

:func:`embed_pending` is the step itself. It runs *after* a file's chunks are committed (never
inside that transaction: an embedder is a network service or a model, both slow and both able
to fail on their own), in batches, and skips every chunk whose content and model already have a
vector. Vectors are written only for chunks whose content is still the one embedded (checked in
the writing transaction), so a file re-ingested meanwhile never gets a stale vector.

Failures are typed for the queue: :class:`EmbedderUnavailable` (refused connection, timeout,
5xx, 429) is transient, a dependency outage the worker waits out; :class:`EmbedderRefused`
(the server refuses the input itself, a 4xx) is permanent for that content.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from p8fs.errors import ConfigurationError, P8fsError, ProviderUnavailable, TransientError
from p8fs.ids import content_hash

if TYPE_CHECKING:  # pragma: no cover
    import numpy

    from p8fs.database import Database
    from p8fs.registry import Registry
    from p8fs.settings import Settings

log = logging.getLogger(__name__)

#: What to tell a user who asked for semantic search with no embedder configured.
HOW_TO_CONFIGURE = (
    "no embedder is configured: set P8FS_EMBEDDER=openai with P8FS_EMBEDDING_MODEL (and "
    "P8FS_EMBEDDING_URL for a server other than OpenAI's, e.g. Ollama, llama.cpp, vLLM, TEI), or "
    "P8FS_EMBEDDER=local with P8FS_EMBEDDING_MODEL=/path/to/model-folder; then run "
    "`p8fs embed --tenant-id TENANT` to embed what is already stored"
)

#: The extra that brings numpy, httpx and tokenizers.
EXTRA = "p8fs-core[embeddings]"


class EmbedderError(P8fsError):
    """The embedder refused or failed; the message names the setting to check."""

    code = "embedder"


class EmbedderRefused(EmbedderError):
    """The embedder answered and refused the input itself (HTTP 4xx): retrying cannot help."""

    code = "embedder_refused"


class EmbedderUnavailable(TransientError):
    """The embedder did not answer, timed out or is overloaded: a dependency outage."""

    code = "embedder_unavailable"


def require_numpy() -> Any:
    """numpy, imported on first use (``import p8fs`` stays light), or an install hint."""
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - numpy is in the extra
        raise ProviderUnavailable(
            f"semantic search needs numpy: install {EXTRA}", extra=EXTRA
        ) from exc
    return numpy


class Embedder(ABC):
    """Turns texts into vectors of one model. Subclass it and register it with
    ``p8fs_register_embedders``.

    Class attributes: ``name`` (unique, what ``P8FS_EMBEDDER`` names). Instances are built by
    :meth:`from_settings` and expose :attr:`model_id`, the name stored with every vector: vectors
    of different ``model_id`` are never compared. :meth:`embed` may return vectors of any
    length; p8fs normalises them to unit length before storing and comparing (cosine).
    """

    name: ClassVar[str] = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        """Build the embedder from ``P8FS_EMBEDDING_*``; raise :class:`ConfigurationError`
        naming the setting that is missing. Must not load a model or connect: that happens on
        first :meth:`embed`, so a worker starts fast."""
        return cls()

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model's identity, stored with each vector (e.g. ``text-embedding-3-small``)."""

    @abstractmethod
    async def embed(self, texts: Sequence[str]) -> numpy.ndarray:
        """Vectors for ``texts``, one row each (``float32``, shape ``(len(texts), dim)``).

        Raise :class:`EmbedderUnavailable` when the model or server cannot be reached (the
        worker then waits for it) and :class:`EmbedderRefused` when it refuses the input.
        """

    async def probe(self) -> str | None:
        """``None`` when the embedder answers, else why not (for a worker's readiness)."""
        try:
            await self.embed(["p8fs readiness probe"])
        except Exception as exc:
            return f"embedder {self.name} ({self.model_id}) unavailable: {exc}"
        return None

    async def aclose(self) -> None:
        """Release connections or models (called once, when the owner stops)."""
        return None


def create_embedder(
    settings: Settings | None = None, registry: Registry | None = None
) -> Embedder | None:
    """The embedder ``P8FS_EMBEDDER`` names, or ``None`` when it is unset."""
    if settings is None:
        from p8fs.settings import get_settings

        settings = get_settings()
    if not settings.embedder:
        return None
    if registry is None:
        from p8fs.plugins import get_registry

        registry = get_registry()
    if settings.embedder not in registry.embedders:
        known = ", ".join(registry.embedders.names()) or "none"
        raise ConfigurationError(
            f"P8FS_EMBEDDER={settings.embedder!r} names no registered embedder (registered: "
            f"{known})"
        )
    cls = registry.embedders.get(settings.embedder)
    embedder: Embedder = cls.from_settings(settings)
    return embedder


def require_embedder(embedder: Embedder | None) -> Embedder:
    """``embedder``, or the error that says how to configure one."""
    if embedder is None:
        raise ConfigurationError(HOW_TO_CONFIGURE)
    return embedder


def normalise(vectors: Any) -> numpy.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as contiguous float32."""
    np = require_numpy()
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise EmbedderError(f"an embedder returned an array of shape {matrix.shape}, not 2-D")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: numpy.ndarray = matrix / norms
    return out


class ResourceEmbedding(BaseModel):
    """A row of ``resource_embeddings``: one chunk's vector of one model."""

    tenant_id: str
    resource_id: str
    model: str
    file_id: str
    dimension: int
    #: sha256 of the chunk text the vector was computed from (:func:`content_hash`).
    content_hash: str
    #: Little-endian float32, unit length.
    vector: bytes
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass
class EmbedStats:
    """What one embedding run did."""

    embedded: int = 0
    #: Chunks whose content and model already had a vector.
    skipped: int = 0
    #: Vectors computed but not stored: the chunk changed or vanished meanwhile.
    stale: int = 0
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "embedded": self.embedded,
            "skipped": self.skipped,
            "stale": self.stale,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


async def embed_pending(
    database: Database,
    embedder: Embedder,
    tenant_id: str,
    *,
    file_id: str | None = None,
    batch_size: int = 32,
) -> EmbedStats:
    """Embed the tenant's (or one file's) chunks that have no vector of this model for their
    current content, ``batch_size`` chunks per request, and store each batch as it comes.

    Chunks are read page by page (memory stays bounded for a backfill of millions), and each
    batch is committed on its own, so an interrupted backfill keeps what it did.
    """
    started = time.perf_counter()
    stats = EmbedStats()
    model = embedder.model_id
    async for page, skipped in database.pending_embeddings(
        tenant_id, model, file_id=file_id, page_size=max(batch_size * 8, 256)
    ):
        stats.skipped += skipped
        for start in range(0, len(page), batch_size):
            batch = page[start : start + batch_size]
            vectors = normalise(await embedder.embed([text for _, text, _ in batch]))
            if vectors.shape[0] != len(batch):
                raise EmbedderError(
                    f"embedder {embedder.name} returned {vectors.shape[0]} vectors for "
                    f"{len(batch)} texts"
                )
            stored = await database.store_embeddings(
                tenant_id,
                model,
                [(rid, digest, vectors[i]) for i, (rid, _, digest) in enumerate(batch)],
            )
            stats.embedded += stored
            stats.stale += len(batch) - stored
            stats.batches += 1
    stats.seconds = time.perf_counter() - started
    return stats


__all__ = [
    "HOW_TO_CONFIGURE",
    "EmbedStats",
    "Embedder",
    "EmbedderError",
    "EmbedderRefused",
    "EmbedderUnavailable",
    "ResourceEmbedding",
    "content_hash",
    "create_embedder",
    "embed_pending",
    "normalise",
    "require_embedder",
]
