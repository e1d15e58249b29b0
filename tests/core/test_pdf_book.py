"""Book-length documents: extraction overlaps chunking and storing, with the same rows as before.

These tests prove the mechanisms (which thread runs the provider, how often the event loop is
woken, that the stored rows are exactly what a plain serial run produces) rather than timing
anything: wall time on a shared machine proves nothing. The speed itself is measured side by
side with raw pypdfium2 by ``benchmarks/pdf_throughput.py --book``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import p8fs.plugins
from p8fs import pipeline
from p8fs.chunking import Chunk, TokenChunker, require_text
from p8fs.database import Database
from p8fs.errors import DocumentTimeout, ProviderError
from p8fs.pipeline import aingest
from p8fs.providers import ContentProvider, ExtractContext, Section
from p8fs.settings import Settings
from tests.fixtures.servers import corpus_path

TENANT = "tenant-book"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    """The chunking defaults spelled out, so a changed default cannot move the golden digest."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "chunker": "tokens",
        "chunk_tokens": 512,
        "chunk_overlap": 64,
        "token_encoding": "o200k_base",
    }
    values.update(overrides)
    return Settings(**values)


# -- a provider and a chunker that record the thread each section passes through ----------------

_provider_threads: list[int] = []
_chunker_threads: list[int] = []


class _Pages(ContentProvider):
    """``N`` numbered pages of prose (``N`` = the file's first line), then optionally a failure."""

    name = "pages"
    extensions = (".pages",)
    priority = 100

    def extract(self, source: Any, context: ExtractContext) -> Iterator[Section]:
        with open(source, encoding="utf-8") if isinstance(source, str | Path) else source as fh:
            spec = fh.read()
        spec = spec.decode() if isinstance(spec, bytes) else spec
        count, _, mode = spec.strip().partition(" ")
        for number in range(1, int(count) + 1):
            context.check_deadline()
            _provider_threads.append(threading.get_ident())
            yield Section(f"Page {number}. " + "The quick brown fox jumps. " * 40, {"page": number})
        if mode == "fail":
            raise ZeroDivisionError("page after the last one is broken")
        if mode == "hang":
            time.sleep(30)  # never calls check_deadline: the pipeline must still give up


class _SeenChunker(TokenChunker):
    """The token chunker, noting the thread that pulls each section."""

    name = "seen"

    def chunk(self, sections: Iterable[Section]) -> Iterator[Chunk]:
        def seen() -> Iterator[Section]:
            for section in sections:
                _chunker_threads.append(threading.get_ident())
                yield section

        return super().chunk(seen())


@pytest.fixture
def recording_plugins() -> Iterator[None]:
    p8fs.plugins.reset_plugins()
    registry = p8fs.plugins.get_registry()
    registry.add_provider(_Pages, "tests")
    registry.add_chunker(_SeenChunker, "tests")
    _provider_threads.clear()
    _chunker_threads.clear()
    yield
    p8fs.plugins.reset_plugins()


def _pages_file(tmp_path: Path, spec: str) -> Path:
    path = tmp_path / f"doc-{spec.replace(' ', '-')}.pages"
    path.write_text(spec, encoding="utf-8")
    return path


async def test_a_long_document_is_extracted_in_a_thread_of_its_own_while_it_is_chunked(
    sqlite_database: Database, tmp_path: Path, recording_plugins: None
) -> None:
    settings = _settings(tmp_path, chunker="seen", chunk_tokens=128, chunk_overlap=16)
    result = await aingest(
        str(_pages_file(tmp_path, "60")), TENANT, database=sqlite_database, settings=settings
    )
    assert result.chunks > 60 and len(_provider_threads) == len(_chunker_threads) == 60
    ahead = pipeline.READ_AHEAD_AFTER
    chunking = set(_chunker_threads)
    assert len(chunking) == 1
    # The first pages come straight through (a short document never pays for a thread) ...
    assert set(_provider_threads[:ahead]) == chunking
    # ... the rest are read by another thread while the chunker works on earlier ones.
    assert set(_provider_threads[ahead:]).isdisjoint(chunking)
    assert len(set(_provider_threads[ahead:])) == 1


async def test_a_short_document_costs_no_extra_thread(
    sqlite_database: Database, tmp_path: Path, recording_plugins: None
) -> None:
    settings = _settings(tmp_path, chunker="seen")
    await aingest(str(_pages_file(tmp_path, "5")), TENANT, database=sqlite_database, settings=settings)
    assert len(_provider_threads) == 5
    assert set(_provider_threads) == set(_chunker_threads)


async def test_a_failure_after_the_read_ahead_starts_stores_nothing_and_is_recorded(
    sqlite_database: Database, tmp_path: Path, recording_plugins: None
) -> None:
    settings = _settings(tmp_path, chunker="seen")
    with pytest.raises(ProviderError, match="ZeroDivisionError: page after the last one"):
        await aingest(
            str(_pages_file(tmp_path, "40 fail")), TENANT, database=sqlite_database, settings=settings
        )
    assert len(_chunker_threads) == 40  # every page before the failure reached the chunker
    (error,) = await sqlite_database.list_errors(TENANT)
    assert "ZeroDivisionError" in (error.stack_trace or "")
    assert await sqlite_database.count("files", TENANT) == 0
    assert await sqlite_database.count("resources", TENANT) == 0


async def test_a_provider_hanging_after_the_read_ahead_starts_hits_the_time_limit(
    sqlite_database: Database, tmp_path: Path, recording_plugins: None
) -> None:
    settings = _settings(tmp_path, chunker="seen", document_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DocumentTimeout, match="P8FS_DOCUMENT_TIMEOUT"):
        await aingest(
            str(_pages_file(tmp_path, "20 hang")), TENANT, database=sqlite_database, settings=settings
        )
    assert time.monotonic() - started < 25
    assert (await sqlite_database.list_errors(TENANT))[0].metadata["code"] == "timeout"
    assert await sqlite_database.count("resources", TENANT) == 0


