"""Native vector search: pgvector on a real PostgreSQL 16 with the extension (PyPI ``pgserver``,
started by the ``pgvector_url`` fixture), checked against the numpy scan on the same vectors;
the fallback on the machine's PostgreSQL without pgvector; SQLite's extension-loading probe."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

import p8fs.retrieval as retrieval
from p8fs.database import Database, vectors
from p8fs.embedding import Embedder, content_hash, normalise
from p8fs.errors import ConfigurationError
from p8fs.ids import file_id, resource_id
from p8fs.models import FileRecord, Resource
from p8fs.retrieval import asearch, native_vectors, semantic_ranking

A, B = "tenant-a", "tenant-b"
DIM = 48
MODEL = "test-vectors-48"


class TableEmbedder(Embedder):
    """Vectors from a table (queries the test chose), else seeded from the text's hash: the
    semantic path's arithmetic with vectors the test knows."""

    name = "table"

    def __init__(self, table: dict[str, np.ndarray] | None = None) -> None:
        self.table = table or {}

    @property
    def model_id(self) -> str:
        return MODEL

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for t in texts:
            if t in self.table:
                rows.append(self.table[t])
            else:
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                rows.append(np.random.default_rng(seed).standard_normal(DIM))
        return np.asarray(rows, dtype=np.float32)


async def _store(db: Database, tenant: str, uri: str, mime: str, n: int) -> list[Resource]:
    fid = file_id(tenant, uri)
    chunks = [
        Resource(id=resource_id(fid, i), tenant_id=tenant, file_id=fid, name=f"{uri}#{i}",
                 content=f"chunk {i} of {uri}", ordinal=i, uri=f"{uri}#chunk_{i}")
        for i in range(n)
    ]
    record = FileRecord(id=fid, tenant_id=tenant, uri=uri, name=uri.rsplit("/", 1)[-1],
                        mime_type=mime, chunk_count=n)
    await db.store_file(record, chunks)
    return chunks


async def _embed(db: Database, emb: TableEmbedder, chunks: list[Resource]) -> None:
    vectors_ = normalise(await emb.embed([c.content for c in chunks]))
    await db.store_embeddings(
        chunks[0].tenant_id, MODEL,
        [(c.id, content_hash(c.content), vectors_[i]) for i, c in enumerate(chunks)],
    )


@pytest.fixture
async def pgvector_db(pgvector_url: str) -> AsyncIterator[Database]:
    db = Database(pgvector_url)
    await db.init_schema()
    async with db.engine.begin() as conn:
        for table in ("resource_embeddings", "resources", "files"):
            await conn.execute(text(f"DELETE FROM {table}"))
    yield db
    retrieval._native.pop(str(db.url), None)
    await db.dispose()


def _numpy_ranking(
    rows: list[tuple[str, bytes]], query: np.ndarray, limit: int
) -> list[tuple[str, float]]:
    ids = [rid for rid, _ in rows]
    matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(len(rows), -1)
    scores = matrix @ query
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:limit]
    return [(ids[i], float(scores[i])) for i in order]


async def _blobs(db: Database, tenant: str, where: str = "", **params: Any) -> list[Any]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT e.resource_id, e.vector, e.embedding::text FROM resource_embeddings e "
                f"JOIN files f ON f.tenant_id = e.tenant_id AND f.id = e.file_id "
                f"WHERE e.tenant_id = :tenant{where}"
            ),
            {"tenant": tenant, **params},
        )
        return [tuple(row) for row in result.all()]


