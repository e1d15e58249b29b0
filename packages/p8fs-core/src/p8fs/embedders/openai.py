"""``P8FS_EMBEDDER=openai``: any server that speaks OpenAI's ``POST /v1/embeddings``.

OpenAI itself, Ollama (``http://127.0.0.1:11434/v1``), llama.cpp's server, vLLM and Hugging
Face's text-embeddings-inference all answer the same request, so one client serves them all.
Errors are sorted for the queue: no answer, a timeout, 408/429 or a 5xx is
:class:`~p8fs.embedding.EmbedderUnavailable` (an outage: the worker waits); any other 4xx is
:class:`~p8fs.embedding.EmbedderRefused` (the input itself is refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from p8fs.embedding import (
    EXTRA,
    Embedder,
    EmbedderError,
    EmbedderRefused,
    EmbedderUnavailable,
    require_numpy,
)
from p8fs.errors import ConfigurationError, ProviderUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    import numpy

    from p8fs.settings import Settings

DEFAULT_URL = "https://api.openai.com/v1"

#: HTTP statuses that mean "not now" rather than "not this input".
_RETRYABLE = frozenset({408, 425, 429})


class OpenAIEmbedder(Embedder):
    """Vectors from an OpenAI-compatible ``/v1/embeddings`` endpoint (httpx, async)."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        #: False once the server failed a batch but answered its texts one by one.
        self._batches_work = True

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        if not settings.embedding_model:
            raise ConfigurationError(
                "P8FS_EMBEDDER=openai needs P8FS_EMBEDDING_MODEL (the model name the server "
                "serves, e.g. text-embedding-3-small or nomic-embed-text)"
            )
        key = settings.embedding_api_key or settings.openai_api_key
        return cls(
            settings.embedding_model,
            base_url=settings.embedding_url or DEFAULT_URL,
            api_key=key.get_secret_value() if key is not None else None,
            timeout=settings.embedding_timeout,
        )

    @property
    def model_id(self) -> str:
        return self.model

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:  # pragma: no cover - httpx is in the extra
                raise ProviderUnavailable(
                    f"the openai embedder needs httpx: install {EXTRA}", extra=EXTRA
                ) from exc
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(timeout=self.timeout, headers=headers)
        return self._client

    async def embed(self, texts: Sequence[str]) -> numpy.ndarray:
        np = require_numpy()
        if len(texts) > 1 and not self._batches_work:
            return np.concatenate([await self._request([text]) for text in texts])
        try:
            return await self._request(texts)
        except EmbedderUnavailable as exc:
            if len(texts) < 2 or exc.details.get("status", 0) < 500:
                raise
            # Some servers fail a batch they cannot decode at once (llama.cpp with a model that
            # has no pooling: "llama_decode returned -1") yet embed one text fine: if one text
            # works, this server gets one text per request from now on.
            first = await self._request(texts[:1])
            self._batches_work = False
            rest = [await self._request([text]) for text in texts[1:]]
            return np.concatenate([first, *rest])

    async def _request(self, texts: Sequence[str]) -> numpy.ndarray:
        import httpx

        np = require_numpy()
        url = f"{self.base_url}/embeddings"
        body = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        try:
            response = await self._http().post(url, json=body)
        except httpx.HTTPError as exc:
            raise EmbedderUnavailable(
                f"embedding server {self.base_url} did not answer: {type(exc).__name__}: {exc} "
                "(check P8FS_EMBEDDING_URL)",
                url=self.base_url,
            ) from exc
        status = response.status_code
        if status >= 500 or status in _RETRYABLE:
            raise EmbedderUnavailable(
                f"embedding server {self.base_url} answered {status}: {_excerpt(response)}",
                url=self.base_url,
                status=status,
            )
        if status >= 400:
            raise EmbedderRefused(
                f"embedding server {self.base_url} refused model {self.model!r} ({status}): "
                f"{_excerpt(response)} (check P8FS_EMBEDDING_MODEL and P8FS_EMBEDDING_API_KEY)",
                url=self.base_url,
                status=status,
            )
        try:
            data: list[dict[str, Any]] = response.json()["data"]
            rows = sorted(data, key=lambda item: int(item.get("index", 0)))
            matrix = np.stack([_pooled(np, row["embedding"]) for row in rows])
        except Exception as exc:
            raise EmbedderError(
                f"embedding server {self.base_url} sent no OpenAI-style embeddings: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise EmbedderError(
                f"embedding server {self.base_url} returned {matrix.shape[0]} vectors for "
                f"{len(texts)} texts"
            )
        result: numpy.ndarray = matrix
        return result

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _pooled(np: Any, embedding: Any) -> Any:
    """One vector per text. A server without pooling (llama.cpp's for a model that declares
    none) answers with one vector per token: those are averaged (mean pooling)."""
    array = np.asarray(embedding, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=0)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"an embedding of shape {array.shape}")
    return array


def _excerpt(response: Any, limit: int = 300) -> str:
    text = str(getattr(response, "text", ""))
    return text[:limit] + ("…" if len(text) > limit else "")
