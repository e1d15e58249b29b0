"""OfficeProvider on the real corpus (facts from MANIFEST.tsv) and on files the tests build.

Runs under the loopback-only network guard of conftest.py: any telemetry ping or model download
fails the test that caused it.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from p8fs.errors import (
    CorruptDocument,
    DocumentTimeout,
    EmptyDocument,
    EncryptedDocument,
    LimitExceeded,
    ProviderUnavailable,
    UnsupportedContent,
)
from p8fs.providers import ExtractContext, Section, Source
from p8fs.registry import Registry
from p8fs_node.office import OfficeProvider, decode_html, html_table_to_markdown
from tests.fixtures.servers import corpus_path

# Checked without importing unstructured: its import pings a telemetry host unless opted out,
# and collection runs outside the network guard. OfficeProvider.extract opts out first.
pytestmark = pytest.mark.skipif(
    not OfficeProvider.is_available(), reason="p8fs-node[office] (unstructured) is not installed"
)

PROVIDER = OfficeProvider()


def extract(
    source: Source, filename: str = "", **options: object
) -> tuple[list[Section], ExtractContext]:
    if not filename and isinstance(source, Path):
        filename = source.name
    context = ExtractContext(filename=filename, options=dict(options))
    sections = list(PROVIDER.extract(source, context))
    for section in sections:  # the contract every section must meet
        assert section.text.strip()
        assert section.metadata["kind"]
        json.dumps(section.metadata)
    return sections, context


def text_of(sections: list[Section]) -> str:
    return "\n\n".join(s.text for s in sections)


def kinds(sections: list[Section], kind: str) -> list[Section]:
    return [s for s in sections if s.metadata["kind"] == kind]


# -- corpus ------------------------------------------------------------------------------------


def test_docx_handbook_keeps_header_chapter_and_pages() -> None:
    sections, context = extract(corpus_path("docs/unst_handbook-1p.docx"))
    assert sections[0].text == "US Trustee Handbook"
    assert sections[0].metadata["kind"] == "Header"
    text = text_of(sections)
    assert "CHAPTER 1 – INTRODUCTION" in text
    assert re.search(r"A\.\s+PURPOSE", text)
    assert context.metadata["format"] == "docx"
    pages = [s.metadata["page"] for s in sections if "page" in s.metadata]
    assert pages == sorted(pages) and pages[0] == 1 and pages[-1] >= 2
    assert not kinds(sections, "PageBreak")


def test_docx_tables_stay_tables() -> None:
    sections, _ = extract(corpus_path("docs/unst_docx-tables.docx"))
    tables = kinds(sections, "Table")
    assert len(tables) == 3
    simple, nested, merged = tables
    assert simple.metadata["table_format"] == "markdown"
    assert simple.text.splitlines()[0] == "| Header Col 1 | Header Col 2 |"
    assert simple.text.splitlines()[1] == "| --- | --- |"
    assert "| a | >b< | c |" in nested.text.splitlines()
    # Merged cells cannot be written in Markdown: the HTML keeps which cell spans what.
    assert merged.metadata["table_format"] == "html"
    assert 'rowspan="2"' in merged.text and 'colspan="2"' in merged.text
    # Each table follows the caption paragraph that introduces it, in document order.
    order = [s.text for s in sections]
    for caption, table in (
        ("Simple uniform table", simple),
        ("Nested Table", nested),
        ("Table with merged cells", merged),
    ):
        assert order.index(caption) + 1 == order.index(table.text)


def test_pptx_slide_title_bullets_and_text_box() -> None:
    sections, context = extract(corpus_path("docs/unst_fake-power-point.pptx"))
    assert context.metadata["format"] == "pptx"
    assert sections[0].text == "Adding a Bullet Slide"
    assert sections[0].metadata["kind"] == "Title"
    bullets = kinds(sections, "ListItem")
    assert bullets and bullets[0].text.splitlines()[0] == "Find the bullet slide layout"
    assert bullets[0].metadata["heading"] == "Adding a Bullet Slide"
    assert "Here is some text in a text box!" in text_of(sections)
    assert {s.metadata["slide"] for s in sections} == {1}
    assert all("page" not in s.metadata for s in sections)


def test_pptx_table_as_markdown_under_its_slide_title() -> None:
    sections, _ = extract(corpus_path("docs/unst_fake-power-point-table.pptx"))
    (table,) = kinds(sections, "Table")
    lines = table.text.splitlines()
    assert lines[0] == "| Column 1 | Column 2 | Column 3 |"
    assert lines[-1].endswith("| Aqua |")
    assert table.metadata == {
        "kind": "Table",
        "heading": "A Slide with a Table",
        "slide": 1,
        "table_format": "markdown",
    }


def test_html_sec_filing() -> None:
    sections, _ = extract(corpus_path("docs/unst_example-10k-1p.html"))
    text = text_of(sections)
    assert "Galaxy Gaming, Inc." in text
    assert re.search(r"Commission file number\s*:\s*000-30653", text)
    assert "TRANSITION REPORT PURSUANT TO SECTION 13 OR 15(d)" in text
    tables = kinds(sections, "Table")
    # Layout spacer columns (empty in every row) are dropped, real cells kept together.
    registered = next(t for t in tables if "Trading symbol" in t.text)
    assert "| Common stock | GLXZ | OTCQB marketplace |" in registered.text.splitlines()


def test_html_cp1252_without_charset_meta() -> None:
    sections, _ = extract(corpus_path("docs/unst_fake-html-cp1252.html"))
    assert sections[0].text == "My First Heading"
    text = text_of(sections)
    assert "Der Preis betrug 15,50 €." in text
    assert "El niño comió paella con ñoquis." in text
    assert all(s.metadata["heading"] == "My First Heading" for s in sections)


def test_decode_html_prefers_declared_charset_and_reads_latin1_as_windows_1252() -> None:
    body = "<p>Crème brûlée – 5 €</p>"
    declared_8859_2 = b'<meta charset="iso-8859-2"><p>\xb1\xea</p>'  # ą ę in Latin-2
    assert "ąę" in decode_html(declared_8859_2)
    latin1_label = b'<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">'
    assert decode_html(latin1_label + body.encode("cp1252")).endswith(body)
    # A wrong declaration (bytes are not valid in it) falls back to detection.
    assert decode_html(b'<meta charset="utf-16">' + body.encode("utf-8")).endswith(body)


def test_epub_text_and_dublin_core_metadata() -> None:
    sections, context = extract(corpus_path("docs/unst_winter-sports.epub"))
    assert context.metadata["title"] == "Winter Sports in Switzerland"
    assert context.metadata["author"] == "E. F. Benson"
    assert context.metadata["language"] == "en"
    text = text_of(sections)
    assert "Winter Sports in Switzerland" in text and "E. F. Benson" in text
    headed = [s for s in sections if s.metadata["heading"]]
    assert len(headed) > len(sections) // 2


def test_original_p8fs_sample_docx() -> None:
    sections, _ = extract(corpus_path("p8fs_sample_data/content/Sample.docx"))
    assert sections[0].text == "P8FS - Next Generation Smart Content Management System"
    assert sections[0].metadata["kind"] == "Title"
    assert sections[1].metadata["heading"] == sections[0].text
    headings = {s.metadata["heading"] for s in sections}
    assert "System Architecture" in headings


def test_file_object_gives_the_same_sections_as_the_path() -> None:
    path = corpus_path("docs/unst_docx-tables.docx")
    from_path, _ = extract(path)
    stream = io.BytesIO(path.read_bytes())
    stream.seek(17)  # the provider must not depend on where the caller left the stream
    from_stream, _ = extract(stream, filename=path.name)
    assert from_stream == from_path
    html = corpus_path("docs/unst_fake-html-cp1252.html")
    with html.open("rb") as handle:
        assert extract(handle, filename=html.name)[0] == extract(html)[0]


# -- formats built by the tests ----------------------------------------------------------------


def test_eml_headers_then_body(tmp_path: Path) -> None:
    message = EmailMessage()
    message["Subject"] = "Quarterly numbers – Zürich office"
    message["From"] = "Anna Müller <anna@example.org>"
    message["To"] = "team@example.org"
    message["Date"] = "Tue, 07 Jan 2025 09:30:00 +0100"
    message.set_content("Revenue grew 12% in Q4.\n\nThe Zürich office opened in March.\n")
    message.add_alternative(
        "<html><body><h1>Q4 summary</h1><p>Revenue grew 12% in Q4.</p>"
        "<p>The Zürich office opened in March.</p></body></html>",
        subtype="html",
    )
    path = tmp_path / "numbers.eml"
    path.write_bytes(bytes(message))
    sections, context = extract(path)
    header = sections[0]
    assert header.metadata["kind"] == "EmailHeader"
    assert header.text.splitlines()[0] == "Subject: Quarterly numbers – Zürich office"
    assert "From: Anna Müller <anna@example.org>" in header.text
    assert context.metadata["subject"] == "Quarterly numbers – Zürich office"
    body = text_of(sections[1:])
    assert "Revenue grew 12% in Q4." in body
    assert "The Zürich office opened in March." in body
    assert any(s.metadata["kind"] == "Title" and s.text == "Q4 summary" for s in sections)


def test_xlsx_each_sheet_a_named_table(tmp_path: Path) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    fruit = workbook.active
    fruit.title = "Fruit"
    for row in (("Name", "Colour", "Price"), ("Apple", "Red", 1.25), ("Kiwi", "Green", 0.8)):
        fruit.append(row)
    stock = workbook.create_sheet("Stock")
    for row in (("Warehouse", "Units"), ("Basel", 120), ("Genève", 75)):
        stock.append(row)
    path = tmp_path / "inventory.xlsx"
    workbook.save(path)
    sections, context = extract(path)
    tables = kinds(sections, "Table")
    by_sheet = {t.metadata["sheet"]: t for t in tables}
    assert set(by_sheet) == {"Fruit", "Stock"}
    assert "| Apple | Red | 1.25 |" in by_sheet["Fruit"].text.splitlines()
    assert "| Genève | 75 |" in by_sheet["Stock"].text.splitlines()
    assert context.metadata["format"] == "xlsx"


def test_odt_heading_and_paragraph(tmp_path: Path) -> None:
    import pypandoc

    path = tmp_path / "minutes.odt"
    pypandoc.convert_text(
        "# Board minutes\n\nThe board approved the budget for 2025.\n\n- item one\n- item two\n",
        "odt",
        format="markdown",
        outputfile=str(path),
    )
    sections, context = extract(path)
    assert context.metadata["format"] == "odt"
    assert sections[0].text == "Board minutes" and sections[0].metadata["kind"] == "Title"
    text = text_of(sections)
    assert "The board approved the budget for 2025." in text
    assert "item one" in text and "item two" in text
    assert all(s.metadata["heading"] == "Board minutes" for s in sections)


def test_rtf_literal(tmp_path: Path) -> None:
    path = tmp_path / "letter.rtf"
    path.write_bytes(
        rb"{\rtf1\ansi\ansicpg1252{\fonttbl\f0\fswiss Helvetica;}\f0\pard"
        rb" Dear Ms. M\'fcller,\par\par The invoice total is 15,50 \'80.\par}"
    )
    sections, _ = extract(path)
    text = text_of(sections)
    assert "Dear Ms. Müller," in text
    assert "The invoice total is 15,50 €." in text


# -- bad input -------------------------------------------------------------------------------


def test_truncated_docx_is_corrupt(tmp_path: Path) -> None:
    data = corpus_path("docs/unst_handbook-1p.docx").read_bytes()
    path = tmp_path / "handbook.docx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDocument, match=r"handbook\.docx.*damaged or truncated"):
        extract(path)


def test_zip_that_is_not_a_docx_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "fake.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    with pytest.raises(CorruptDocument, match=r"fake\.docx.*Word"):
        extract(path)


def test_garbage_pptx_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "slides.pptx"
    path.write_bytes(b"this is plain text pretending to be a presentation" * 20)
    with pytest.raises(CorruptDocument, match=r"slides\.pptx"):
        extract(path)


def test_password_protected_docx_is_encrypted_document(tmp_path: Path) -> None:
    from msoffcrypto.format.ooxml import OOXMLFile  # installed with unstructured's xlsx extra

    path = tmp_path / "secret.docx"
    with corpus_path("docs/unst_docx-tables.docx").open("rb") as plain, path.open("wb") as out:
        OOXMLFile(plain).encrypt("s3cret", out)
    with pytest.raises(EncryptedDocument, match=r"secret\.docx.*option 'password'"):
        extract(path)
    with pytest.raises(EncryptedDocument, match="does not open"):
        extract(path, password="wrong")
    sections, context = extract(path, password="s3cret")
    assert context.metadata["decrypted"] is True
    assert sections == extract(corpus_path("docs/unst_docx-tables.docx"))[0]


def test_legacy_binary_office_file_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "old.docx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4096))
    with pytest.raises(UnsupportedContent, match="legacy binary"):
        extract(path)


def test_encrypted_zip_member_is_encrypted_document(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        archive.writestr("content.xml", b"\x00" * 64)
    data = bytearray(buffer.getvalue())
    # zipfile cannot write encrypted members: set the "encrypted" flag (bit 0) of the second
    # member in its local header (flags at +6) and central directory entry (+8), as a ZIP tool
    # that used a password would have.
    local = data.index(b"PK\x03\x04", 1)
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    path = tmp_path / "locked.odt"
    path.write_bytes(bytes(data))
    with pytest.raises(EncryptedDocument, match="encrypted"):
        extract(path)


def test_decompression_bomb_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        with archive.open("word/document.xml", "w") as member:
            zeros = bytes(1 << 20)
            for _ in range(32):
                member.write(zeros)
    assert path.stat().st_size < 10_000
    with pytest.raises(LimitExceeded, match="decompression bomb"):
        extract(path)


def test_declared_uncompressed_size_limit_is_an_option() -> None:
    path = corpus_path("docs/unst_handbook-1p.docx")
    with pytest.raises(LimitExceeded, match="max_uncompressed_bytes") as caught:
        extract(path, max_uncompressed_bytes=10_000)
    assert caught.value.details["declared"] > 10_000
    assert extract(path, max_uncompressed_bytes=10_000_000)[0]


def test_empty_files(tmp_path: Path) -> None:
    empty_docx = tmp_path / "empty.docx"
    empty_docx.write_bytes(b"")
    with pytest.raises(EmptyDocument, match=r"empty\.docx is empty"):
        extract(empty_docx)
    empty_html = tmp_path / "empty.html"
    empty_html.write_bytes(b"")
    assert extract(empty_html)[0] == []


def test_rtf_without_signature_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "wrong.rtf"
    path.write_bytes(b"just text")
    with pytest.raises(CorruptDocument, match="RTF signature"):
        extract(path)


def test_deadline_stops_extraction() -> None:
    context = ExtractContext(filename="x.epub", deadline=time.monotonic() - 1)
    with pytest.raises(DocumentTimeout):
        list(PROVIDER.extract(corpus_path("docs/unst_winter-sports.epub"), context))


def test_unknown_format_is_unsupported() -> None:
    with pytest.raises(UnsupportedContent, match="cannot tell the format"):
        list(PROVIDER.extract(io.BytesIO(b"x"), ExtractContext(filename="notes.xyz")))


def test_missing_extra_names_it() -> None:
    class WithoutUnstructured(OfficeProvider):
        requires = ("p8fs_test_module_that_does_not_exist",)

    with pytest.raises(ProviderUnavailable, match=r"install p8fs-node\[office\]"):
        list(WithoutUnstructured().extract(io.BytesIO(b"x"), ExtractContext(filename="a.docx")))


# -- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "extension"),
    [
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
        ("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx"),
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
        ("application/vnd.oasis.opendocument.text", ".odt"),
        ("application/rtf", ".rtf"),
        ("text/html", ".html"),
        ("application/xhtml+xml", ".xhtml"),
        ("application/epub+zip", ".epub"),
        ("message/rfc822", ".eml"),
    ],
)
def test_registry_routes_each_claimed_type_to_office(mime: str, extension: str) -> None:
    registry = Registry()
    registry.add_provider(OfficeProvider, "p8fs-node")
    assert registry.provider_for(mime, None) is OfficeProvider
    assert registry.provider_for(None, extension) is OfficeProvider


def test_html_table_to_markdown_escapes_and_refuses_spans() -> None:
    assert html_table_to_markdown("<table><tr><td>a|b</td><td>c</td></tr></table>") == (
        "| a\\|b | c |\n| --- | --- |"
    )
    assert html_table_to_markdown('<table><tr><td colspan="2">x</td></tr></table>') is None
    assert html_table_to_markdown('<table><tr><td rowspan="bogus">x</td></tr></table>') is None
