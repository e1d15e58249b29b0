"""PdfProvider on the real corpus: pages, phrases, passwords, damage, layout, streaming, OCR.

Expected facts come from the corpus ``MANIFEST.tsv`` (page counts from ``pdfinfo``, phrases from
the upstream projects' own tests), not from running our code.
"""

from __future__ import annotations

import io
import re
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from p8fs.errors import (
    CorruptDocument,
    DocumentTimeout,
    EmptyDocument,
    EncryptedDocument,
    LimitExceeded,
    ProviderError,
)
from p8fs.providers import ExtractContext, Section
from p8fs_node import ocr as ocr_module
from p8fs_node.pdf import PdfProvider, normalize_pdfium_text
from tests.fixtures.servers import CORPUS_DIR, corpus_path, server_missing

PROVIDER = PdfProvider()


def extract(source: Any, **options: Any) -> tuple[list[Section], ExtractContext]:
    context = ExtractContext(filename=str(getattr(source, "name", source)), options=options)
    return list(PROVIDER.extract(source, context)), context


def flat(sections: list[Section]) -> str:
    """The document's text with whitespace collapsed and line-end hyphenation joined."""
    text = "\n".join(s.text for s in sections)
    return re.sub(r"\s+", " ", re.sub(r"-\n(?=\w)", "", text)).strip()


def require_ocr() -> None:
    reason = ocr_module.ocr_unavailable_reason()
    if reason:
        server_missing(f"tesseract OCR ({reason})")


# (file, pages, phrases that must appear) from MANIFEST.tsv expected_facts.
CORPUS_FACTS = [
    ("spf_minimal-document.pdf", 1, ["Lorem ipsum dolor sit amet, consetetur sadipscing elitr"]),
    (
        "pdfjs_tracemonkey.pdf",
        14,
        [
            "Trace-based Just-in-Time Type Specialization for Dynamic Languages",
            "Andreas Gal",
            "Brendan Eich",
        ],
    ),
    ("spf_multicolumn.pdf", 3, ["Two-Column Document with Lorem Ipsum", "Abstract"]),
    ("pypdf_Seige_of_Vicksburg_Sample_OCR.pdf", 6, ["THE SIEGE OF VICKSBURG"]),
    ("unst_korean-text-with-tables.pdf", 1, ["할인점·주유·온라인쇼핑몰", "빅포인트"]),
    ("pdfjs_vertical.pdf", 3, ["あいうえお", "日本語"]),
    (
        "pypdf_multilang.pdf",
        1,
        [
            "English: Hello World",
            "Arabic: مرحبا بالعالم",
            "Russian: Привет, мир",
            "Chinese (traditional): 你好世界",
            "Thai: สวัสดีชาวโลก",
            "Japanese: こんにちは世界",
        ],
    ),
    ("spf_habibi.pdf", 1, ["habibi"]),
    (
        "spf_libreoffice-form.pdf",
        1,
        ["Example for a Form", "First Name", "Birthday", "Nationality"],
    ),
    (
        "unst_copy-protected.pdf",
        2,
        ["LayoutParser: A Unified Toolkit for Deep Learning Based Document Image Analysis"],
    ),
    ("pypdf_r2-empty-password.pdf", 1, ["pdf encryption test password: asdfzxcv"]),
    ("pm_zen_of_python_corrupted.pdf", 1, ["Beautiful is better than ugly."]),
    ("spf_GeoTopo-komprimiert.pdf", 117, ["Einführung in die Geometrie und Topologie"]),
    (
        "unst_rotated-page-90.pdf",
        1,
        ["Hello World Test Text", "Second line of text here", "Rotated page fixture"],
    ),
    (
        "unst_header-test-doc.pdf",
        1,
        ["I Am A Header", "Title", "Here is a lovely sentences.", "I Am A Footer"],
    ),
]