async def test_pgvector_ranks_like_the_numpy_scan_within_the_tenant(pgvector_db: Database) -> None:
    db = pgvector_db
    assert await native_vectors(db), "pgvector's column should be set up by init_schema"
    emb = TableEmbedder()
    a_docs = await _store(db, A, "s3://a/docs/report.txt", "text/plain", 150)
    a_audio = await _store(db, A, "s3://a/audio/call.txt", "audio/x-transcript", 100)
    b_docs = await _store(db, B, "s3://b/docs/other.txt", "text/plain", 120)
    for chunks in (a_docs, a_audio, b_docs):
        await _embed(db, emb, chunks)

    # The generated column holds exactly the stored float32 values, bit for bit.
    stored = await _blobs(db, A)
    assert len(stored) == 250
    for _, blob, as_text in stored:
        values = np.array([float(v) for v in as_text.strip("[]").split(",")], dtype="<f4")
        assert values.tobytes() == bytes(blob)

    # The query is B's first vector: without the tenant filter, B's chunk would rank first
    # with similarity 1.0.
    b_first = (await _blobs(db, B, " AND e.resource_id = :rid", rid=b_docs[0].id))[0]
    query_vec = np.frombuffer(bytes(b_first[1]), dtype="<f4")
    emb.table["the query"] = query_vec
    ranked = await semantic_ranking(db, emb, A, "the query", limit=20)
    expected = _numpy_ranking([(rid, bytes(blob)) for rid, blob, _ in stored], query_vec, 20)
    assert [rid for rid, _ in ranked] == [rid for rid, _ in expected]
    assert np.allclose([s for _, s in ranked], [s for _, s in expected], atol=1e-5)
    assert b_docs[0].id not in {rid for rid, _ in ranked}
    [(top_b, score_b)] = await semantic_ranking(db, emb, B, "the query", limit=1)
    assert top_b == b_docs[0].id and score_b == pytest.approx(1.0, abs=1e-5)

    # Filters by URI prefix and MIME type, like the numpy path's.
    docs_only = await semantic_ranking(db, emb, A, "the query", limit=500, uri_prefix="s3://a/docs/")
    assert {rid for rid, _ in docs_only} == {c.id for c in a_docs}
    audio = await semantic_ranking(db, emb, A, "the query", limit=5, mime_types=("audio/*",))
    subset = await _blobs(db, A, " AND f.mime_type = :m", m="audio/x-transcript")
    assert [rid for rid, _ in audio] == [
        rid for rid, _ in _numpy_ranking([(r, bytes(b)) for r, b, _ in subset], query_vec, 5)
    ]

    # The same search through the numpy scan on the same database returns the same hits.
    native_hits = await asearch("the query", A, k=10, mode="semantic", database=db, embedder=emb)
    retrieval._native[str(db.url)] = False
    numpy_hits = await asearch("the query", A, k=10, mode="semantic", database=db, embedder=emb)
    retrieval._native[str(db.url)] = True
    assert [h.resource_id for h in native_hits] == [h.resource_id for h in numpy_hits]
    assert native_hits[0].resource_id == expected[0][0]


async def test_pgvector_column_follows_rewrites_and_deletes(pgvector_db: Database) -> None:
    db = pgvector_db
    emb = TableEmbedder()
    chunks = await _store(db, A, "s3://a/f.txt", "text/plain", 30)
    await _embed(db, emb, chunks)
    # A vector rewritten in place (same chunk, same text, new vector: an upsert) is what the
    # next query ranks: the generated column follows the blob in the same statement.
    target = normalise(np.arange(1, DIM + 1, dtype=np.float32)[None, :])[0]
    await db.store_embeddings(A, MODEL, [(chunks[7].id, content_hash(chunks[7].content), target)])
    emb.table["target"] = target
    [(top, score)] = await semantic_ranking(db, emb, A, "target", limit=1)
    assert top == chunks[7].id and score == pytest.approx(1.0, abs=1e-5)
    # Re-storing the file with other text drops the changed chunks' vectors (and so the
    # column's values); the tenant then has none of that chunk.
    changed = [c.model_copy(update={"content": c.content + " changed"}) for c in chunks]
    record = FileRecord(id=chunks[0].file_id, tenant_id=A, uri="s3://a/f.txt", name="f.txt",
                        mime_type="text/plain", chunk_count=len(changed))
    await db.store_file(record, changed)
    with pytest.raises(ConfigurationError, match="p8fs embed"):
        await semantic_ranking(db, emb, A, "target", limit=1)


