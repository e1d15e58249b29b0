"""Search what was stored: keyword, semantic and hybrid, on SQLite, PostgreSQL and TiDB/MySQL.

``p8fs.search(query, tenant_id)`` / ``await p8fs.asearch(...)`` return ranked
:class:`SearchHit` objects: the chunk's file name and URI, its ordinal, its page or its start
and end seconds, a snippet with the matching words marked, and the score.

* **keyword** needs no model: SQLite FTS5 (BM25), PostgreSQL full text (generated ``tsvector``,
  GIN), MySQL/MariaDB ``FULLTEXT`` (TiDB, which has none, gets a scan ranked by BM25 here).
  A query is reduced to its words (letters and digits) before any database sees it, so quotes,
  operators or 10 KB of text are never a syntax error; the words are OR-ed, as BM25 expects.
* **semantic** compares the query's vector with the chunks' vectors of the configured embedder
  (``P8FS_EMBEDDER``): ranked by pgvector inside PostgreSQL where the extension is installed
  (:mod:`p8fs.database.vectors`), otherwise float32 blobs scanned with numpy, the matrix cached
  per tenant and model until the tenant's vectors change.
* **hybrid** fuses both rankings by reciprocal rank fusion (score = sum of 1 / (60 + rank)).

Every query is scoped to one tenant in SQL; nothing here can return another tenant's rows.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from p8fs.errors import ConfigurationError, InvalidPath, P8fsError

if TYPE_CHECKING:  # pragma: no cover
    import numpy

    from p8fs.database import Database
    from p8fs.embedding import Embedder
    from p8fs.settings import Settings

Mode = Literal["keyword", "semantic", "hybrid"]
MODES: tuple[str, ...] = ("keyword", "semantic", "hybrid")

#: Words of a query that are used (a 10 KB query is cut to its first distinct words).
MAX_TERMS = 32
#: Longest query accepted at all, in characters.
MAX_QUERY_CHARS = 100_000
#: Longest word kept (a 5,000-letter "word" is noise, and costly to match).
MAX_TERM_CHARS = 64
#: Reciprocal rank fusion's constant (Cormack, Clarke and Büttcher, SIGIR 2009).
RRF_K = 60
#: Snippet length in words, and the default markers around a matching word.
SNIPPET_WORDS = 32
MARK = ("**", "**")

#: Common English words dropped from keyword queries (they match nearly every chunk). A query
#: made only of them keeps them.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)

_WORD = re.compile(r"[^\W_]+")


class InvalidQuery(P8fsError):
    """The query cannot be searched (no words at all, or absurdly long); the message says why."""

    code = "invalid_query"


class SearchHit(BaseModel):
    """One ranked chunk."""

    resource_id: str
    file_id: str
    file_name: str
    uri: str = Field(description="The file's URI.")
    resource_uri: str = Field(description="The chunk's URI (file URI #chunk_N).")
    ordinal: int = Field(description="The chunk's position in its file, from 0.")
    mime_type: str | None = None
    page: int | None = None
    start_seconds: float | None = None
    end_seconds: float | None = None
    snippet: str
    score: float = Field(description="Higher is better; comparable within one result list.")
    mode: str
    keyword_rank: int | None = None
    semantic_rank: int | None = None


def terms(query: str) -> list[str]:
    """The words a keyword query searches for: lower-cased runs of letters and digits, stop
    words dropped (unless nothing else is left), distinct, at most :data:`MAX_TERMS`."""
    words = [w for w in _WORD.findall(query.lower()) if len(w) <= MAX_TERM_CHARS]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))[:MAX_TERMS]


def _stem(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def snippet(
    content: str,
    query_terms: Sequence[str],
    *,
    words: int = SNIPPET_WORDS,
    mark: tuple[str, str] = MARK,
) -> str:
    """The ``words``-word window of ``content`` with the most query words, those marked."""
    stems = {_stem(t) for t in query_terms}
    tokens = list(re.finditer(r"\S+", content))
    if not tokens:
        return ""

    def hit(token: str) -> bool:
        return any(_stem(w) in stems for w in _WORD.findall(token.lower()))

    flags = [hit(m.group()) for m in tokens]
    best, best_count, count = 0, -1, 0
    for i, flag in enumerate(flags):
        count += flag
        if i >= words:
            count -= flags[i - words]
        if count > best_count:
            best_count, best = count, max(0, i - words + 1)
    window = tokens[best : best + words]
    parts = [
        f"{mark[0]}{m.group()}{mark[1]}" if flags[best + j] else m.group()
        for j, m in enumerate(window)
    ]
    text = " ".join(parts)
    if best > 0:
        text = "… " + text
    if best + words < len(tokens):
        text += " …"
    return text


# -- vectors ----------------------------------------------------------------------------------

_cache: OrderedDict[tuple[Any, ...], tuple[Any, list[str], Any]] = OrderedDict()
_cache_lock = threading.Lock()
#: Matrices kept per process (each tenant x model x filter is one).
CACHE_ENTRIES = 8


async def _matrix(
    database: Database,
    tenant_id: str,
    model: str,
    dimension: int,
    uri_prefix: str | None,
    mime_types: Sequence[str],
) -> tuple[list[str], numpy.ndarray]:
    """The tenant's unit vectors of ``model`` as one float32 matrix, cached until they change."""
    from p8fs.embedding import require_numpy

    np = require_numpy()
    key = (database.url, tenant_id, model, uri_prefix, tuple(mime_types))
    version = await database.embedding_version(tenant_id, model)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == version:
            _cache.move_to_end(key)
            return cached[1], cached[2]
    rows = await database.load_vectors(
        tenant_id, model, uri_prefix=uri_prefix, mime_types=mime_types
    )
    rows = [row for row in rows if row[2] == dimension]
    ids = [row[0] for row in rows]
    matrix = (
        np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), dimension)
        if rows
        else np.zeros((0, dimension), dtype=np.float32)
    )
    with _cache_lock:
        _cache[key] = (version, ids, matrix)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return ids, matrix


