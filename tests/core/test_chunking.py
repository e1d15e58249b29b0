"""The chunkers' contract, as properties over random documents and as examples on real ones.

Contract (``p8fs.chunking``): the document text is the sections' texts joined by
``SECTION_SEPARATOR``; ``"".join(c.text[c.overlap:] for c in chunks)`` gives it back exactly;
no chunk exceeds ``max_tokens`` unless it is one indivisible unit (one character for the token
chunker, one record for the record chunker); structure travels in the metadata.
"""

from __future__ import annotations

import itertools
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p8fs.chunking import SECTION_SEPARATOR, Chunk, Chunker, RecordChunker, TokenChunker
from p8fs.errors import ConfigurationError
from p8fs.plugins import load_plugins
from p8fs.providers import ExtractContext, Section
from p8fs.tokens import count_tokens
from tests.fixtures.servers import corpus_path

# -- random documents -------------------------------------------------------------------------

AWKWARD = st.sampled_from(
    [
        " ",
        "    ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        "\r\n\r\n",
        "  \n ",
        "👨‍👩‍👧‍👦",
        "👍🏽",
        "🇩🇪🇯🇵",
        "e\u0301\u0302",
        "日本語の文章です。",
        "中文句子！",
        ". ",
        "? ",
        "<|endoftext|>",
        "\u200d",
        "word",
        " the quick brown fox",
    ]
)
# Very long words without any space: the chunker has to cut inside them.
LONG_WORD = st.text(alphabet="abcdefghijXYZ0123456789+/=", min_size=40, max_size=700)
FRAGMENT = st.one_of(AWKWARD, AWKWARD, st.text(max_size=15), LONG_WORD)
SECTION_TEXT = st.lists(FRAGMENT, max_size=30).map("".join)