@pytest.mark.parametrize(
    ("name", "pages", "phrases"), CORPUS_FACTS, ids=[f[0] for f in CORPUS_FACTS]
)
def test_corpus_pages_and_phrases(name: str, pages: int, phrases: list[str]) -> None:
    sections, context = extract(corpus_path(f"pdf/{name}"), ocr=False)
    assert context.metadata["pages"] == pages
    page_numbers = [s.metadata["page"] for s in sections if s.metadata["kind"] == "page"]
    assert page_numbers == sorted(page_numbers)
    assert set(page_numbers) | set(context.metadata["pages_without_text"]) == set(
        range(1, pages + 1)
    )
    text = flat(sections)
    for phrase in phrases:
        assert phrase in text


def test_p8fs_original_sample_documents() -> None:
    """The original p8fs's own sample PDFs (MANIFEST: 8 and 2 pages, their opening text)."""
    sections, context = extract(corpus_path("p8fs_sample_data/content/Sample.pdf"))
    assert context.metadata["pages"] == 8
    assert context.metadata["title"] == "Sample"
    assert flat(sections).startswith("P8FS - Next Generation Smart Content Management System")
    sections, context = extract(corpus_path("p8fs_sample_data/p8fs_node/documents/sample.pdf"))
    assert context.metadata["pages"] == 2
    assert [s.metadata["page"] for s in sections] == [1, 2]
    assert "Sample PDF Document" in sections[0].text
    assert "This is a test PDF for integration testing." in flat(sections[:1])
    assert "Page 2: Additional Content" in sections[1].text


def test_text_is_normalised_but_not_cleaned() -> None:
    sections, _ = extract(corpus_path("pdf/pdfjs_tracemonkey.pdf"))
    joined = "".join(s.text for s in sections)
    assert "\r" not in joined and "\ufffe" not in joined and "\x00" not in joined
    assert normalize_pdfium_text("a\r\nb\rc taki\ufffemata\x00") == "a\nb\nc takimata"
    # Ligature-free words and math symbols survive as pdfium reads them.
    assert "∗" in joined


def test_document_metadata_from_info_dictionary() -> None:
    _, context = extract(corpus_path("pdf/spf_GeoTopo-komprimiert.pdf"))
    meta = context.metadata
    assert meta["author"] == "Martin Thoma"
    assert meta["producer"].startswith("3-Heights")
    assert meta["encrypted"] is False
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2}|Z)?", meta["created"])
    assert meta["engine"] == "pypdfium2"


def test_header_page_text_keeps_document_order() -> None:
    sections, _ = extract(corpus_path("pdf/unst_header-test-doc.pdf"))
    text = flat(sections)
    positions = [
        text.index(p)
        for p in ("I Am A Header", "Title", "Here is a lovely sentences.", "I Am A Footer")
    ]
    assert positions == sorted(positions)


def test_form_field_values_are_kept() -> None:
    sections, _ = extract(corpus_path("pdf/spf_libreoffice-form.pdf"))
    forms = [s for s in sections if s.metadata["kind"] == "form"]
    assert len(forms) == 1 and forms[0].metadata["page"] == 1
    assert "First Name: Alice" in forms[0].text
    assert "First Name_2: Bob" in forms[0].text


# -- encryption --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pypdf_r2-empty-password.pdf", "unst_copy-protected.pdf"])
def test_empty_user_password_opens_silently(name: str) -> None:
    sections, context = extract(corpus_path(f"pdf/{name}"))
    assert context.metadata["encrypted"] is True
    assert sections and not context.warnings


@pytest.mark.parametrize(
    ("name", "passwords", "phrase"),
    [
        (
            "spf_libreoffice-writer-password.pdf",
            ["openpassword", "permissionpassword"],
            "Lorem ipsum dolor sit amet, consetetur sadipscing elitr",
        ),
        ("pypdf_r6-both-passwords.pdf", ["foo", "bar"], "pdf encryption test password: asdfzxcv"),
    ],
)
def test_password_protected(name: str, passwords: list[str], phrase: str) -> None:
    path = corpus_path(f"pdf/{name}")
    with pytest.raises(EncryptedDocument, match=r"needs a password.*'password' option") as missing:
        extract(path)
    assert missing.value.details["reason"] == "password_required"
    with pytest.raises(EncryptedDocument, match=r"password given .* is wrong") as wrong:
        extract(path, password="not-it")
    assert wrong.value.details["reason"] == "wrong_password"
    for password in passwords:  # the user and the owner password both open it
        sections, context = extract(path, password=password)
        assert context.metadata["encrypted"] is True
        assert phrase in flat(sections)
    # Layout mode decrypts through pdfminer.six with the same password.
    sections, _ = extract(path, password=passwords[0], layout=True)
    assert phrase in flat(sections)


