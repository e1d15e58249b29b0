"""The SQL of search, per dialect: keyword queries, the keyword index's set-up, vector rows.

Every function here is a plain function of a SQLAlchemy ``Connection``, run by
:class:`p8fs.database.Database` inside one of its transactions. User input never becomes SQL
text: the query's words arrive already reduced to letters and digits (:func:`p8fs.retrieval.terms`)
and are bound as parameters, whatever the dialect's own query syntax (FTS5 ``MATCH``,
``to_tsquery``, ``MATCH … AGAINST``) would make of quotes and operators.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.engine import Connection

from p8fs.database import schema, vectors
from p8fs.database.filters import file_filters
from p8fs.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Most rows the scan fallback (TiDB without FULLTEXT) ranks per query.
SCAN_CANDIDATES = 5000
#: MySQL/MariaDB: rows of InnoDB's own ranking that BM25 re-ranks per query.
FULLTEXT_CANDIDATES = 100
#: PostgreSQL: a word in at least this share of the tenant's chunks is common: it adds to the
#: scores of the chunks the rarer words find, but finds none itself (see _tsvector_query).
COMMON_SHARE = 0.05
#: PostgreSQL: about this many chunks (a uniform sample by id) estimate document frequencies.
DF_SAMPLE = 2000

_SELECT = (
    "r.id AS resource_id, r.file_id AS file_id, r.ordinal AS ordinal, r.content AS content, "
    "r.metadata AS metadata, r.uri AS resource_uri, f.name AS file_name, f.uri AS file_uri, "
    "f.mime_type AS mime_type"
)
_JOIN = "JOIN files f ON f.tenant_id = r.tenant_id AND f.id = r.file_id"


# -- set-up -----------------------------------------------------------------------------------


def setup_keyword_index(conn: Connection, dialect: str, text_config: str | None) -> str:
    """Create the keyword index if it is missing; return the backend that serves queries:
    ``fts5``, ``tsvector`` (PostgreSQL), ``fulltext`` (MySQL/MariaDB) or ``scan`` (TiDB). On
    PostgreSQL with pgvector installed, also the vector column (:mod:`p8fs.database.vectors`).

    Catalogs are read first so that a database already set up takes no DDL lock at all (an
    ``ALTER TABLE`` on a busy PostgreSQL table waits for every open transaction).
    """
    if dialect == "sqlite":
        existed = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = ?", (schema.SQLITE_FTS_TABLE,)
        ).first()
        for statement in schema.search_ddl("sqlite"):
            conn.exec_driver_sql(statement)
        if existed is None:
            # An index created over existing rows starts empty: fill it once.
            fts = schema.SQLITE_FTS_TABLE
            conn.exec_driver_sql(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")
        return "fts5"
    if dialect == "postgresql":
        wanted = text_config or schema.DEFAULT_TEXT_CONFIG
        current = pg_text_config(conn)
        if text_config is not None and current != text_config:
            known = conn.execute(
                text("SELECT 1 FROM pg_ts_config WHERE cfgname = :name"), {"name": text_config}
            ).first()
            if known is None:
                raise ConfigurationError(
                    f"P8FS_SEARCH_TEXT_CONFIG={text_config!r} is not a PostgreSQL text search "
                    "configuration here (see `\\dF` in psql: english, simple, german, ...)"
                )
            if current is not None:
                log.warning(
                    "rebuilding the keyword index: text search configuration %s -> %s",
                    current,
                    text_config,
                )
                conn.exec_driver_sql(f"ALTER TABLE resources DROP COLUMN {schema.PG_TSV_COLUMN}")
                current = None
        if current is None:
            for statement in schema.search_ddl("postgresql", text_config=wanted):
                conn.exec_driver_sql(statement)
        else:
            conn.exec_driver_sql(schema.search_ddl("postgresql", text_config=current)[1])
        # The semantic side of the same set-up: pgvector's column, where the extension is.
        vectors.setup_postgresql(conn)
        return "tsvector"
    version = str(conn.exec_driver_sql("SELECT VERSION()").scalar() or "")
    if "tidb" in version.lower():
        return "scan"
    present = conn.execute(
        text(
            "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() "
            "AND table_name = 'resources' AND index_name = :name"
        ),
        {"name": schema.MYSQL_FULLTEXT_INDEX},
    ).first()
    collation = conn.execute(
        text(
            "SELECT collation_name FROM information_schema.columns WHERE table_schema = "
            "DATABASE() AND table_name = 'resources' AND column_name = 'content'"
        )
    ).scalar()
    if collation != schema.MYSQL_CONTENT_COLLATION:
        # InnoDB full text follows the column's collation: under utf8mb4_bin (every other
        # column's, for exact URIs and ids) "Gravity" would not match "gravity".
        conn.exec_driver_sql(
            "ALTER TABLE resources MODIFY content LONGTEXT CHARACTER SET utf8mb4 "
            f"COLLATE {schema.MYSQL_CONTENT_COLLATION} NOT NULL"
        )
    if present is None:
        for statement in schema.search_ddl("mysql"):
            conn.exec_driver_sql(statement)
    return "fulltext"


def pg_text_config(conn: Connection) -> str | None:
    """The configuration the ``search_tsv`` column was generated with (``None``: no column)."""
    expr = conn.execute(
        text(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a JOIN pg_attrdef d "
            "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = to_regclass('resources') AND a.attname = :col"
        ),
        {"col": schema.PG_TSV_COLUMN},
    ).scalar()
    if expr is None:
        return None
    match = re.search(r"'([^']+)'::regconfig", str(expr))
    return match.group(1) if match else schema.DEFAULT_TEXT_CONFIG


# -- keyword queries --------------------------------------------------------------------------


def keyword_query(
    conn: Connection,
    backend: str,
    tenant_id: str,
    terms: Sequence[str],
    *,
    limit: int,
    uri_prefix: str | None = None,
    mime_types: Sequence[str] = (),
    text_config: str = schema.DEFAULT_TEXT_CONFIG,
) -> list[dict[str, Any]]:
    """The tenant's best chunks for ``terms`` (any of them), best first, with a ``score``
    (higher is better; comparable within one query only)."""
    if not terms:
        return []
    where, params = file_filters(uri_prefix, mime_types)
    params.update(tenant=tenant_id, limit=limit)
    if backend == "fts5":
        fts = schema.SQLITE_FTS_TABLE
        # Each word quoted: FTS5 reads it as a plain string, never as an operator or column.
        params["match"] = " OR ".join(f'"{t}"' for t in terms)
        # Rank inside a subquery that carries only (rowid, rank) through the sort; the chunk's
        # text and file are read for the top k only (measured at 100k chunks: carrying them
        # through the sorter made every query read and copy every matching chunk).
        files_join = _JOIN if where else ""
        sql = (
            f"SELECT {_SELECT}, -t.rank AS score FROM ("
            f"SELECT {fts}.rowid AS rid, bm25({fts}) AS rank FROM {fts} "
            f"JOIN resources r ON r.rowid = {fts}.rowid {files_join} "
            f"WHERE {fts} MATCH :match AND r.tenant_id = :tenant{where} "
            f"ORDER BY rank LIMIT :limit) t "
            f"JOIN resources r ON r.rowid = t.rid {_JOIN} ORDER BY t.rank"
        )
    elif backend == "tsvector":
        return _tsvector_query(conn, tenant_id, terms, limit=limit, where=where, params=params,
                               text_config=text_config)
    elif backend == "fulltext":
        return _fulltext_query(conn, tenant_id, terms, limit=limit, where=where, params=params)
    elif backend == "scan":
        return _scan_query(conn, tenant_id, terms, limit=limit, where=where, params=params)
    else:  # pragma: no cover - backends are ours
        raise ValueError(f"unknown keyword backend {backend!r}")
    return [_row(r) for r in conn.execute(text(sql), params).mappings()]


_WORD = re.compile(r"[^\W_]+")


def _tsvector_query(
    conn: Connection,
    tenant_id: str,
    terms: Sequence[str],
    *,
    limit: int,
    where: str,
    params: dict[str, Any],
    text_config: str,
) -> list[dict[str, Any]]:
    """PostgreSQL: the GIN index finds the chunks holding the query's words; each word's
    ``ts_rank`` (length-normalised) is weighted by its BM25 inverse document frequency in the
    tenant.

    Why not ``ts_rank_cd`` alone: it has no corpus statistics, so a common word counts as much
    as a rare one (measured on QMSum: MRR 0.22 against BM25's 0.36).

    Why not every matching chunk: ``ts_rank`` reads each candidate's ``tsvector``, and a
    question of common words ("what did the team discuss") matches most of a large tenant
    (measured at 100,000 chunks: 1-2 s a query, three passes over the matches). So, as
    Lucene's ``CommonTermsQuery`` does, only the chunks holding a *rare* word (in fewer than
    :data:`COMMON_SHARE` of the tenant's chunks) are candidates, scored by all the words; the
    common words only add to their scores. A query of common words alone takes the chunks
    holding all of them; whenever a candidate set holds fewer than ``limit`` chunks, the next,
    wider one is ranked instead (rare words or all the common ones; then any word). Document
    frequencies come from a uniform sample of the tenant (about :data:`DF_SAMPLE` chunks: those
    whose id, a hash, sorts below a bound), exact for the rare words (counted through the
    index) and for a tenant no larger than the sample; the tenant's size from its files' chunk
    counts.
    """
    col = schema.PG_TSV_COLUMN
    params.update(config=text_config)
    tsq = "to_tsquery(CAST(:config AS regconfig), {})"
    for i, term in enumerate(terms):
        params[f"t{i}"] = term

    def df_counts(indices: Iterable[int]) -> str:
        """One ``count`` per term: the chunks whose tsvector matches it."""
        return ", ".join(
            f"count(*) FILTER (WHERE r.{col} @@ {tsq.format(f':t{i}')})" for i in indices
        )

    in_sample = df_counts(range(len(terms)))
    recorded = int(
        conn.execute(
            text("SELECT COALESCE(SUM(chunk_count), 0) FROM files WHERE tenant_id = :tenant"),
            params,
        ).scalar_one()
    )
    sample_where = ""
    if recorded > DF_SAMPLE:
        # Ids are uuid5 hex: the chunks whose id sorts below a bound are a uniform sample, and
        # the primary key (tenant_id, id) reads just them, with or without planner statistics.
        params["id_bound"] = format(int(DF_SAMPLE / recorded * 16**8), "08x")
        sample_where = " AND r.id < :id_bound"
    sampled, *sample_hits = conn.execute(
        text(
            f"SELECT count(*), {in_sample} FROM resources r "
            f"WHERE r.tenant_id = :tenant{sample_where}"
        ),
        params,
    ).one()
    if not sample_where:  # the sample is the whole tenant: exact
        if not sampled:
            return []
        total, dfs = int(sampled), [float(h) for h in sample_hits]
        rare = [i for i, h in enumerate(sample_hits) if 0 < h < COMMON_SHARE * sampled]
    else:
        total = max(recorded, int(sampled))
        # A sample too small to estimate from (ids not uuids, or an unlucky bound) treats every
        # word as rare: exact counts, as for a small tenant.
        sampled = max(int(sampled), 1)
        dfs = [h / sampled * total for h in sample_hits]
        if sampled < DF_SAMPLE // 4:
            rare = list(range(len(terms)))
        else:
            rare = [i for i, h in enumerate(sample_hits) if h < COMMON_SHARE * sampled]
        if rare:
            # Rare words (absent from the sample included): exact counts, through the index.
            params["rare"] = " | ".join(terms[i] for i in rare)
            exact = conn.execute(
                text(
                    f"SELECT {df_counts(rare)} FROM resources r WHERE r.tenant_id = :tenant "
                    f"AND r.{col} @@ {tsq.format(':rare')}"
                ),
                params,
            ).one()
            for i, df in zip(rare, exact, strict=True):
                dfs[i] = float(df)
            rare = [i for i in rare if dfs[i]]
    weighted = []
    for i, df in enumerate(dfs):
        if df:
            params[f"w{i}"] = _idf(total, df)
            weighted.append(f":w{i} * ts_rank(r.{col}, {tsq.format(f':t{i}')}, 1)")
    if not weighted:
        return []
    score = " + ".join(weighted)
    present = [terms[i] for i, df in enumerate(dfs) if df]
    common = [t for i, t in enumerate(terms) if dfs[i] and i not in rare]
    # Widening candidate sets, each holding the previous one; the first that fills ``limit``
    # is ranked (the last is every chunk holding any word).
    candidates = [" | ".join(present)]
    if common:
        candidates.insert(0, " & ".join(common))
    if rare:
        rare_words = " | ".join(terms[i] for i in rare)
        candidates[0] = f"{rare_words} | ({candidates[0]})" if common else rare_words
        candidates.insert(0, rare_words)
    candidates = list(dict.fromkeys(candidates))
    rows: list[dict[str, Any]] = []
    # Ranked on resources alone, the chunk's file joined for the top k only: joined inside,
    # a planner without statistics (autovacuum off) walked every chunk file by file.
    files_join = _JOIN if where else ""
    for tsquery in candidates:
        params["tsquery"] = tsquery
        sql = (
            f"SELECT {_SELECT}, t.score AS score FROM ("
            f"SELECT r.id AS rid, {score} AS score FROM resources r {files_join} "
            f"WHERE r.tenant_id = :tenant AND r.{col} @@ {tsq.format(':tsquery')}{where} "
            "ORDER BY score DESC, r.id LIMIT :limit) t "
            f"JOIN resources r ON r.tenant_id = :tenant AND r.id = t.rid {_JOIN} "
            "ORDER BY t.score DESC, r.id"
        )
        rows = [_row(r) for r in conn.execute(text(sql), params).mappings()]
        if len(rows) >= limit:
            break
    return rows


def _fulltext_query(
    conn: Connection,
    tenant_id: str,
    terms: Sequence[str],
    *,
    limit: int,
    where: str,
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """MySQL/MariaDB: InnoDB's ``FULLTEXT`` index finds the candidates (its natural-language
    top :data:`FULLTEXT_CANDIDATES`), BM25 re-ranks them with the tenant's document
    frequencies (counted through the same index).

    Why re-rank: InnoDB's relevance is TF x IDF squared with no length normalisation, so a long
    chunk repeating a common word outranks a short one holding the rare word (measured on
    QMSum: MRR 0.332 against BM25's 0.357).
    """
    params["words"] = " ".join(terms)
    params["candidates"] = max(FULLTEXT_CANDIDATES, 4 * limit)
    match = "MATCH(r.content) AGAINST (:words IN NATURAL LANGUAGE MODE)"
    rows = [
        _row(r)
        for r in conn.execute(
            text(
                f"SELECT {_SELECT}, {match} AS score FROM resources r {_JOIN} "
                f"WHERE r.tenant_id = :tenant AND {match}{where} "
                "ORDER BY score DESC, r.id LIMIT :candidates"
            ),
            params,
        ).mappings()
    ]
    if not rows:
        return []
    # Each word's document frequency, prefix-matched like _bm25's term frequencies. A word
    # InnoDB does not index (shorter than innodb_ft_min_token_size, or one of its stop words)
    # counts 0 and is left out of the score, as it was out of the candidates' search.
    counts = ", ".join(
        f"SUM(MATCH(r.content) AGAINST (:df{i} IN BOOLEAN MODE) > 0)" for i in range(len(terms))
    )
    for i, term in enumerate(terms):
        params[f"df{i}"] = f"{term}*"
    params["any"] = " ".join(f"{term}*" for term in terms)
    dfs = conn.execute(
        text(
            f"SELECT {counts} FROM resources r WHERE r.tenant_id = :tenant "
            "AND MATCH(r.content) AGAINST (:any IN BOOLEAN MODE)"
        ),
        params,
    ).one()
    total = conn.execute(
        text("SELECT COUNT(*) FROM resources r WHERE r.tenant_id = :tenant"), params
    ).scalar_one()
    return _bm25(rows, terms, int(total), limit=limit, dfs=[int(d or 0) for d in dfs])


def _scan_query(
    conn: Connection,
    tenant_id: str,
    terms: Sequence[str],
    *,
    limit: int,
    where: str,
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """Keyword search without a full-text index (TiDB): rows containing any term (``LIKE``), at
    most :data:`SCAN_CANDIDATES`, ranked by BM25 computed here. The terms are letters and digits
    only, so they need no ``LIKE`` escaping."""
    likes = " OR ".join(f"LOWER(r.content) LIKE :like{i}" for i in range(len(terms)))
    for i, term in enumerate(terms):
        params[f"like{i}"] = f"%{term}%"
    total = conn.execute(
        text("SELECT COUNT(*) FROM resources r WHERE r.tenant_id = :tenant"), params
    ).scalar_one()
    params["candidates"] = SCAN_CANDIDATES
    rows = [
        _row(r)
        for r in conn.execute(
            text(
                f"SELECT {_SELECT} FROM resources r {_JOIN} WHERE r.tenant_id = :tenant "
                f"AND ({likes}){where} LIMIT :candidates"
            ),
            params,
        ).mappings()
    ]
    if not rows:
        return []
    return _bm25(rows, terms, total, limit=limit)


def _idf(total: float, df: float) -> float:
    """BM25's inverse document frequency of a word in ``df`` of ``total`` chunks (Lucene's
    form, never negative)."""
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


def _bm25(
    rows: list[dict[str, Any]],
    terms: Sequence[str],
    total: int,
    *,
    limit: int,
    dfs: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """``rows`` (each with its chunk's ``content``) scored by Okapi BM25 (k1 1.5, b 0.75) for
    ``terms``, best first, without the rows that hold none. A word matches the chunk's words
    that start with it (a plural or ``-ing`` form counts, as a stemmer would have it). ``dfs``:
    each term's document frequency in the tenant, if known; otherwise counted in ``rows``."""
    docs = [Counter(w.lower() for w in _WORD.findall(r["content"])) for r in rows]
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(lengths) or 1.0
    k1, b = 1.5, 0.75
    for row in rows:
        row["score"] = 0.0
    for t, term in enumerate(terms):
        if dfs is not None:
            df = dfs[t]
            if not df:
                continue
        else:
            df = sum(1 for d in docs if any(w.startswith(term) for w in d))
        idf = _idf(max(total, len(rows)), df)
        for row, d, n in zip(rows, docs, lengths, strict=True):
            tf = sum(c for w, c in d.items() if w.startswith(term))
            if tf:
                row["score"] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * n / avg))
    ranked = sorted((r for r in rows if r["score"]), key=lambda r: -r["score"])
    return ranked[:limit]


