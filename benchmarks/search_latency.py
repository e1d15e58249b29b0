"""Keyword query latency at scale (SQLite and PostgreSQL) and the numpy vector scan's cost.

The 237 QMSum questions are asked of one tenant holding ``--chunks`` chunks (default 100,000:
the QMSum chunks repeated, each copy with a word of its own, in files of 1,000 chunks; built
with the helpers of ``retrieval_eval.py``). Reported: p50/p99 of ``p8fs.asearch`` (keyword,
k=10) and of its database query alone, store cost per chunk with the keyword index maintained,
and the keyword index's build time from scratch. ``--scan`` adds the in-memory numpy scan
(matrix-vector product + top 10 of unit float32 vectors) at 10k, 100k and 300k rows;
``--pgvector-url`` the same sizes ranked by pgvector inside PostgreSQL.

Why a separate script: retrieval_eval.py measures quality first and takes an hour with the
embedder; this one is what you run while working on query plans. ``--workdir`` keeps the filled
SQLite file and the PostgreSQL database (``p8fs_latency_<chunks>``) between runs, so only the
queries are timed again.

Run: ``uv run --all-packages --all-extras python benchmarks/search_latency.py --workdir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_eval import (
    corpus_dir,
    fill,
    index_build_cost,
    ingest,
    load_meetings,
    percentile,
    pg_scratch,
)

BIG = "big"


def summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * percentile(times, 50), 1),
            "p99_ms": round(1000 * percentile(times, 99), 1), "queries": len(times)}


async def keyword_latency(db: Any, questions: list[str]) -> dict[str, Any]:
    """End-to-end ``asearch`` and the database query alone, over every question."""
    from p8fs.retrieval import asearch, terms

    for q in questions[:10]:  # warm the caches
        await asearch(q, BIG, k=10, database=db)
    whole, query_only = [], []
    for q in questions:
        t = time.perf_counter()
        await asearch(q, BIG, k=10, database=db)
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        await db.keyword_search(BIG, terms(q), limit=10)
        query_only.append(time.perf_counter() - t)
    return {"asearch": summary(whole), "database_query": summary(query_only)}


def numpy_scan(dim: int, sizes: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """The semantic ranking's own work on a cached matrix: product + top 10."""
    import numpy as np

    from p8fs.embedding import normalise

    rng = np.random.default_rng(1)
    out = {}
    for rows in sizes:
        matrix = normalise(rng.standard_normal((rows, dim)).astype(np.float32))
        times = []
        for _ in range(30):
            query = normalise(rng.standard_normal((1, dim)))[0]
            t = time.perf_counter()
            scores = matrix @ query
            top = np.argpartition(-scores, 9)[:10]
            top[np.argsort(-scores[top])]
            times.append(time.perf_counter() - t)
        out[rows] = {**summary(times), "MB": round(matrix.nbytes / 2**20)}
        del matrix
    return out