def test_password_error_never_repeats_the_password() -> None:
    with pytest.raises(EncryptedDocument) as wrong:
        extract(corpus_path("pdf/pypdf_r6-both-passwords.pdf"), password="s3cret-guess")
    assert "s3cret-guess" not in str(wrong.value)


# -- damaged input -----------------------------------------------------------------------------


def test_truncated_file_is_a_typed_error() -> None:
    with pytest.raises(CorruptDocument, match="not a readable PDF"):
        extract(corpus_path("pdf/pdfjs_bug1020226.pdf"))


def test_corrupted_stream_recovers_the_page() -> None:
    sections, _ = extract(corpus_path("pdf/pm_zen_of_python_corrupted.pdf"))
    assert "Beautiful is better than ugly." in flat(sections)
    # pdfminer.six (layout) reads the part pdfium skips: the print header its own test expects.
    sections, _ = extract(corpus_path("pdf/pm_zen_of_python_corrupted.pdf"), layout=True)
    text = sections[0].text
    assert text.startswith("Mai 30, 18 13:27\n\nzen_of_python.txt")
    assert "Beautiful is better than ugly." in flat(sections)


def test_empty_and_non_pdf_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(EmptyDocument):
        extract(empty)
    with pytest.raises(EmptyDocument):
        extract(io.BytesIO(b""))
    text = tmp_path / "notes.pdf"
    text.write_text("just some text, no PDF here\n")
    with pytest.raises(CorruptDocument):
        extract(text)