async def semantic_ranking(
    database: Database,
    embedder: Embedder,
    tenant_id: str,
    query: str,
    *,
    limit: int,
    uri_prefix: str | None = None,
    mime_types: Sequence[str] = (),
) -> list[tuple[str, float]]:
    """(resource id, cosine similarity) of the tenant's chunks nearest to ``query``."""
    from p8fs.embedding import normalise, require_numpy

    np = require_numpy()
    vector = normalise(await embedder.embed([query]))[0]
    model = embedder.model_id
    ranked: list[tuple[str, float]] = []
    if await native_vectors(database):
        from p8fs.database import vectors

        async with database.engine.connect() as conn:
            ranked = await conn.run_sync(
                lambda c: vectors.pg_nearest(
                    c,
                    tenant_id,
                    model,
                    vector.tolist(),
                    limit=limit,
                    uri_prefix=uri_prefix,
                    mime_types=mime_types,
                )
            )
    else:
        ids, matrix = await _matrix(
            database, tenant_id, model, int(vector.shape[0]), uri_prefix, mime_types
        )
        if ids:
            scores = matrix @ vector
            n = min(limit, len(ids))
            top = np.argpartition(-scores, n - 1)[:n] if n < len(ids) else np.arange(len(ids))
            top = top[np.argsort(-scores[top], kind="stable")]
            ranked = [(ids[i], float(scores[i])) for i in top]
    if not ranked:
        have = await database.embedding_models(tenant_id)
        if not have and await database.count("resources", tenant_id):
            raise ConfigurationError(
                f"tenant {tenant_id!r} has no vectors of model {model!r} yet: run "
                f"`p8fs embed --tenant-id {tenant_id}` (workers embed new files themselves)"
            )
    return ranked


_native: dict[str, bool] = {}


async def native_vectors(database: Database) -> bool:
    """Whether ``database`` ranks vectors itself (PostgreSQL with the pgvector column) rather
    than through the numpy scan; decided once per database URL and process (the column is
    added by ``init_schema``, so a process started before that keeps scanning until restarted).
    On SQLite, says once in the log when this Python cannot load extensions (sqlite-vec)."""
    from p8fs.database import vectors

    key = str(database.url)
    if key not in _native:
        if database.dialect == "postgresql":
            async with database.engine.connect() as conn:
                _native[key] = await conn.run_sync(vectors.has_pg_column)
        else:
            if database.dialect == "sqlite":
                vectors.sqlite_can_load_extensions()
            _native[key] = False
    return _native[key]