async def pgvector_scan(url: str, dim: int, sizes: tuple[int, ...]) -> dict[int, Any]:
    """pgvector's exact scan (``ORDER BY embedding <=> q LIMIT 10`` in one tenant) at each size,
    the vectors written through the blob column as p8fs writes them (the pgvector column is
    generated from it): query p50/p99 and the write cost per vector."""
    import numpy as np
    from sqlalchemy import text

    from p8fs.database import Database, vectors
    from p8fs.embedding import normalise

    rng = np.random.default_rng(2)
    out: dict[int, Any] = {}
    async with Database(url) as db:
        await db.init_schema()
        async with db.engine.connect() as conn:
            assert await conn.run_sync(vectors.has_pg_column), "no pgvector column"
        have = 0
        for rows in sizes:
            async with db.engine.begin() as conn:
                have = (await conn.execute(text(
                    "SELECT count(*) FROM resource_embeddings WHERE tenant_id = 'vec'"))).scalar_one()
            started = time.perf_counter()
            for start in range(have, rows, 5000):
                batch = normalise(rng.standard_normal((min(5000, rows - start), dim)))
                async with db.engine.begin() as conn:
                    await conn.execute(text(
                        "INSERT INTO resource_embeddings (tenant_id, resource_id, model, file_id, "
                        "dimension, content_hash, vector) VALUES ('vec', :rid, 'm', 'f', :dim, "
                        "'h', :blob)"), [
                        {"rid": f"r{start + i:08d}", "dim": dim, "blob": v.astype("<f4").tobytes()}
                        for i, v in enumerate(batch)])
            written = rows - have
            times = []
            for _ in range(20):
                query = normalise(rng.standard_normal((1, dim)))[0].tolist()
                t = time.perf_counter()
                async with db.engine.connect() as conn:
                    await conn.run_sync(lambda c, q=query: vectors.pg_nearest(
                        c, "vec", "m", q, limit=10))
                times.append(time.perf_counter() - t)
            out[rows] = {**summary(times), "write_ms_per_vector": round(
                1000 * (time.perf_counter() - started - sum(times)) / max(written, 1), 3)}
            print("pgvector", rows, out[rows], file=sys.stderr)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from p8fs.database import Database
    from p8fs.settings import Settings

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="p8fs-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    meetings = load_meetings(corpus_dir() / "retrieval" / "qmsum")
    questions = [q for m in meetings for q, _ in m.questions]
    report: dict[str, Any] = {"chunks": args.chunks, "questions": len(questions)}
    targets = []
    if "sqlite" in args.databases:
        targets.append(("sqlite", f"sqlite+aiosqlite:///{work / f'latency_{args.chunks}.db'}"))
    if "postgresql" in args.databases:
        url = await pg_scratch(True, f"p8fs_latency_{args.chunks}") if not args.keep else None
        if url is None:  # it exists already (or the server is down: init_schema will say)
            from sqlalchemy.engine import make_url

            admin = make_url(os.environ.get(
                "P8FS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
            url = admin.set(database=f"p8fs_latency_{args.chunks}").render_as_string(
                hide_password=False)
        targets.append(("postgresql", url))
    chunks = None
    for kind, url in targets:
        async with Database(url) as db:
            await db.init_schema()
            entry: dict[str, Any] = {}
            have = await db.count("resources", BIG)
            if have < args.chunks:
                if chunks is None:
                    small = Database(f"sqlite+aiosqlite:///{work / 'qmsum.db'}")
                    await small.init_schema()
                    (work / "files").mkdir(exist_ok=True)
                    chunks, _ = await ingest(meetings, small, work / "files",
                                             Settings(chunk_tokens=256, chunk_overlap=32))
                    await small.dispose()
                store = await fill(db, chunks, args.chunks, BIG)
                entry["store_ms_per_chunk_with_keyword_index"] = round(1000 * store, 3)
            entry["keyword"] = await keyword_latency(db, questions)
            if args.rebuild:
                entry["keyword_index_build_ms_per_chunk"] = round(
                    1000 * await index_build_cost(db), 4)
            report[kind] = entry
            print(kind, json.dumps(entry), file=sys.stderr)
    if args.scan:
        report["numpy_scan"] = numpy_scan(args.dim, (10_000, 100_000, 300_000))
    if args.pgvector_url:
        report["pgvector_scan"] = await pgvector_scan(args.pgvector_url, args.dim,
                                                      (10_000, 100_000, 300_000))
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--workdir", help="keep the filled databases here between runs")
    parser.add_argument("--databases", type=lambda v: [x for x in v.split(",") if x],
                        default=["sqlite", "postgresql"])
    parser.add_argument("--keep", action="store_true",
                        help="reuse the PostgreSQL database of an earlier run")
    parser.add_argument("--rebuild", action="store_true",
                        help="also time a rebuild of the keyword index from scratch")
    parser.add_argument("--scan", action="store_true", help="also time the numpy scan")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--pgvector-url", help="a PostgreSQL database with pgvector installed: "
                        "also time pgvector's scan (writes a tenant 'vec' of random vectors)")
    args = parser.parse_args()
    text = json.dumps(asyncio.run(main(args)), indent=2)
    print(text)


if __name__ == "__main__":
    cli()