def test_truncated_copy_of_a_real_pdf(tmp_path: Path) -> None:
    """Cut a real file in half: a typed error, or the pages that could be read plus warnings."""
    data = corpus_path("pdf/pdfjs_tracemonkey.pdf").read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(data[: len(data) // 2])
    try:
        sections, context = extract(cut, ocr=False)
    except ProviderError as exc:
        assert isinstance(exc, CorruptDocument)
    else:
        assert context.metadata["pages"] >= 1
        assert all(s.metadata["page"] <= context.metadata["pages"] for s in sections)


@pytest.mark.parametrize("path", sorted((CORPUS_DIR / "pdf").glob("*.pdf")), ids=lambda p: p.name)
def test_every_corpus_pdf_extracts_or_fails_typed(path: Path) -> None:
    """No corpus PDF crashes the provider: text, or a typed error a user can act on."""
    try:
        sections, context = extract(path, ocr=False)
    except (EncryptedDocument, CorruptDocument):
        return
    assert context.metadata["pages"] >= 1
    assert all(s.text.strip() for s in sections)  # never an empty section


# -- options and limits --------------------------------------------------------------------------


def test_max_pages_limit() -> None:
    with pytest.raises(LimitExceeded, match="117 pages, more than the limit of 100"):
        extract(corpus_path("pdf/spf_GeoTopo-komprimiert.pdf"), max_pages=100)


def test_options_given_as_text() -> None:
    """Options from event metadata or a CLI arrive as strings: "false" must mean off."""
    _, context = extract(corpus_path("pdf/unst_loremipsum-flat.pdf"), ocr="false")
    assert context.metadata["ocr_pages"] == []
    assert any("OCR was turned off" in w for w in context.warnings)
    _, context = extract(corpus_path("pdf/spf_minimal-document.pdf"), layout="true")
    assert context.metadata["engine"] == "pdfminer.six"
    _, context = extract(corpus_path("pdf/spf_minimal-document.pdf"), layout="no")
    assert context.metadata["engine"] == "pypdfium2"


def test_deadline_stops_extraction() -> None:
    context = ExtractContext(deadline=time.monotonic() - 1)
    with pytest.raises(DocumentTimeout, match="P8FS_DOCUMENT_TIMEOUT"):
        list(PROVIDER.extract(corpus_path("pdf/pdfjs_tracemonkey.pdf"), context))


def test_layout_reads_columns_without_interleaving() -> None:
    """A sentence running down the left column stays whole (interleaving would split it)."""
    for layout in (True, False):
        sections, context = extract(corpus_path("pdf/spf_multicolumn.pdf"), layout=layout)
        text = flat(sections)
        assert context.metadata["engine"] == ("pdfminer.six" if layout else "pypdfium2")
        assert (
            "Lorem ipsum dolor sit amet, consectetuer adipiscing elit. Ut purus elit, vestibulum "
            "ut, placerat ac, adipiscing vitae, felis. Curabitur dictum gravida mauris. Nam arcu "
            "libero, nonummy eget, consectetuer id, vulputate a, magna."
        ) in text
        assert text.index("Abstract") < text.index("Lorem ipsum dolor sit amet")


def test_layout_decodes_fonts_pdfium_cannot() -> None:
    """The non-Unicode CMap sample: pdfminer.six's own test expects this Czech phrase."""
    sections, _ = extract(corpus_path("pdf/pm_issue-791-non-unicode-cmap.pdf"), layout=True)
    assert "Peněžní prostředky na účtech" in flat(sections)


def test_layout_handles_rotation_vertical_and_rtl() -> None:
    sections, _ = extract(corpus_path("pdf/unst_rotated-page-90.pdf"), layout=True)
    assert "Hello World Test Text" in flat(sections)
    sections, _ = extract(corpus_path("pdf/pdfjs_vertical.pdf"), layout=True, ocr=False)
    assert "あいうえお" in flat(sections)
    sections, _ = extract(corpus_path("pdf/spf_habibi.pdf"), layout=True)
    assert "حَبيبي habibi" in flat(sections)


# -- sources and streaming ---------------------------------------------------------------------


class NonSeekable(io.RawIOBase):
    """A pipe-like stream: read only, no seek (what a socket or a process pipe gives)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


class CountingReader(io.RawIOBase):
    """A seekable stream that counts the bytes read through it and returns short reads."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[:4096]  # short reads, like a network stream
        n = self._file.readinto(view)
        self.bytes_read += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


@pytest.mark.parametrize("layout", [False, True])
def test_file_objects_give_the_same_sections_as_paths(layout: bool) -> None:
    path = corpus_path("pdf/spf_multicolumn.pdf")
    expected, _ = extract(path, layout=layout)
    with path.open("rb") as handle:
        from_handle, _ = extract(handle, layout=layout)
    from_pipe, _ = extract(NonSeekable(path.read_bytes()), layout=layout)
    short_reads = CountingReader(path)
    from_short_reads, _ = extract(short_reads, layout=layout)
    short_reads.close()
    assert from_handle == expected
    assert from_pipe == expected
    assert from_short_reads == expected


def test_encrypted_file_object_with_password() -> None:
    path = corpus_path("pdf/pypdf_r6-both-passwords.pdf")
    with path.open("rb") as handle:
        sections, _ = extract(handle, password="foo")
    assert "asdfzxcv" in flat(sections)


def test_pages_stream_lazily() -> None:
    """The first page arrives after reading a small part of a 1.8 MB, 117-page file."""
    path = corpus_path("pdf/spf_GeoTopo-komprimiert.pdf")
    reader = CountingReader(path)
    context = ExtractContext()
    sections = PROVIDER.extract(reader, context)
    assert isinstance(sections, types.GeneratorType)
    assert reader.bytes_read == 0  # nothing happens before iteration
    first = next(sections)
    assert first.metadata == {"page": 1, "kind": "page"}
    assert context.metadata["pages"] == 117
    read_for_first_page = reader.bytes_read
    rest = list(sections)
    assert len(rest) + 1 + len(context.metadata["pages_without_text"]) == 117
    assert read_for_first_page < reader.bytes_read / 4
    reader.close()


def test_abandoned_extraction_closes_the_document() -> None:
    path = corpus_path("pdf/pdfjs_tracemonkey.pdf")
    reader = CountingReader(path)
    sections: Iterator[Section] = PROVIDER.extract(reader, ExtractContext())
    next(sections)
    sections.close()  # type: ignore[attr-defined]  # GeneratorExit runs the cleanup
    # A fresh extraction still works (pdfium state is not left locked or corrupted).
    assert len(extract(path)[0]) == 14
    reader.close()


def test_parallel_threads_give_the_same_text() -> None:
    """PDFium is not thread-safe; the provider serialises its calls per page."""
    names = ["pdfjs_tracemonkey.pdf", "spf_multicolumn.pdf", "unst_copy-protected.pdf"] * 2
    paths = [corpus_path(f"pdf/{n}") for n in names]
    sequential = [extract(p)[0] for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda p: extract(p)[0], paths))
    assert parallel == sequential


def test_a_hung_pdfium_call_elsewhere_costs_a_timeout_not_a_hang() -> None:
    """Another thread holds PDFium (as a hung call would): this document fails at its deadline."""
    import threading

    from p8fs_node.pdf import PDFIUM_LOCK

    held, release = threading.Event(), threading.Event()

    def hog() -> None:
        with PDFIUM_LOCK:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hog)
    thread.start()
    try:
        assert held.wait(5)
        context = ExtractContext(deadline=time.monotonic() + 0.3)
        with pytest.raises(DocumentTimeout, match="PDFium stayed busy"):
            list(PROVIDER.extract(corpus_path("pdf/spf_minimal-document.pdf"), context))
    finally:
        release.set()
        thread.join()
    assert len(extract(corpus_path("pdf/spf_minimal-document.pdf"))[0]) == 1


