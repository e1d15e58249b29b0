"""Keyword search on SQLite (FTS5), PostgreSQL (tsvector/GIN) and MariaDB (FULLTEXT, standing in
for TiDB; TiDB's scan fallback too): results, snippets, filters, an index that stays in step with
``resources`` through re-ingest, delete and rename, hostile queries, tenants, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import p8fs
from p8fs.cli import main
from p8fs.database import Database
from p8fs.errors import ConfigurationError
from p8fs.ids import file_id, resource_id
from p8fs.models import FileRecord, Resource
from p8fs.pipeline import adelete, aingest, arename
from p8fs.retrieval import InvalidQuery, asearch, fuse, snippet, terms
from p8fs.settings import Settings

A, B = "tenant-a", "tenant-b"

HOSTILE = [
    '"unbalanced',
    "it's",
    "NOT AND OR",
    "NEAR(gravity lighthouse, 2)",
    "content: lighthouse",
    "lighthouse*",
    "-lighthouse +gravity",
    "'); DROP TABLE resources; --",
    "a & b | !c <-> d:*",
    "@@ ~ ^ $ % \\ \x00",
    "\u00e9t\u00e9 \u6f22\u5b57 \U0001f600",
    "lighthouse " * 1000,
    "x" * 10_000,
    "wo" + "rd " * 3500,
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


async def _corpus(db: Database, settings: Settings, tmp_path: Path) -> dict[str, Path]:
    files = {
        "light": _write(tmp_path / "docs" / "light.txt",
                        "The lighthouse keeper logged the storm.\n\nShips waited offshore."),
        "gravity": _write(tmp_path / "docs" / "physics" / "gravity.md",
                          "# Gravity\n\nGravity bends light near massive stars."),
        "cooking": _write(tmp_path / "other" / "soup.txt",
                          "Simmer the onions slowly; season the soup."),
    }
    for path in files.values():
        await aingest(str(path), A, database=db, settings=settings)
    # Tenant B holds the same words and a secret of its own.
    await aingest(str(_write(tmp_path / "b" / "b.txt", "lighthouse gravity soup secretb")),
                  B, database=db, settings=settings)
    return files


async def test_keyword_search_ranks_marks_and_names(database: Database, settings: Settings,
                                                    tmp_path: Path) -> None:
    files = await _corpus(database, settings, tmp_path)
    hits = await asearch("Where is the lighthouse keeper?", A, database=database)
    assert hits, "no result for a word that is stored"
    top = hits[0]
    assert top.file_name == "light.txt"
    assert top.uri.endswith("docs/light.txt") and files["light"].name in top.uri
    assert top.ordinal == 0 and top.resource_uri.endswith("#chunk_0")
    assert "**lighthouse**" in top.snippet and "**keeper**" in top.snippet
    assert top.mode == "keyword" and top.keyword_rank == 1 and top.score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Stemming where the database stems (FTS5 porter, PostgreSQL english, not InnoDB).
    if database.dialect != "mysql":
        bends = await asearch("bending", A, database=database)
        assert [h.file_name for h in bends] == ["gravity.md"]


async def test_filters_by_uri_prefix_and_mime_type(database: Database, settings: Settings,
                                                   tmp_path: Path) -> None:
    await _corpus(database, settings, tmp_path)
    query = "lighthouse gravity onions"
    found = await asearch(query, A, database=database)
    everything = {h.file_name for h in found}
    assert everything == {"light.txt", "gravity.md", "soup.txt"}
    light_uri = next(h.uri for h in found if h.file_name == "light.txt")
    docs = light_uri[: -len("light.txt")]  # the stored URI of the docs folder
    under_docs = await asearch(query, A, database=database, uri_prefix=docs)
    assert {h.file_name for h in under_docs} == {"light.txt", "gravity.md"}
    markdown = await asearch(query, A, database=database, mime_type="text/markdown")
    assert {h.file_name for h in markdown} == {"gravity.md"}
    family = await asearch(query, A, database=database, mime_type=["text/*"])
    assert {h.file_name for h in family} == everything
    assert await asearch(query, A, database=database, mime_type="audio/*") == []
    # A prefix is a prefix, not a pattern: LIKE wildcards in it match nothing.
    assert await asearch(query, A, database=database, uri_prefix=docs[:-4] + "%") == []


async def test_index_stays_in_step_through_reingest_delete_and_rename(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    path = _write(tmp_path / "note.txt", "zebra crossing at noon")
    await aingest(str(path), A, database=database, settings=settings)
    assert [h.file_name for h in await asearch("zebra", A, database=database)] == ["note.txt"]

    _write(path, "giraffe crossing at dusk")
    await aingest(str(path), A, database=database, settings=settings)
    assert await asearch("zebra", A, database=database) == []
    assert len(await asearch("giraffe", A, database=database)) == 1

    moved = tmp_path / "moved" / "renamed.txt"
    moved.parent.mkdir()
    path.rename(moved)
    assert await arename(str(path), str(moved), A, database=database) is not None
    [hit] = await asearch("giraffe", A, database=database)
    assert hit.file_name == "renamed.txt" and hit.uri.endswith("moved/renamed.txt")

    assert await adelete(str(moved), A, database=database)
    assert await asearch("giraffe", A, database=database) == []
    assert await asearch("crossing", A, database=database) == []


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
async def test_hostile_queries_never_reach_the_database_as_syntax(
    database: Database, settings: Settings, tmp_path: Path, query: str
) -> None:
    await _corpus(database, settings, tmp_path)
    try:
        hits = await asearch(query, A, database=database)
    except InvalidQuery as exc:
        assert "words" in str(exc) or "empty" in str(exc)
    else:
        assert all(h.file_name != "b.txt" for h in hits)
        if "lighthouse" in query.lower():
            assert "light.txt" in {h.file_name for h in hits}


@pytest.mark.parametrize("query", ["", "   ", "?!*", "\"'"])
async def test_queries_without_words_are_a_clear_error(sqlite_database: Database,
                                                       query: str) -> None:
    with pytest.raises(InvalidQuery):
        await asearch(query, A, database=sqlite_database)


async def test_search_never_crosses_tenants(database: Database, settings: Settings,
                                            tmp_path: Path) -> None:
    await _corpus(database, settings, tmp_path)
    hits_a = await asearch("lighthouse gravity soup secretb", A, database=database, k=50)
    assert hits_a and all(h.file_name != "b.txt" for h in hits_a)
    assert all("secretb" not in h.snippet for h in hits_a)
    hits_b = await asearch("lighthouse gravity soup", B, database=database, k=50)
    assert [h.file_name for h in hits_b] == ["b.txt"]
    assert await asearch("secretb", "tenant-c", database=database) == []


async def test_page_and_time_come_from_chunk_metadata(database: Database) -> None:
    uri = "s3://bucket/talk.mp3"
    fid = file_id(A, uri)
    record = FileRecord(id=fid, tenant_id=A, uri=uri, name="talk.mp3", mime_type="audio/mpeg",
                        chunk_count=2)
    chunks = [
        Resource(id=resource_id(fid, 0), tenant_id=A, file_id=fid, name="talk.mp3#0",
                 content="opening remarks about volcanoes", ordinal=0, uri=f"{uri}#chunk_0",
                 metadata={"start": 0.0, "end": 12.5}),
        Resource(id=resource_id(fid, 1), tenant_id=A, file_id=fid, name="talk.mp3#1",
                 content="slides on glaciers", ordinal=1, uri=f"{uri}#chunk_1",
                 metadata={"page": 3}),
    ]
    await database.store_file(record, chunks)
    [volcano] = await asearch("volcanoes", A, database=database, mime_type="audio/*")
    assert (volcano.start_seconds, volcano.end_seconds, volcano.page) == (0.0, 12.5, None)
    [glacier] = await asearch("glaciers", A, database=database)
    assert (glacier.page, glacier.ordinal, glacier.start_seconds) == (3, 1, None)


@pytest.mark.mariadb
async def test_tidb_scan_fallback_ranks_without_a_fulltext_index(
    mysql_url: str, settings: Settings, tmp_path: Path
) -> None:
    """TiDB has no FULLTEXT: keyword search scans with LIKE and ranks by BM25 (run on MariaDB
    with the scan forced, as it would be chosen on a server whose VERSION() says TiDB)."""
    async with Database(mysql_url) as db:
        await db.init_schema()
        assert db.keyword_backend == "fulltext"
        db.keyword_backend = "scan"
        await _corpus(db, settings, tmp_path)
        hits = await asearch("LIGHTHOUSE keeper", A, database=db)
        assert [h.file_name for h in hits][:1] == ["light.txt"]
        assert "**lighthouse**" in hits[0].snippet.lower()
        for query in HOSTILE[:10]:
            try:
                found = await asearch(query, A, database=db)
            except InvalidQuery:
                continue
            assert all(h.file_name != "b.txt" for h in found)


@pytest.mark.postgresql
async def test_postgresql_text_search_configuration_setting(pg_url: str, settings: Settings,
                                                            tmp_path: Path) -> None:
    async with Database(pg_url) as db:
        await db.init_schema()
        await _corpus(db, settings, tmp_path)
        # english drops "the" as a stop word; "bends" and "bending" share a stem.
        assert await asearch("the", A, database=db) == []
        assert len(await asearch("bending", A, database=db)) == 1
    async with Database(pg_url, text_search_config="simple") as db:
        await db.init_schema()  # rebuilds the generated column with 'simple'
        assert {h.file_name for h in await asearch("the", A, database=db)} >= {"light.txt"}
        assert await asearch("bending", A, database=db) == []
    with pytest.raises(ConfigurationError, match="P8FS_SEARCH_TEXT_CONFIG"):
        async with Database(pg_url, text_search_config="no_such_config") as db:
            await db.init_schema()


def test_terms_snippet_and_fusion_units() -> None:
    assert terms("What did the Marketing team say about batteries?") == [
        "marketing", "team", "say", "batteries"]
    assert terms("the who") == ["the", "who"]  # only stop words: kept
    assert len(terms(" ".join(f"w{i}" for i in range(500)))) == 32
    text = " ".join(["filler"] * 100 + ["battery", "costs", "rose"] + ["filler"] * 100)
    marked = snippet(text, ["batteries", "cost"])
    assert "**battery**" in marked and "**costs**" in marked
    assert marked.startswith("… ") and marked.endswith(" …")
    assert [rid for rid, _ in fuse([["a", "b", "c"], ["c", "a"]])] == ["a", "c", "b"]


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The CLI reads settings from the environment once per process: forget them around."""
    from p8fs.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("fresh_settings")