@st.composite
def section_metadata(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if draw(st.booleans()):
        metadata["page"] = draw(st.integers(1, 9))
    if draw(st.booleans()):
        metadata["heading"] = draw(st.sampled_from(["Intro", "Methods", "結果"]))
    if draw(st.booleans()):
        start = draw(st.floats(0, 1e4, allow_nan=False))
        metadata["start"] = start
        metadata["end"] = start + draw(st.floats(0, 60, allow_nan=False))
    if draw(st.booleans()):
        metadata["kind"] = draw(st.sampled_from(["page", "table", "segment"]))
    return metadata


SECTIONS = st.lists(st.builds(Section, SECTION_TEXT, section_metadata()), max_size=10)


@st.composite
def limits(draw: st.DrawFn) -> tuple[int, int]:
    max_tokens = draw(st.integers(8, 300))
    overlap = draw(st.one_of(st.just(0), st.integers(0, max_tokens - 1)))
    return max_tokens, overlap


# -- helpers that restate the contract independently --------------------------------------------


@dataclass
class Placed:
    """A section and where its text sits in the document text."""

    start: int
    end: int
    metadata: dict[str, Any]


def place(sections: list[Section]) -> tuple[str, list[Placed]]:
    placed, offset = [], 0
    for section in sections:
        placed.append(Placed(offset, offset + len(section.text), section.metadata))
        offset += len(section.text) + len(SECTION_SEPARATOR)
    return SECTION_SEPARATOR.join(s.text for s in sections), placed


def in_range(p: Placed, start: int, end: int) -> bool:
    """The documented rule: overlapping text, or an empty section sitting inside the range."""
    if p.start == p.end:
        return start <= p.start < end
    return p.start < end and p.end > start


def check_common(chunks: list[Chunk], sections: list[Section], encoding: str) -> str:
    """Reconstruction, offsets, indices, overlaps and structure metadata; returns the doc."""
    doc, placed = place(sections)
    assert "".join(c.text[c.overlap :] for c in chunks) == doc
    assert [c.index for c in chunks] == list(range(len(chunks)))
    if doc:
        assert chunks, "a non-empty document produced no chunk"
    previous: Chunk | None = None
    for chunk in chunks:
        md = chunk.metadata
        assert chunk.token_count == count_tokens(chunk.text, encoding)
        assert md["encoding"] == encoding
        assert doc[md["char_start"] : md["char_end"]] == chunk.text
        assert len(chunk.text) > chunk.overlap, "a chunk without new text"
        if previous is None:
            assert chunk.overlap == 0 and md["char_start"] == 0
        else:
            assert md["char_start"] + chunk.overlap == previous.metadata["char_end"]
            if chunk.overlap:
                assert previous.text.endswith(chunk.text[: chunk.overlap])
        touched = [p for p in placed if in_range(p, md["char_start"], md["char_end"])]
        pages = sorted({p.metadata["page"] for p in touched if "page" in p.metadata})
        assert md.get("pages", []) == pages
        assert md.get("page") == (pages[0] if pages else None)
        starts = [p.metadata["start"] for p in touched if "start" in p.metadata]
        ends = [p.metadata["end"] for p in touched if "end" in p.metadata]
        assert md.get("start") == (min(starts) if starts else None)
        assert md.get("end") == (max(ends) if ends else None)
        headings = list(
            dict.fromkeys(p.metadata["heading"] for p in touched if "heading" in p.metadata)
        )
        assert md.get("headings", []) == headings
        new_start = md["char_start"] + chunk.overlap
        in_new = [
            p.metadata["heading"]
            for p in touched
            if "heading" in p.metadata and in_range(p, new_start, md["char_end"])
        ]
        assert md.get("heading") == (in_new[0] if in_new else headings[0] if headings else None)
        kinds = list(dict.fromkeys(p.metadata["kind"] for p in touched if "kind" in p.metadata))
        assert md.get("section_kinds", []) == kinds
        previous = chunk
    return doc


# -- the token chunker ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(sections=SECTIONS, limit=limits())
def test_token_chunker_properties(sections: list[Section], limit: tuple[int, int]) -> None:
    max_tokens, overlap_tokens = limit
    chunks = list(TokenChunker(max_tokens, overlap_tokens, "o200k_base").chunk(iter(sections)))
    check_common(chunks, sections, "o200k_base")
    for chunk in chunks:
        if chunk.token_count > max_tokens:
            # The only indivisible unit: one character whose bytes alone exceed the limit.
            assert chunk.overlap == 0 and len(chunk.text) == 1, chunk
        if overlap_tokens == 0:
            assert chunk.overlap == 0


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
def test_tiny_limits_cut_between_characters_and_only_single_characters_exceed(
    max_tokens: int,
) -> None:
    text = "日本語の文章です。👨‍👩‍👧‍👦 e\u0301 \r\n𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷺ abcdefghijklmnopqrstuvwxyz"
    chunks = list(TokenChunker(max_tokens, 0).chunk([Section(text)]))
    assert "".join(c.text for c in chunks) == text
    for chunk in chunks:
        assert chunk.token_count <= max_tokens or len(chunk.text) == 1


def test_cuts_prefer_paragraphs_then_lines_then_sentences_then_words() -> None:
    paragraph = "This sentence is about chunking. It has words and more words in it.\n"
    text = (paragraph * 3 + "\n") * 20
    chunks = list(TokenChunker(60, 0).chunk([Section(text)]))
    assert len(chunks) > 5
    # Paragraph breaks are close enough together that every cut but the last lands on one.
    assert all(c.text.endswith("\n\n") for c in chunks[:-1])

    lines = "one line of text that goes on for a while\n" * 200
    assert all(
        c.text.endswith("\n") for c in list(TokenChunker(50, 0).chunk([Section(lines)]))[:-1]
    )

    sentences = "A short sentence here. " * 300
    assert all(
        c.text.endswith(". ") for c in list(TokenChunker(40, 0).chunk([Section(sentences)]))[:-1]
    )

    words = " ".join(f"w{i}" for i in range(2000))
    for chunk in list(TokenChunker(30, 0).chunk([Section(words)]))[:-1]:
        assert chunk.text.endswith(" ")


def test_overlap_repeats_about_n_tokens_starting_at_a_word() -> None:
    prose = corpus_path("docs/unst_norwich-city.txt").read_text(encoding="utf-8")  # Wikipedia
    chunks = list(TokenChunker(120, 30).chunk([Section(prose)]))
    assert len(chunks) > 10
    for previous, chunk in itertools.pairwise(chunks):
        repeated = chunk.text[: chunk.overlap]
        assert previous.text.endswith(repeated)
        # About 30 tokens: the exact cut moves to the nearer word start (URLs make that far).
        assert 15 <= count_tokens(repeated) <= 45, repeated
        # It starts at a word: the character before it in the previous chunk is whitespace.
        assert previous.text[-len(repeated) - 1].isspace()
        assert not repeated[0].isspace()


@pytest.mark.parametrize("chunker_class", [TokenChunker, RecordChunker])
def test_streaming_reads_only_what_the_next_chunk_needs(chunker_class: type[Chunker]) -> None:
    pulled = 0

    def sections() -> Iterator[Section]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield Section(
                f"Paragraph {i} says something short about item {i}.", {"page": i // 50 + 1}
            )

    chunks = chunker_class(200, 20).chunk(sections())
    first = next(chunks)
    assert first.token_count <= 200
    assert pulled < 100, f"read {pulled} sections for a 200-token chunk"
    for _ in range(10):
        next(chunks)
    assert pulled < 300


def test_memory_stays_flat_however_long_the_document() -> None:
    line = "Streaming text keeps memory flat regardless of the document size, or so we claim.\n"

    def sections(n: int) -> Iterator[Section]:
        for i in range(n):
            yield Section(line * 40, {"page": i + 1})  # ~3.3 KB per page

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            count = sum(1 for _ in TokenChunker(256, 32).chunk(sections(n)))
            assert count > n // 2
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(50), peak(600)  # ~160 KB versus ~2 MB of text
    assert large < 2 * small + 200_000, (small, large)


def test_unknown_encoding_fails_when_chunking_starts() -> None:
    with pytest.raises(ConfigurationError, match="P8FS_TOKEN_ENCODING"):
        TokenChunker(100, 10, "no_such_encoding").chunk([Section("x")])
    with pytest.raises(ConfigurationError, match="P8FS_TOKEN_ENCODING"):
        RecordChunker(100, 0, "no_such_encoding").chunk([Section("x")])


def test_empty_documents() -> None:
    assert list(TokenChunker(50, 5).chunk([])) == []
    assert list(TokenChunker(50, 5).chunk([Section("")])) == []
    only_separator = list(TokenChunker(50, 5).chunk([Section(""), Section("")]))
    assert [c.text for c in only_separator] == [SECTION_SEPARATOR]
    assert list(RecordChunker(50).chunk([])) == []


# -- the record chunker -----------------------------------------------------------------------


def units_of(sections: list[Section]) -> list[str]:
    """Each record's text with the separator that follows it in the document."""
    return [
        s.text + (SECTION_SEPARATOR if i < len(sections) - 1 else "")
        for i, s in enumerate(sections)
    ]


def check_records(chunks: list[Chunk], sections: list[Section], max_tokens: int) -> None:
    units = units_of(sections)
    for chunk in chunks:
        first, last = chunk.metadata["records"]
        assert chunk.text == "".join(units[first : last + 1]), "a record was split"
        lengths = [sum(len(u) for u in units[first:k]) for k in range(first, last + 1)]
        assert chunk.overlap in lengths, "the overlap is not whole records"
        if chunk.metadata.get("oversized"):
            assert first == last and chunk.overlap == 0
            assert chunk.token_count > max_tokens
        else:
            assert chunk.token_count <= max_tokens


@settings(max_examples=200, deadline=None)
@given(sections=SECTIONS, limit=limits())
def test_record_chunker_properties(sections: list[Section], limit: tuple[int, int]) -> None:
    max_tokens, overlap_tokens = limit
    chunks = list(RecordChunker(max_tokens, overlap_tokens).chunk(iter(sections)))
    check_common(chunks, sections, "o200k_base")
    check_records(chunks, sections, max_tokens)


def test_record_chunker_defaults_to_no_overlap() -> None:
    records = [Section(f"Speaker {i % 3}: turn number {i} of the meeting.") for i in range(200)]
    chunks = list(RecordChunker(100).chunk(records))
    assert len(chunks) > 5 and all(c.overlap == 0 for c in chunks)
    check_records(chunks, records, 100)


def read_srt(text: str) -> list[Section]:
    """SRT cues as records with start/end in seconds (the test's own small parser)."""
    sections = []
    for block in re.split(r"\r?\n\r?\n", text.strip()):
        lines = block.splitlines()
        match = re.match(r"(\d+):(\d+):(\d+),(\d+) --> (\d+):(\d+):(\d+),(\d+)", lines[1])
        assert match, block
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        sections.append(
            Section(
                "\n".join(lines[2:]),
                {
                    "start": h1 * 3600 + m1 * 60 + s1 + ms1 / 1000,
                    "end": h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
                },
            )
        )
    return sections


def test_transcript_records_stay_whole_with_their_time_ranges() -> None:
    cues = read_srt(corpus_path("transcripts/podcastns_example.srt").read_text(encoding="utf-8"))
    assert len(cues) > 50
    chunks = list(RecordChunker(120, 30).chunk(cues))
    check_common(chunks, cues, "o200k_base")
    check_records(chunks, cues, 120)
    assert chunks[0].metadata["start"] == pytest.approx(0.179)  # the corpus' first cue
    for chunk in chunks:
        first, last = chunk.metadata["records"]
        assert chunk.metadata["start"] == min(c.metadata["start"] for c in cues[first : last + 1])
        assert chunk.metadata["end"] == max(c.metadata["end"] for c in cues[first : last + 1])
    sarah = next(c for c in chunks if "Sarah:" in c.text[c.overlap :])
    assert sarah.metadata["start"] <= 53.03 <= sarah.metadata["end"]  # her turn starts at 53.030


# -- real documents through the real text provider ----------------------------------------------


def test_markdown_headings_travel_with_the_chunks() -> None:
    from p8fs.builtin.text import TextProvider

    path = corpus_path("p8fs_sample_data/content/Sample.md")
    sections = list(TextProvider().extract(path, ExtractContext(filename=path.name)))
    chunks = list(TokenChunker(256, 32).chunk(sections))
    doc = check_common(chunks, sections, "o200k_base")
    assert doc == path.read_text(encoding="utf-8")  # file → sections → chunks loses nothing
    assert max(c.token_count for c in chunks) <= 256
    quick_start = next(c for c in chunks if "uv sync" in c.text[c.overlap :])
    assert any("Quick Start" in h or "uv Workspace" in h for h in quick_start.metadata["headings"])
    # A chunk that starts inside the "Design Principles" part names that heading.
    heading_line = "## **Design Principles**"
    offset = doc.index(heading_line) + len(heading_line) + 5
    inside = next(c for c in chunks if c.metadata["char_start"] + c.overlap > offset)
    assert (
        inside.metadata["heading"] != "**P8FS \\- Next Generation Smart Content Management System**"
    )


def test_pdf_pages_travel_with_the_chunks() -> None:
    pdfium = pytest.importorskip(
        "pypdfium2", reason="page texts of the corpus PDF come from pypdfium2"
    )
    path = corpus_path("pdf/pdfjs_tracemonkey.pdf")
    pdf = pdfium.PdfDocument(str(path))
    try:
        pages = [
            Section(pdf[i].get_textpage().get_text_range(), {"page": i + 1, "kind": "page"})
            for i in range(len(pdf))
        ]
    finally:
        pdf.close()
    assert len(pages) == 14
    chunks = list(TokenChunker(300, 40).chunk(pages))
    check_common(chunks, pages, "o200k_base")
    assert chunks[0].metadata["page"] == 1 and "Andreas Gal" in chunks[0].text
    assert chunks[-1].metadata["pages"][-1] == 14
    covered = sorted({p for c in chunks for p in c.metadata["pages"]})
    assert covered == list(range(1, 15))
    for chunk in chunks:
        pages_of_chunk = chunk.metadata["pages"]
        assert pages_of_chunk == list(range(pages_of_chunk[0], pages_of_chunk[-1] + 1))
        assert chunk.token_count <= 300


# -- registration -----------------------------------------------------------------------------


def test_p8fs_register_chunkers_hook_of_the_builtin_plugin() -> None:
    from p8fs.builtin import chunkers

    registered: list[type] = []
    chunkers.p8fs_register_chunkers(registered.append)
    assert registered == [TokenChunker, RecordChunker]


def test_builtin_plugin_registers_both_chunkers() -> None:
    registry = load_plugins().registry
    for name, cls in (("tokens", TokenChunker), ("records", RecordChunker)):
        registration = registry.chunkers.registration(name)
        assert registration.cls is cls
        assert registration.plugin == "p8fs.builtin.chunkers"
    chunker = registry.chunkers.get("tokens")(64, 8, "cl100k_base")
    chunks = list(chunker.chunk([Section("Registered chunkers chunk. " * 50, {"page": 3})]))
    assert chunks and all(
        c.metadata["encoding"] == "cl100k_base" and c.metadata["page"] == 3 for c in chunks
    )


@pytest.mark.parametrize("chunker_name", ["tokens", "records"])
def test_continued_sections_join_without_a_separator(chunker_name: str) -> None:
    from p8fs.chunking import RecordChunker, TokenChunker, join_sections

    sections = [
        Section("First part of a long line that was cut ", {"page": 1}),
        Section("in the middle by its provider.", {"page": 1}, continued=True),
        Section("A new paragraph.", {"page": 2}),
        Section(" And its continuation.", {"page": 2}, continued=True),
    ]
    document = join_sections(sections)
    assert document == ("First part of a long line that was cut in the middle by its provider."
                        "\n\nA new paragraph. And its continuation.")
    chunker = TokenChunker(8, 2) if chunker_name == "tokens" else RecordChunker(12, 0)
    chunks = list(chunker.chunk(iter(sections)))
    assert "".join(c.text[c.overlap:] for c in chunks) == document
    assert {p for c in chunks for p in c.metadata.get("pages", [])} == {1, 2}
