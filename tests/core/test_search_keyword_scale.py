"""PostgreSQL keyword ranking on a tenant larger than its document-frequency sample: rare words
find the candidates, common words only add to their scores, and a candidate set too small for
k widens (see ``p8fs.database.search_sql._tsvector_query``). ``DF_SAMPLE`` is lowered so that a
few hundred chunks exercise the sampled path a large tenant takes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from p8fs.database import Database, search_sql
from p8fs.ids import file_id, resource_id
from p8fs.models import FileRecord, Resource
from p8fs.retrieval import asearch

T, OTHER = "tenant-scale", "tenant-other"


def _text(i: int) -> str:
    # Every chunk: "meeting" and "team" (common); every 7th: "budget"; chunk 40: "zeppelin".
    words = ["the team meeting notes", f"item {i}"]
    if i % 7 == 0:
        words.append("budget review")
    if i == 40:
        words.append("zeppelin zeppelin hangar")
    return " ".join(words)


async def _fill(db: Database, tenant: str, n: int) -> list[Resource]:
    chunks: list[Resource] = []
    for start in range(0, n, 100):
        uri = f"s3://{tenant}/part{start}.txt"
        fid = file_id(tenant, uri)
        part = [
            Resource(id=resource_id(fid, j), tenant_id=tenant, file_id=fid, name=f"{uri}#{j}",
                     content=_text(start + j), ordinal=j, uri=f"{uri}#chunk_{j}")
            for j in range(min(100, n - start))
        ]
        await db.store_file(FileRecord(id=fid, tenant_id=tenant, uri=uri, name=uri[-12:],
                                       mime_type="text/plain", chunk_count=len(part)), part)
        chunks += part
    return chunks


def hits_id(chunks: list[Resource]) -> str:
    """The one chunk holding the rare word."""
    return next(c.id for c in chunks if "zeppelin" in c.content)


@pytest.fixture
async def big_pg(pg_url: str) -> AsyncIterator[Database]:
    db = Database(pg_url)
    await db.init_schema()
    yield db
    await db.dispose()


async def test_sampled_frequencies_rank_rare_words_first_and_fill_k(
    big_pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_sql, "DF_SAMPLE", 50)
    chunks = await _fill(big_pg, T, 300)
    await _fill(big_pg, OTHER, 120)
    by_id = {c.id: c for c in chunks}

    # One rare word among common ones: its chunk first, and k is still filled (the rare word's
    # candidates are too few, so the set widens) with chunks of this tenant only.
    hits = await asearch("zeppelin team meeting", T, k=10, database=big_pg)
    assert len(hits) == 10
    assert "zeppelin" in by_id[hits[0].resource_id].content
    assert all(h.resource_id in by_id for h in hits)

    # "budget" is in 1/7 of the chunks: common (over COMMON_SHARE) by the sample's estimate,
    # like "team"; a query of common words takes the chunks holding all of them first.
    hits = await asearch("budget team", T, k=5, database=big_pg)
    assert len(hits) == 5
    assert all("budget" in by_id[h.resource_id].content for h in hits)

    # A word no chunk holds changes nothing; words only another tenant holds find nothing.
    assert [h.resource_id for h in await asearch("zeppelin qwertyuiop", T, k=3,
                                                 database=big_pg)][:1] == [hits_id(chunks)]
    assert await asearch("qwertyuiop", T, database=big_pg) == []


async def test_small_tenant_is_ranked_exactly(big_pg: Database) -> None:
    """Under DF_SAMPLE chunks the sample is the tenant: frequencies are exact and a rare word
    ranks its chunk first."""
    chunks = await _fill(big_pg, T, 120)
    [top] = await asearch("budget zeppelin", T, k=1, database=big_pg)
    assert top.resource_id == hits_id(chunks)


async def test_mariadb_reranks_innodb_candidates_by_bm25(mysql_url: str) -> None:
    """InnoDB's relevance (TF x IDF squared, no length normalisation) puts a long chunk that
    repeats a word above a short chunk that holds it once; BM25 (saturated term frequency,
    length-normalised), which p8fs re-ranks InnoDB's candidates with, puts the short one first."""
    filler = " ".join(f"filler{i}" for i in range(200))
    texts = {
        "long": f"budget budget budget {filler}",
        "short": "the budget was approved today",
        **{f"other{i}": f"unrelated words about weather number {i} {filler}" for i in range(8)},
    }
    db = Database(mysql_url)
    try:
        await db.init_schema()
        assert db.keyword_backend == "fulltext"
        ids = {}
        for name, content in texts.items():
            uri = f"s3://{T}/{name}.txt"
            fid = file_id(T, uri)
            chunk = Resource(id=resource_id(fid, 0), tenant_id=T, file_id=fid, name=name,
                             content=content, ordinal=0, uri=f"{uri}#chunk_0")
            await db.store_file(FileRecord(id=fid, tenant_id=T, uri=uri, name=f"{name}.txt",
                                           mime_type="text/plain", chunk_count=1), [chunk])
            ids[chunk.id] = name
        hits = await asearch("budget", T, k=2, database=db)
        assert [ids[h.resource_id] for h in hits] == ["short", "long"]
    finally:
        await db.dispose()
