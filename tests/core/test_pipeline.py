"""The ingest pipeline end to end: real files, real databases (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import p8fs.plugins
from p8fs import ids
from p8fs.database import Database
from p8fs.errors import (
    DocumentTimeout,
    EmptyDocument,
    ProviderError,
    SourceNotFound,
    UnsupportedContent,
)
from p8fs.pipeline import adelete, aingest, arename, resource_name
from p8fs.providers import ContentProvider, Section
from p8fs.settings import Settings
from tests.fixtures.servers import corpus_path

TENANT = "tenant-a"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", chunk_tokens=64, chunk_overlap=8)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _doc(paragraphs: int, word: str = "alpha") -> str:
    return "# Title\n\n" + "\n\n".join(f"Paragraph {i}: " + f"{word} " * 30 for i in range(paragraphs))


async def test_ingest_stores_file_and_named_chunks(database: Database, settings: Settings, tmp_path: Path) -> None:
    path = _write(tmp_path / "Notes.md", _doc(12))
    result = await aingest(str(path), TENANT, database=database, settings=settings)
    assert not result.skipped and result.provider == "text" and result.chunks > 3

    uri = str(path.resolve())
    stored = await database.get_file(TENANT, ids.file_id(TENANT, uri))
    assert stored is not None
    assert stored.uri == uri and stored.name == "Notes.md"
    assert stored.file_size == path.stat().st_size
    assert stored.mime_type == "text/markdown"
    assert stored.chunk_count == result.chunks
    import hashlib

    assert stored.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()

    resources = await database.list_resources(TENANT, file_id=stored.id)
    assert [r.name for r in resources] == [f"Notes_chunk_{i}" for i in range(result.chunks)]
    assert [r.ordinal for r in resources] == list(range(result.chunks))
    assert all(r.category == "content_chunk" for r in resources)
    assert [r.uri for r in resources] == [f"{uri}#chunk_{i}" for i in range(result.chunks)]
    assert [r.id for r in resources] == [ids.resource_id(stored.id, i) for i in range(result.chunks)]
    assert all(r.token_count and r.token_count <= 64 for r in resources)
    assert resources[0].metadata.get("heading") == "Title" or "Title" in str(resources[0].metadata)
    # Nothing lost: chunks minus their overlaps give back the document.
    text = "".join(r.content[r.metadata["overlap"]:] for r in resources)
    assert text == path.read_text()


async def test_unchanged_content_is_skipped_and_changed_content_leaves_no_stale_chunk(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    path = _write(tmp_path / "doc.md", _doc(12))
    first = await aingest(str(path), TENANT, database=database, settings=settings)
    again = await aingest(str(path), TENANT, database=database, settings=settings)
    assert again.skipped and again.chunks == first.chunks
    assert (await database.get_file(TENANT, first.file.id)).updated_at == first.file.updated_at  # type: ignore[union-attr]

    forced = await aingest(str(path), TENANT, database=database, settings=settings, force=True)
    assert not forced.skipped and forced.chunks == first.chunks

    _write(path, _doc(2, word="beta"))
    changed = await aingest(str(path), TENANT, database=database, settings=settings)
    assert not changed.skipped and changed.chunks < first.chunks
    resources = await database.list_resources(TENANT, file_id=first.file.id)
    assert len(resources) == changed.chunks
    assert all("alpha" not in r.content for r in resources)
    assert await database.count("resources", TENANT) == changed.chunks
    assert await database.count("files", TENANT) == 1


async def test_tenants_get_separate_rows(database: Database, settings: Settings, tmp_path: Path) -> None:
    path = _write(tmp_path / "shared.txt", _doc(3))
    a = await aingest(str(path), "tenant-a", database=database, settings=settings)
    b = await aingest(str(path), "tenant-b", database=database, settings=settings)
    assert a.file.id != b.file.id
    assert not b.skipped
    assert {r.tenant_id for r in await database.list_resources("tenant-b")} == {"tenant-b"}


@pytest.mark.parametrize(
    ("make", "error", "code"),
    [
        (lambda d: _write(d / "empty.txt", ""), EmptyDocument, "empty"),
        (lambda d: (d / "blob.bin").write_bytes(bytes(range(256)) * 64) and d / "blob.bin", UnsupportedContent, "unsupported"),
        (lambda d: d / "does-not-exist.pdf", SourceNotFound, "not_found"),
    ],
    ids=["empty", "unsupported", "missing"],
)
async def test_bad_input_raises_typed_error_and_records_it(
    sqlite_database: Database, settings: Settings, tmp_path: Path, make, error, code  # type: ignore[no-untyped-def]
) -> None:
    path = make(tmp_path)
    with pytest.raises(error):
        await aingest(str(path), TENANT, database=sqlite_database, settings=settings, process="test-proc")
    errors = await sqlite_database.list_errors(TENANT)
    assert len(errors) == 1
    assert errors[0].process == "test-proc"
    assert errors[0].metadata["uri"] == str(path.resolve())
    assert errors[0].metadata["code"] == code
    assert errors[0].metadata["permanent"] is True
    assert error.__name__ in errors[0].message
    assert errors[0].stack_trace and "Traceback" in errors[0].stack_trace
    assert await sqlite_database.count("files", TENANT) == 0


class _Boom(ContentProvider):
    name = "boom"
    extensions = (".boom",)
    priority = 100

    def extract(self, source, context):  # type: ignore[no-untyped-def]
        yield Section("first page", {"page": 1})
        raise ZeroDivisionError("bad table on page 2")


class _Hang(ContentProvider):
    name = "hang"
    extensions = (".hang",)

    def extract(self, source, context):  # type: ignore[no-untyped-def]
        yield Section("start")
        time.sleep(30)  # never calls check_deadline: the pipeline must still give up
        yield Section("never")


@pytest.fixture
def test_providers() -> Iterator[None]:
    p8fs.plugins.reset_plugins()
    registry = p8fs.plugins.get_registry()
    registry.add_provider(_Boom, "tests")
    registry.add_provider(_Hang, "tests")
    yield
    p8fs.plugins.reset_plugins()


async def test_provider_crash_becomes_typed_error_and_keeps_old_rows(
    sqlite_database: Database, settings: Settings, tmp_path: Path, test_providers: None
) -> None:
    path = _write(tmp_path / "report.boom", "anything")
    with pytest.raises(ProviderError, match=r"'boom' provider failed on report\.boom: ZeroDivisionError"):
        await aingest(str(path), TENANT, database=sqlite_database, settings=settings)
    (error,) = await sqlite_database.list_errors(TENANT)
    assert error.metadata["provider"] in ("boom", None)
    assert "ZeroDivisionError" in (error.stack_trace or "")
    # The transaction rolled back: no half-written file.
    assert await sqlite_database.count("resources", TENANT) == 0
    assert await sqlite_database.count("files", TENANT) == 0


async def test_a_provider_that_hangs_hits_the_document_time_limit(
    sqlite_database: Database, tmp_path: Path, test_providers: None
) -> None:
    settings = Settings(data_dir=tmp_path, document_timeout=1.0)
    path = _write(tmp_path / "slow.hang", "x")
    started = time.monotonic()
    with pytest.raises(DocumentTimeout, match="P8FS_DOCUMENT_TIMEOUT"):
        await aingest(str(path), TENANT, database=sqlite_database, settings=settings)
    assert time.monotonic() - started < 25  # gave up instead of waiting for the provider
    assert (await sqlite_database.list_errors(TENANT))[0].metadata["code"] == "timeout"


async def test_delete_and_rename(database: Database, settings: Settings, tmp_path: Path) -> None:
    path = _write(tmp_path / "Old.md", _doc(6))
    first = await aingest(str(path), TENANT, database=database, settings=settings)
    new_uri = str(tmp_path / "New.md")
    moved = await arename(str(path), new_uri, TENANT, database=database)
    assert moved is not None and moved.id == ids.file_id(TENANT, new_uri) and moved.name == "New.md"
    assert await database.get_file(TENANT, first.file.id) is None
    resources = await database.list_resources(TENANT, file_id=moved.id)
    assert [r.name for r in resources] == [resource_name("New.md", i) for i in range(first.chunks)]
    assert all(r.uri.startswith(new_uri + "#chunk_") for r in resources)
    assert await database.count("resources", TENANT) == first.chunks

    assert await adelete(new_uri, TENANT, database=database)
    assert await database.count("files", TENANT) == 0
    assert await database.count("resources", TENANT) == 0
    assert not await adelete(new_uri, TENANT, database=database)


async def _peak_ingest(database: Database, tmp_path: Path, name: str, paragraphs: int) -> tuple[int, int]:
    settings = Settings(data_dir=tmp_path, chunk_tokens=512, chunk_overlap=32)
    path = tmp_path / name
    paragraph = "The quick brown fox jumps over the lazy dog. " * 20
    with path.open("w") as fh:
        for i in range(paragraphs):
            fh.write(f"{i} {paragraph}\n\n")
    tracemalloc.start()
    try:
        result = await aingest(str(path), TENANT, database=database, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.chunks > paragraphs // 20
    return peak, path.stat().st_size


async def test_memory_does_not_grow_with_the_file(
    sqlite_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p8fs.database import spool

    # The database spool keeps 32 MiB in memory before using disk; shrink that part so files
    # small enough for a quick test already show the steady state.
    monkeypatch.setattr(spool.RowSpool.__init__, "__defaults__", (1 << 20,))
    small_peak, small = await _peak_ingest(sqlite_database, tmp_path, "small.txt", 1_500)
    big_peak, big = await _peak_ingest(sqlite_database, tmp_path, "big.txt", 9_000)
    assert big >= 6 * small * 0.9
    # Six times the input, yet the peak stays within the bounded buffers (read-ahead, the
    # queue between threads, the database spool), not a multiple of the file.
    assert big_peak < small_peak * 1.5 + 2_000_000, (small_peak, big_peak)
    assert big_peak < big, (big_peak, big)


async def test_corpus_markdown_and_sample_pdf(sqlite_database: Database, settings: Settings) -> None:
    result = await aingest(str(corpus_path("p8fs_sample_data/content/Sample.md")), TENANT,
                           database=sqlite_database, settings=settings)
    assert result.chunks > 10
    stored = await sqlite_database.list_resources(TENANT, file_id=result.file.id, limit=1)
    assert stored[0].name == "Sample_chunk_0"
