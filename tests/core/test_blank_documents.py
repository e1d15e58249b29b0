"""A document with no text but whitespace ends like a file of 0 bytes: ``EmptyDocument``.

One check between every provider and every chunker (``p8fs.chunking.require_text``), so each
provider kind is proven here through the real pipeline, provider and database: plain text,
Markdown, HTML and Word (unstructured), and a PDF whose only page holds nothing but spaces.
Files with content that is not text (a picture, a scan) are kept, with the reason they have no
text, and text that merely *starts* with blank lines loses nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from p8fs.chunking import require_text
from p8fs.database import Database
from p8fs.errors import EmptyDocument
from p8fs.pipeline import aingest
from p8fs.providers import ExtractContext, Section
from p8fs.settings import Settings
from tests.fixtures.servers import corpus_path

TENANT = "tenant-blank"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", chunk_tokens=64, chunk_overlap=8)


def needs(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{extra} is not installed")


def text_file(directory: Path) -> Path:
    path = directory / "blank.txt"
    path.write_text("\n\n\n", encoding="utf-8")
    return path


def markdown_file(directory: Path) -> Path:
    path = directory / "blank.md"
    path.write_text("  \n\n\t\n\n   \n", encoding="utf-8")
    return path


def html_file(directory: Path) -> Path:
    needs("unstructured", "p8fs-node[office]")
    path = directory / "blank.html"
    path.write_text(
        "<html><head><title> </title></head><body><p> </p>\n<div>&nbsp;\n</div></body></html>",
        encoding="utf-8",
    )
    return path


def word_file(directory: Path) -> Path:
    needs("docx", "p8fs-node[office]")
    import docx

    document = docx.Document()
    document.add_paragraph("   ")
    document.add_paragraph("")
    document.add_paragraph("\t")
    path = directory / "blank.docx"
    document.save(str(path))
    return path


def pdf_of_spaces(directory: Path) -> Path:
    """A one-page PDF whose only content is a text object showing three spaces."""
    content = b"BT /F1 12 Tf 72 720 Td (   ) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path = directory / "spaces.pdf"
    path.write_bytes(bytes(out))
    return path


@pytest.mark.parametrize(
    "make",
    [text_file, markdown_file, html_file, word_file, pdf_of_spaces],
    ids=["text", "markdown", "html", "word", "pdf"],
)
async def test_only_whitespace_is_an_empty_document(
    sqlite_database: Database,
    settings: Settings,
    tmp_path: Path,
    make: Callable[[Path], Path],
) -> None:
    path = make(tmp_path)
    assert path.stat().st_size > 0
    with pytest.raises(EmptyDocument, match="is empty"):
        await aingest(str(path), TENANT, database=sqlite_database, settings=settings)
    # Recorded exactly like a file of 0 bytes: an errors row with code "empty", nothing stored.
    (error,) = await sqlite_database.list_errors(TENANT)
    assert error.metadata["code"] == "empty"
    assert error.metadata["permanent"] is True
    assert await sqlite_database.count("files", TENANT) == 0
    assert await sqlite_database.count("resources", TENANT) == 0


async def test_text_after_leading_blank_lines_loses_nothing(
    sqlite_database: Database, settings: Settings, tmp_path: Path
) -> None:
    """Leading whitespace sections are held back, not dropped: the chunks give the file back."""
    path = tmp_path / "late.md"
    original = "\n\n\n   \n\n# Heading\n\nThe text comes after blank lines.\n"
    path.write_text(original, encoding="utf-8")
    result = await aingest(str(path), TENANT, database=sqlite_database, settings=settings)
    resources = await sqlite_database.list_resources(TENANT, file_id=result.file.id)
    assert "".join(r.content[r.metadata.get("overlap", 0) :] for r in resources) == original


async def test_a_scan_without_ocr_is_kept_with_its_reason(
    sqlite_database: Database, settings: Settings
) -> None:
    """No text is not always empty: an image-only page is content that OCR was told not to
    read, and the file is stored (no chunk) with the warning that says so."""
    path = corpus_path("pdf/unst_loremipsum-flat.pdf")
    result = await aingest(
        str(path), TENANT, database=sqlite_database, settings=settings, options={"ocr": False}
    )
    assert result.chunks == 0
    assert any("OCR was turned off" in w for w in result.file.metadata["warnings"])


async def test_a_picture_without_ocr_is_kept_with_its_reason(
    sqlite_database: Database, settings: Settings, tmp_path: Path
) -> None:
    needs("PIL", "p8fs-node[ocr]")
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.new("L", (64, 64), 128).save(path)
    result = await aingest(
        str(path), TENANT, database=sqlite_database, settings=settings, options={"ocr": False}
    )
    assert result.chunks == 0
    assert result.file.metadata["width"] == 64
    assert any("OCR was turned off" in w for w in result.file.metadata["warnings"])


def test_require_text_passes_sections_through_in_order() -> None:
    def run(
        sections: list[Section], uri: str, mime: str = "text/plain", *warnings: str
    ) -> list[str]:
        context = ExtractContext(uri=uri, mime_type=mime, warnings=list(warnings))
        return [s.text for s in require_text(iter(sections), context)]

    sections = [Section(" "), Section("\n"), Section("text"), Section("  "), Section("more")]
    assert run(sections, "x.txt") == [" ", "\n", "text", "  ", "more"]
    with pytest.raises(EmptyDocument, match="only whitespace"):
        run([Section(" \n")], "blank.txt")
    with pytest.raises(EmptyDocument, match="no text"):
        run([], "nothing.html", "text/html")
    # A provider's reason for having no text keeps the file (and no whitespace chunk is made),
    # and so does a medium whose text is derived (a recording without speech).
    assert run([Section("  ")], "scan.pdf", "application/pdf", "page 1 has no text layer") == []
    assert run([], "tone.wav", "audio/x-wav") == []
    assert run([Section(" ")], "silence.mp4", "video/mp4") == []