async def test_postgresql_without_pgvector_scans_with_numpy(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The machine's PostgreSQL (Debian's, no pgvector package): no column, numpy instead,
    and one log line saying so."""
    vectors._logged.discard("pg-none")
    db = Database(pg_url)
    try:
        with caplog.at_level(logging.INFO, logger="p8fs.database.vectors"):
            await db.init_schema()
            await db.init_schema()
        async with db.engine.connect() as conn:
            available = (
                await conn.execute(
                    text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
                )
            ).first()
        if available is not None:
            pytest.skip("this PostgreSQL has pgvector: the fallback cannot be shown on it")
        assert not await native_vectors(db)
        lines = [r for r in caplog.records if "pgvector is not installed" in r.getMessage()]
        assert len(lines) == 1
        emb = TableEmbedder()
        chunks = await _store(db, A, "s3://a/f.txt", "text/plain", 12)
        await _embed(db, emb, chunks)
        hits = await asearch(chunks[3].content, A, k=1, mode="semantic", database=db,
                             embedder=emb)
        assert hits[0].resource_id == chunks[3].id
    finally:
        retrieval._native.pop(str(db.url), None)
        await db.dispose()


def test_sqlite_extension_probe_matches_this_python_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.enable_load_extension(False)  # type: ignore[attr-defined,unused-ignore]
        can_load = True
    except AttributeError:
        can_load = False
    finally:
        conn.close()
    vectors._logged.discard("sqlite-ext")
    with caplog.at_level(logging.INFO, logger="p8fs.database.vectors"):
        assert vectors.sqlite_can_load_extensions() is can_load
        assert vectors.sqlite_can_load_extensions() is can_load
    lines = [r for r in caplog.records if "cannot load extensions" in r.getMessage()]
    assert len(lines) == (0 if can_load else 1)


async def test_sqlite_semantic_search_says_once_why_it_scans(
    sqlite_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    if vectors.sqlite_can_load_extensions():
        pytest.skip("this Python can load SQLite extensions: no fallback line to see")
    vectors._logged.discard("sqlite-ext")
    retrieval._native.pop(str(sqlite_database.url), None)
    emb = TableEmbedder()
    chunks = await _store(sqlite_database, A, "s3://a/f.txt", "text/plain", 5)
    await _embed(sqlite_database, emb, chunks)
    with caplog.at_level(logging.INFO, logger="p8fs.database.vectors"):
        for _ in range(2):
            hits = await asearch(chunks[2].content, A, k=1, mode="semantic",
                                 database=sqlite_database, embedder=emb)
            assert hits[0].resource_id == chunks[2].id
    assert not await native_vectors(sqlite_database)
    assert sum("cannot load extensions" in r.getMessage() for r in caplog.records) == 1


async def test_pgvector_needs_the_extension_created_once_by_an_administrator(
    pgvector_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A role that may not CREATE EXTENSION (pgvector is not a trusted extension) keeps the
    blobs and the numpy scan, says why once, and gets the column at the next init_schema after
    an administrator created the extension."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin_url = make_url(pgvector_url)
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text("DROP DATABASE IF EXISTS p8fs_plain"))
        await conn.execute(text("DROP ROLE IF EXISTS p8fs_plain"))
        await conn.execute(text("CREATE ROLE p8fs_plain LOGIN"))
        await conn.execute(text("CREATE DATABASE p8fs_plain OWNER p8fs_plain"))
    await admin.dispose()
    plain_url = admin_url.set(username="p8fs_plain", database="p8fs_plain")
    vectors._logged.discard("pg-create")
    db = Database(plain_url.render_as_string(hide_password=False))
    try:
        with caplog.at_level(logging.INFO, logger="p8fs.database.vectors"):
            await db.init_schema()
        assert not await native_vectors(db)
        assert any("cannot CREATE EXTENSION" in r.getMessage() for r in caplog.records)
        emb = TableEmbedder()
        chunks = await _store(db, A, "s3://a/f.txt", "text/plain", 6)
        await _embed(db, emb, chunks)
        [hit] = await asearch(chunks[4].content, A, k=1, mode="semantic", database=db,
                              embedder=emb)
        assert hit.resource_id == chunks[4].id

        superuser = create_async_engine(admin_url.set(database="p8fs_plain"),
                                        isolation_level="AUTOCOMMIT")
        async with superuser.connect() as conn:
            await conn.execute(text("CREATE EXTENSION vector"))
        await superuser.dispose()
        await db.init_schema()  # adds the column, computed for the vectors already stored
        retrieval._native.pop(str(db.url), None)
        assert await native_vectors(db)
        [hit] = await asearch(chunks[4].content, A, k=1, mode="semantic", database=db,
                              embedder=emb)
        assert hit.resource_id == chunks[4].id and hit.score == pytest.approx(1.0, abs=1e-5)
    finally:
        retrieval._native.pop(str(db.url), None)
        await db.dispose()