def fuse(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: each id scores the sum of 1 / (k + rank) over the rankings."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, rid in enumerate(ranking, start=1):
            scores[rid] = scores.get(rid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


# -- the entry points -------------------------------------------------------------------------


def _hit(
    row: dict[str, Any],
    score: float,
    mode: str,
    query_terms: Sequence[str],
    mark: tuple[str, str],
    **ranks: int | None,
) -> SearchHit:
    meta = row.get("metadata") or {}
    page = meta.get("page")
    start, end = meta.get("start"), meta.get("end")
    return SearchHit(
        resource_id=row["resource_id"],
        file_id=row["file_id"],
        file_name=row["file_name"],
        uri=row["file_uri"],
        resource_uri=row["resource_uri"],
        ordinal=int(row["ordinal"]),
        mime_type=row.get("mime_type"),
        page=page if isinstance(page, int) and not isinstance(page, bool) else None,
        start_seconds=float(start) if isinstance(start, int | float) else None,
        end_seconds=float(end) if isinstance(end, int | float) else None,
        snippet=snippet(row["content"], query_terms, mark=mark),
        score=score,
        mode=mode,
        **ranks,
    )


def _mimes(mime_type: str | Sequence[str] | None) -> tuple[str, ...]:
    if mime_type is None:
        return ()
    if isinstance(mime_type, str):
        return tuple(m.strip().lower() for m in mime_type.split(",") if m.strip())
    return tuple(m.strip().lower() for m in mime_type if m.strip())


async def asearch(
    query: str,
    tenant_id: str,
    *,
    k: int = 10,
    mode: Mode | str = "keyword",
    uri_prefix: str | None = None,
    mime_type: str | Sequence[str] | None = None,
    database: Database | None = None,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    mark: tuple[str, str] = MARK,
) -> list[SearchHit]:
    """The tenant's ``k`` best chunks for ``query``.

    ``mode``: ``keyword`` (default; no model needed), ``semantic`` or ``hybrid`` (both need an
    embedder: ``embedder``, else the one ``P8FS_EMBEDDER`` configures, else a
    :class:`~p8fs.errors.ConfigurationError` saying how to configure one). ``uri_prefix`` keeps
    files whose URI starts with it; ``mime_type`` keeps these MIME types (``audio/*`` for a
    family; a comma-separated string or a list). ``database``, when not given, is the one the
    settings name (opened and closed here).
    """
    if mode not in MODES:
        raise InvalidQuery(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise InvalidPath("search needs a tenant id", tenant_id=tenant_id)
    if not isinstance(query, str):
        raise InvalidQuery("the query must be text")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidQuery(
            f"the query is {len(query):,} characters long; at most {MAX_QUERY_CHARS:,} are accepted"
        )
    if k < 1:
        raise InvalidQuery(f"k must be at least 1, not {k}")
    query_terms = terms(query)
    if not query_terms and mode == "keyword":
        raise InvalidQuery(
            "the query has no words to search for (runs of letters or digits, each at most "
            f"{MAX_TERM_CHARS} long)"
        )
    if not query.strip():
        raise InvalidQuery("the query is empty")
    mimes = _mimes(mime_type)
    needs_settings = database is None or (mode != "keyword" and embedder is None)
    if settings is None and needs_settings:
        from p8fs.settings import get_settings

        settings = get_settings()
    own_db = database is None
    if database is None:
        from p8fs.database import Database

        database = Database.from_settings(settings)
    own_embedder = False
    try:
        if mode != "keyword" and embedder is None:
            from p8fs.embedding import create_embedder, require_embedder

            embedder = require_embedder(create_embedder(settings))
            own_embedder = True
        return await _search(
            database, embedder, tenant_id, query, query_terms, k, mode, uri_prefix, mimes, mark
        )
    finally:
        if own_embedder and embedder is not None:
            await embedder.aclose()
        if own_db:
            await database.dispose()


async def _search(
    database: Database,
    embedder: Embedder | None,
    tenant_id: str,
    query: str,
    query_terms: list[str],
    k: int,
    mode: str,
    uri_prefix: str | None,
    mimes: tuple[str, ...],
    mark: tuple[str, str],
) -> list[SearchHit]:
    depth = k if mode == "keyword" else max(k * 5, 50)
    keyword_rows: list[dict[str, Any]] = []
    if mode in ("keyword", "hybrid") and query_terms:
        keyword_rows = await database.keyword_search(
            tenant_id, query_terms, limit=depth, uri_prefix=uri_prefix, mime_types=mimes
        )
    if mode == "keyword":
        return [
            _hit(row, row["score"], mode, query_terms, mark, keyword_rank=i)
            for i, row in enumerate(keyword_rows, start=1)
        ]
    assert embedder is not None
    semantic = await semantic_ranking(
        database, embedder, tenant_id, query, limit=depth, uri_prefix=uri_prefix, mime_types=mimes
    )
    sem_rank = {rid: i for i, (rid, _) in enumerate(semantic, start=1)}
    kw_rank = {row["resource_id"]: i for i, row in enumerate(keyword_rows, start=1)}
    if mode == "semantic":
        ranked = semantic[:k]
    else:
        ranked = fuse([[row["resource_id"] for row in keyword_rows], [rid for rid, _ in semantic]])[
            :k
        ]
    rows = {row["resource_id"]: row for row in keyword_rows}
    missing = [rid for rid, _ in ranked if rid not in rows]
    for row in await database.resources_for_search(tenant_id, missing):
        rows[row["resource_id"]] = row
    return [
        _hit(
            rows[rid],
            score,
            mode,
            query_terms,
            mark,
            keyword_rank=kw_rank.get(rid),
            semantic_rank=sem_rank.get(rid),
        )
        for rid, score in ranked
        if rid in rows  # a chunk deleted between the two reads is left out
    ]


def search(query: str, tenant_id: str, **kwargs: Any) -> list[SearchHit]:
    """Blocking :func:`asearch`, for scripts (inside a running loop use ``await asearch``)."""
    return asyncio.run(asearch(query, tenant_id, **kwargs))


__all__ = ["MODES", "InvalidQuery", "SearchHit", "asearch", "fuse", "search", "snippet", "terms"]