# -- pages without text and OCR ------------------------------------------------------------------


def test_pages_without_text_are_reported_when_ocr_is_off() -> None:
    sections, context = extract(corpus_path("pdf/unst_loremipsum-flat.pdf"), ocr=False)
    assert sections == []
    assert context.metadata["pages_without_text"] == [1]
    assert context.metadata["ocr_pages"] == []
    assert any("1 of 1 page(s)" in w and "no text layer" in w for w in context.warnings)


def test_missing_tesseract_is_reported_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ocr_module.TESSERACT_CMD_ENV, "tesseract-not-installed-here")
    ocr_module.ocr_unavailable_reason.cache_clear()
    try:
        sections, context = extract(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    finally:
        monkeypatch.undo()
        ocr_module.ocr_unavailable_reason.cache_clear()
    assert sections == []
    assert context.metadata["pages_without_text"] == [1]
    (warning,) = context.warnings
    assert "were not OCR'd" in warning and "tesseract-not-installed-here" in warning


def test_ocr_reads_a_scanned_page() -> None:
    require_ocr()
    sections, context = extract(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    assert [s.metadata for s in sections] == [{"page": 1, "kind": "page", "ocr": True}]
    assert "Lorem ipsum dolor sit amet" in flat(sections)
    assert context.metadata["ocr_pages"] == [1]
    assert context.metadata["pages_without_text"] == [1]
    assert context.warnings == []


def test_ocr_reads_a_table_image() -> None:
    require_ocr()
    sections, _ = extract(corpus_path("pdf/unst_single_table.pdf"))
    text = flat(sections)
    for cell in ("total chunks", "64,058", "800.73", "Base 128"):
        assert cell in text


def test_ocr_does_not_hallucinate_on_a_tiny_picture() -> None:
    """The 16x16 CCITT smiley has no text: OCR must add none."""
    require_ocr()
    sections, context = extract(corpus_path("pdf/spf_imagemagick-CCITTFaxDecode.pdf"))
    assert sections == []
    assert context.metadata["pages_without_text"] == [1]
    assert context.metadata["ocr_pages"] == []
    assert any("none that OCR could recognise" in w for w in context.warnings)