def test_cli_search_json_and_text(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {"P8FS_DATABASE_URL": url, "P8FS_DATA_DIR": str(tmp_path / "data"),
           "P8FS_EMBEDDER": ""}
    doc = _write(tmp_path / "docs" / "manual.txt", "Press the red button to reset the router.")
    runner = CliRunner()
    done = runner.invoke(main, ["process", "--tenant-id", A, str(doc)], env=env)
    assert done.exit_code == 0, done.output
    result = runner.invoke(main, ["search", "reset router", "--tenant-id", A, "--json"], env=env)
    assert result.exit_code == 0, result.output
    [hit] = json.loads(result.output)
    assert hit["file_name"] == "manual.txt" and hit["ordinal"] == 0
    assert "**reset**" in hit["snippet"] and hit["score"] > 0 and hit["uri"].endswith("manual.txt")
    text = runner.invoke(main, ["search", "reset", "--tenant-id", A, "--k", "3"], env=env)
    assert text.exit_code == 0 and "manual.txt" in text.output and "chunk 0" in text.output
    other = runner.invoke(main, ["search", "reset", "--tenant-id", B], env=env)
    assert other.exit_code == 0 and "no results" in other.output
    bad = runner.invoke(main, ["search", "'\"*", "--tenant-id", A], env=env)
    assert bad.exit_code == 2 and "no words" in bad.output
    semantic = runner.invoke(main, ["search", "reset", "--tenant-id", A, "--mode", "semantic"],
                             env=env)
    assert semantic.exit_code == 2
    assert "P8FS_EMBEDDER" in semantic.output and "p8fs embed" in semantic.output


def test_sync_search_and_lazy_export(tmp_path: Path) -> None:
    import subprocess
    import sys

    # `import p8fs` stays light: search (and SQLAlchemy, numpy) load on first use.
    code = ("import sys, p8fs; assert 'p8fs.retrieval' not in sys.modules; "
            "assert 'numpy' not in sys.modules and 'sqlalchemy' not in sys.modules; "
            "assert callable(p8fs.search) and callable(p8fs.asearch)")
    subprocess.run([sys.executable, "-c", code], check=True)
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    doc = _write(tmp_path / "x.txt", "quartz crystals")

    async def store() -> None:
        async with Database(url) as db:
            await aingest(str(doc), A, database=db, settings=Settings(data_dir=tmp_path))

    import asyncio

    asyncio.run(store())
    hits = p8fs.search("quartz", A, settings=Settings(database_url=url, data_dir=tmp_path))
    assert [h.file_name for h in hits] == ["x.txt"]