async def test_the_event_loop_is_woken_per_batch_of_chunks_not_per_chunk(
    sqlite_database: Database, tmp_path: Path, recording_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each wake-up is a GIL hand-over the extraction thread waits for; a book has a thousand
    chunks. (Database calls complete through the same method: a handful per file.)"""
    loop = asyncio.get_running_loop()
    calls = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    settings = _settings(tmp_path, chunk_tokens=64, chunk_overlap=8)
    result = await aingest(
        str(_pages_file(tmp_path, "80")), TENANT, database=sqlite_database, settings=settings
    )
    assert result.chunks > 300
    assert calls <= result.chunks // pipeline.WAKE_BATCH + 20, (calls, result.chunks)


# -- a corpus PDF: the rows are exactly what they were, on every database ----------------------

#: sha256 of the stored chunks of ``pdf/spf_GeoTopo-komprimiert.pdf`` (117 pages, 157 chunks of
#: at most 512 o200k tokens, 64 overlapping) as the serial pipeline stored them before extraction
#: was overlapped with chunking (see :func:`_digest`). A deliberate change to the PDF text or to
#: chunking changes it: recompute it then, with that change explained.
GEOTOPO_CHUNKS = 157
GEOTOPO_DIGEST = "88530143db020575d35fd2180f8292411f514cedc00140c75618aac8e80fc714"


def _digest(rows: Iterable[tuple[int, str, str, int | None, dict[str, Any]]]) -> str:
    digest = hashlib.sha256()
    for ordinal, name, content, tokens, metadata in rows:
        record = [ordinal, name.rsplit("_chunk_", 1)[1], content, tokens, metadata]
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


async def test_a_corpus_pdf_is_stored_exactly_as_a_serial_run_chunks_it(
    database: Database, tmp_path: Path
) -> None:
    pytest.importorskip("pypdfium2")
    from p8fs_node.pdf import PdfProvider

    path = corpus_path("pdf/spf_GeoTopo-komprimiert.pdf")
    settings = _settings(tmp_path)
    result = await aingest(str(path), TENANT, database=database, settings=settings)
    stored = await database.list_resources(TENANT, file_id=result.file.id)
    assert result.chunks == len(stored) == GEOTOPO_CHUNKS
    assert result.file.metadata["pages"] == 117

    # The same provider and chunker, one after the other in this thread: what overlapping them
    # must not change.
    context = ExtractContext(uri=str(path), filename=path.name, options={"ocr": False})
    serial = list(
        TokenChunker(512, 64, "o200k_base").chunk(require_text(PdfProvider().extract(path, context), context))
    )
    assert [(r.ordinal, r.content, r.token_count) for r in stored] == [
        (c.index, c.text, c.token_count) for c in serial
    ]
    assert [r.metadata for r in stored] == [{**c.metadata, "overlap": c.overlap} for c in serial]
    assert _digest((r.ordinal, r.name, r.content, r.token_count, r.metadata) for r in stored) == (
        GEOTOPO_DIGEST
    )


# -- the stream check before PDFium: small streams measured from the scan's window ---------------


def test_small_streams_are_measured_in_one_step_with_the_same_totals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bomb check inflates every stream of a book before PDFium sees it; thousands of them
    are small and settle in one inflate call from bytes the scan already holds. The totals (and
    so every limit decision) must be exactly the full path's."""
    pytest.importorskip("pypdfium2")
    from p8fs_node import pdf

    path = corpus_path("pdf/spf_GeoTopo-komprimiert.pdf")
    full_calls = 0
    full_path = pdf._inflated_size

    def counted(*args: Any, **kwargs: Any) -> tuple[int, int]:
        nonlocal full_calls
        full_calls += 1
        return full_path(*args, **kwargs)

    monkeypatch.setattr(pdf, "_inflated_size", counted)
    quick = pdf.check_stream_expansion(path, path.name)
    quick_full_calls, full_calls = full_calls, 0

    monkeypatch.setattr(pdf, "_small_stream_size", lambda *args: None, raising=False)
    slow = pdf.check_stream_expansion(path, path.name)
    assert quick == slow > path.stat().st_size
    assert full_calls > 500  # every stream took the full path
    assert quick_full_calls * 10 < full_calls  # now only the few large or odd ones do


def test_page_text_through_pdfium_handles_is_pypdfium2s_text_on_every_corpus_page() -> None:
    """Pages are read through pdfium's C handles (pypdfium2's page objects cost more per page
    than the text); the text and the "draws anything" answer must be exactly the helpers'."""
    pypdfium2 = pytest.importorskip("pypdfium2")
    import pypdfium2.raw as pdfium_c

    from p8fs_node import pdf

    compared = 0
    for path in sorted(corpus_path("pdf").glob("*.pdf")):
        try:
            doc = pypdfium2.PdfDocument(path)
        except pypdfium2.PdfiumError:
            continue  # encrypted or unreadable: nothing to compare
        try:
            for index in range(len(doc)):
                page = doc[index]
                textpage = page.get_textpage()
                expected = pdf.normalize_pdfium_text(textpage.get_text_range())
                draws = pdfium_c.FPDFPage_CountObjects(page) > 0
                textpage.close()
                page.close()
                with pdf.pdfium_lock(None):
                    assert pdf._raw_page_text(doc, index) == (expected, draws), (path.name, index)
                compared += 1
        finally:
            doc.close()
    assert compared > 150