def _row(mapping: Any) -> dict[str, Any]:
    row = dict(mapping)
    meta = row.get("metadata")
    if isinstance(meta, str | bytes):
        try:
            row["metadata"] = json.loads(meta)
        except ValueError:
            row["metadata"] = {}
    row["metadata"] = row.get("metadata") or {}
    if row.get("score") is not None:
        row["score"] = float(row["score"])
    return row


def resources_by_ids(conn: Connection, tenant_id: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Rows like :func:`keyword_query`'s (without a score) for these resource ids."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        stmt = text(
            f"SELECT {_SELECT} FROM resources r {_JOIN} WHERE r.tenant_id = :tenant "
            "AND r.id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        out.extend(
            _row(r) for r in conn.execute(stmt, {"tenant": tenant_id, "ids": part}).mappings()
        )
    return out


# -- vectors ----------------------------------------------------------------------------------


def prune_embeddings(
    conn: Connection, tenant_id: str, file_id: str, hashes: dict[str, str]
) -> None:
    """Drop the file's vectors whose chunk is gone or whose text changed (``hashes``: the new
    resource id -> content hash). Unchanged chunks keep theirs."""
    e = schema.resource_embeddings
    stale = [
        rid
        for rid, digest in conn.execute(
            select(e.c.resource_id, e.c.content_hash).where(
                e.c.tenant_id == tenant_id, e.c.file_id == file_id
            )
        ).all()
        if hashes.get(rid) != digest
    ]
    for start in range(0, len(stale), 500):
        conn.execute(
            delete(e).where(
                e.c.tenant_id == tenant_id, e.c.resource_id.in_(stale[start : start + 500])
            )
        )


def delete_file_embeddings(conn: Connection, tenant_id: str, file_id: str) -> None:
    e = schema.resource_embeddings
    conn.execute(delete(e).where(e.c.tenant_id == tenant_id, e.c.file_id == file_id))


def file_embeddings_by_ordinal(
    conn: Connection, tenant_id: str, file_id: str
) -> list[dict[str, Any]]:
    """The file's vectors with their chunk's ordinal (to carry them across a rename)."""
    e, r = schema.resource_embeddings, schema.resources
    stmt = (
        select(r.c.ordinal, e.c.model, e.c.dimension, e.c.content_hash, e.c.vector)
        .join(r, (r.c.tenant_id == e.c.tenant_id) & (r.c.id == e.c.resource_id))
        .where(e.c.tenant_id == tenant_id, e.c.file_id == file_id)
    )
    return [dict(row._mapping) for row in conn.execute(stmt)]


def embedding_rows(
    tenant_id: str,
    model: str,
    items: Iterable[tuple[str, str, str, bytes, int]],
) -> list[dict[str, Any]]:
    """``resource_embeddings`` rows from (resource id, file id, content hash, blob, dimension)."""
    now = datetime.now(UTC)
    return [
        {
            "tenant_id": tenant_id,
            "resource_id": rid,
            "model": model,
            "file_id": fid,
            "dimension": dim,
            "content_hash": digest,
            "vector": blob,
            "created_at": now,
        }
        for rid, fid, digest, blob, dim in items
    ]
