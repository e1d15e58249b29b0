"""Chunkers: cut a document's sections into chunks of at most N tokens, losing nothing.

Contract (checked by property tests): the document text is the sections' texts joined by
:data:`SECTION_SEPARATOR` (nothing before a ``continued`` section: :func:`join_sections`); concatenating every chunk's ``text[chunk.overlap:]`` gives that text
back exactly, and no chunk exceeds ``max_tokens`` unless a single indivisible unit does.
Structure (page numbers, headings, time ranges) travels in each chunk's ``metadata``.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from p8fs.errors import EmptyDocument
from p8fs.providers import ExtractContext, Section
from p8fs.tokens import Tokenizer, get_tokenizer

#: What stands between two sections' texts in the document text a chunker reproduces.
SECTION_SEPARATOR = "\n\n"


def join_sections(sections: Iterable[Section]) -> str:
    """The document text that chunkers reproduce from these sections."""
    parts: list[str] = []
    for index, section in enumerate(sections):
        if index and not section.continued:
            parts.append(SECTION_SEPARATOR)
        parts.append(section.text)
    return "".join(parts)


#: Media whose text is derived (speech recognition, OCR): having none is not being empty.
DERIVED_TEXT_MEDIA = ("audio/", "video/", "image/")


def require_text(sections: Iterable[Section], context: ExtractContext) -> Iterator[Section]:
    """``sections`` unchanged, or :class:`~p8fs.errors.EmptyDocument` if they hold no text.

    A file of nothing but whitespace (``"\\n\\n\\n"``, a Word or HTML document of blank
    paragraphs, a PDF whose pages hold only spaces) has no content, exactly like a file of 0
    bytes, and ends the same way instead of as one whitespace chunk. Checked here, between any
    provider and any chunker, so it holds for every format.

    "No text" is not always "empty": a scan without OCR, a picture, a recording without speech
    have content that is not text. So the file is kept (with no chunk) when the provider said
    why it has no text (``context.warn``: pages without a text layer, OCR switched off or
    unavailable, no audio stream), or when its type is one whose text is derived
    (:data:`DERIVED_TEXT_MEDIA`). Whitespace never becomes a chunk on its own either way.

    Leading whitespace-only sections are held back until a section with text arrives and then
    passed on in order, so the chunks still reproduce the document exactly; only those leading
    blanks are ever held.
    """
    held: list[Section] = []
    found_text = False
    for section in sections:
        if found_text:
            yield section
        elif section.text and not section.text.isspace():
            found_text = True
            yield from held
            held.clear()
            yield section
        else:
            held.append(section)
    if found_text or context.warnings:
        return
    if (context.mime_type or "").startswith(DERIVED_TEXT_MEDIA):
        return
    blank = "only whitespace" if held else "no text"
    raise EmptyDocument(f"{context.uri} is empty ({blank})", uri=context.uri)


@dataclass(slots=True)
class Chunk:
    """One stored piece of text.

    ``overlap`` is how many leading characters of ``text`` repeat the end of the previous chunk
    (0 for the first), so the original is ``"".join(c.text[c.overlap:] for c in chunks)``.
    """

    text: str
    index: int
    token_count: int
    overlap: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


class Chunker(ABC):
    """Base class of chunkers registered through ``p8fs_register_chunkers``."""

    name: ClassVar[str]

    def __init__(
        self, max_tokens: int = 512, overlap_tokens: int = 64, encoding: str = "o200k_base"
    ):
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError("overlap_tokens must be >= 0 and smaller than max_tokens")
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.encoding = encoding

    @abstractmethod
    def chunk(self, sections: Iterable[Section]) -> Iterator[Chunk]:
        """Yield chunks in order, consuming ``sections`` lazily (memory must not grow with input)."""


# --------------------------------------------------------------------------------------------
# Shared machinery: the document as it streams in, and what a chunk's metadata says about it.
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Span:
    """Where one section's text sits in the document text, and its metadata."""

    start: int
    end: int
    metadata: dict[str, Any]
    ordinal: int

    def touches(self, start: int, end: int) -> bool:
        """Whether this section is part of the text ``[start, end)``.

        A non-empty section counts when its text overlaps the range; an empty one sits at a point
        and counts for the range that contains that point.
        """
        if self.start == self.end:
            return start <= self.start < end
        return self.start < end and self.end > start


def _distinct_sorted(values: list[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:  # mixed types (e.g. "iv" and 4): keep document order
        return unique


def _chunk_metadata(
    spans: Iterable[_Span], start: int, end: int, new_start: int, encoding: str
) -> dict[str, Any]:
    """The structure a chunk carries: pages, headings, time range, offsets, encoding.

    ``pages``/``slides`` are the sorted distinct values of the sections the chunk's text touches
    (``page``/``slide`` the first of them); ``headings`` the distinct headings of those sections
    in order, and ``heading`` the heading of the first section with one in the chunk's *new*
    text (after the overlap), falling back to the first heading; ``start``/``end`` the union of
    the sections' time ranges. Keys without any value are left out.
    """
    metadata: dict[str, Any] = {"encoding": encoding, "char_start": start, "char_end": end}
    pages: list[Any] = []
    slides: list[Any] = []
    headings: list[str] = []
    kinds: list[str] = []
    speakers: list[Any] = []
    heading: str | None = None
    t_start: float | None = None
    t_end: float | None = None
    for span in spans:
        if span.start > end:
            break
        if not span.touches(start, end):
            continue
        meta = span.metadata
        if not meta:
            continue
        if (page := meta.get("page")) is not None:
            pages.append(page)
        if (slide := meta.get("slide")) is not None:
            slides.append(slide)
        if (kind := meta.get("kind")) is not None and kind not in kinds:
            kinds.append(kind)
        if (speaker := meta.get("speaker")) is not None and speaker not in speakers:
            speakers.append(speaker)
        if (title := meta.get("heading")) is not None:
            if title not in headings:
                headings.append(title)
            if heading is None and span.touches(new_start, end):
                heading = title
        s, e = meta.get("start"), meta.get("end")
        if isinstance(s, int | float) and not isinstance(s, bool):
            t_start = s if t_start is None else min(t_start, s)
        if isinstance(e, int | float) and not isinstance(e, bool):
            t_end = e if t_end is None else max(t_end, e)
    if pages:
        metadata["pages"] = _distinct_sorted(pages)
        metadata["page"] = metadata["pages"][0]
    if slides:
        metadata["slides"] = _distinct_sorted(slides)
        metadata["slide"] = metadata["slides"][0]
    if headings:
        metadata["headings"] = headings
        metadata["heading"] = heading if heading is not None else headings[0]
    if t_start is not None:
        metadata["start"] = t_start
    if t_end is not None:
        metadata["end"] = t_end
    if kinds:
        metadata["section_kinds"] = kinds
    if speakers:
        metadata["speakers"] = speakers
    return metadata


class _Document:
    """The document text as sections stream in, holding only what is not yet chunked.

    Text read from sections is collected as pieces and joined into one string only when it is
    looked at (:meth:`view`, :meth:`text`), so many tiny sections cost one join per chunk rather
    than one copy of the buffer each. The joined ``buffer`` starts at document offset ``base``;
    :meth:`release` lets go of text (and section spans) before an offset, compacting only once
    at least half of the buffer is released, so trimming costs amortised O(1) per character.
    """

    __slots__ = ("_pieces", "_sections", "base", "buffer", "end", "exhausted", "ordinal", "spans")

    def __init__(self, sections: Iterable[Section]) -> None:
        self._sections = iter(sections)
        self._pieces: list[str] = []
        self.buffer = ""
        self.base = 0
        #: Document offset just past the text read so far.
        self.end = 0
        self.exhausted = False
        self.ordinal = 0
        self.spans: deque[_Span] = deque()

    def pull(self) -> bool:
        """Read one more section; ``False`` once there are none."""
        if self.exhausted:
            return False
        section = next(self._sections, None)
        if section is None:
            self.exhausted = True
            return False
        text = section.text
        if not isinstance(text, str):
            raise TypeError(
                f"section {self.ordinal} has text of type {type(text).__name__}, not str"
            )
        if self.ordinal and not section.continued:
            self._pieces.append(SECTION_SEPARATOR)
            self.end += len(SECTION_SEPARATOR)
        start = self.end
        self._pieces.append(text)
        self.end += len(text)
        self.spans.append(_Span(start, self.end, section.metadata or {}, self.ordinal))
        self.ordinal += 1
        return True

    def fill(self, upto: int) -> None:
        """Read sections until the text reaches document offset ``upto`` or the input ends."""
        while self.end < upto and self.pull():
            pass

    def view(self) -> tuple[str, int]:
        """The joined pending text and the document offset of its first character."""
        if self._pieces:
            self.buffer = "".join([self.buffer, *self._pieces])
            self._pieces.clear()
        return self.buffer, self.base

    def text(self, start: int, end: int) -> str:
        buffer, base = self.view()
        return buffer[start - base : end - base]

    def release(self, offset: int) -> None:
        """Forget text and sections that end before document offset ``offset``."""
        spans = self.spans
        while spans and (spans[0].end < offset or (spans[0].start == spans[0].end < offset)):
            spans.popleft()
        buffer, base = self.view()
        drop = offset - base
        if drop > 0 and drop * 2 >= len(buffer):
            self.buffer = buffer[drop:]
            self.base = offset


# --------------------------------------------------------------------------------------------
# The token chunker.
# --------------------------------------------------------------------------------------------

#: Where a cut may go, best first: each entry is the strings after which cutting is allowed.
#: A cut goes *after* the string, so whitespace ends the chunk and the next one starts with text.
_BOUNDARIES: tuple[tuple[str, ...], ...] = (
    ("\n\n", "\n\r\n"),  # paragraph (section breaks are "\n\n" too)
    ("\n", "\r"),  # line (a lone "\r" is an old Mac line end; "\r\n" is never split)
    (". ", "! ", "? ", ".\t", "\u3002", "\uff01", "\uff1f", "; "),  # sentence (and CJK stops)
    (" ", "\t", "\u3000"),  # word
)

#: A preferred boundary is used only if it keeps at least this share of the possible chunk;
#: otherwise the next finer kind of boundary is tried (avoids runts before a late heading).
_MIN_SHARE = 0.5

_ZERO_WIDTH_JOINERS = frozenset("\u200d\ufe0e\ufe0f")
_WHITESPACE_RUN = re.compile(r"\s+")
_THROUGH_LAST_WHITESPACE = re.compile(r".*\s", re.DOTALL)


def _glues_to_previous(ch: str) -> bool:
    """Whether ``ch`` visually belongs to the character before it (mark, joiner, skin tone)."""
    return (
        ch in _ZERO_WIDTH_JOINERS
        or unicodedata.combining(ch) != 0
        or "\U0001f3fb" <= ch <= "\U0001f3ff"
        or "\U000e0020" <= ch <= "\U000e007f"  # emoji tag sequences
    )


class TokenChunker(Chunker):
    """Cuts the document text into chunks of at most ``max_tokens`` tokens, losing nothing.

    Sections are read lazily; at any time the chunker holds about one chunk of text plus the
    section being read (a provider that yields one enormous section therefore costs that
    section's size, never more).

    Each cut is placed at the best boundary that fits: a paragraph (or section) break, else a
    line break, else a sentence end, else a space, else anywhere between two characters. A
    boundary is only preferred if the chunk keeps at least half of its possible length. Hard
    cuts step back over combining marks, joiners and emoji modifiers so that a grapheme stays
    whole where that is possible.

    Every chunk's token count is the real count of its text (BPE counts are not additive across
    a cut, so nothing is estimated). The only chunk that can exceed ``max_tokens`` is one holding
    a single character whose UTF-8 bytes alone encode to more tokens than that (possible only for
    very small limits, e.g. ``max_tokens=1`` and a rare CJK character or emoji): that is the
    indivisible unit.

    Overlap: every chunk but the first starts with about ``overlap_tokens`` tokens repeating the
    end of the previous chunk, moved to the nearer word start when there is one (so it may be a
    few tokens more or less); ``Chunk.overlap`` is its length in characters, and the overlap
    counts towards ``max_tokens``. When overlap and even one new character would not fit, that
    chunk has no overlap.
    """

    name = "tokens"

    def chunk(self, sections: Iterable[Section]) -> Iterator[Chunk]:
        tokenizer = get_tokenizer(self.encoding)  # unknown encoding: ConfigurationError now
        return self._chunks(_Document(sections), tokenizer)

    # -- the loop ---------------------------------------------------------------------------
    def _chunks(self, doc: _Document, tk: Tokenizer) -> Iterator[Chunk]:
        max_tokens = self.max_tokens
        pos = 0  # document offset where the next chunk's new text starts
        overlap = ""  # the text repeating the end of the previous chunk
        index = 0
        chars_per_token = 4.0  # learnt from each chunk; sizes the text window to encode
        while True:
            want = int(max_tokens * chars_per_token * 1.25) + 32
            while True:
                doc.fill(pos + want)
                window_end = min(doc.end, pos + want)
                window = overlap + doc.text(pos, window_end)
                tokens = tk.encode(window)
                if len(tokens) > max_tokens or (doc.exhausted and window_end == doc.end):
                    break
                want *= 2  # not a chunk's worth yet: look further

            if len(tokens) <= max_tokens:  # the rest of the document fits: last chunk
                if window_end > pos:
                    yield self._emit(doc, window, tokens, overlap, pos, window_end, index)
                return

            fit = tk.prefix_chars(tokens, max_tokens) - len(overlap)
            if fit <= 0:
                if overlap:
                    overlap = ""  # the overlap leaves no room for new text: drop it
                    continue
                fit = 1  # one character that alone exceeds the limit: indivisible
            cut = self._cut(doc, pos, pos + fit)
            while True:
                text = overlap + doc.text(pos, cut)
                tokens = tk.encode(text)
                excess = len(tokens) - max_tokens
                if excess <= 0 or cut - pos <= 1:
                    break
                # BPE merges differ at the new end: shrink by the excess and try again.
                fit = tk.prefix_chars(tokens, len(tokens) - excess) - len(overlap)
                fit = min(fit, cut - pos - 1)
                if fit <= 0:
                    if overlap:
                        break  # dropped below, then the chunk is tried again without it
                    fit = 1  # the first character alone exceeds the limit: indivisible
                cut = self._cut(doc, pos, pos + fit)
            if excess > 0 and overlap:
                overlap = ""
                continue
            yield self._emit(doc, text, tokens, overlap, pos, cut, index)
            index += 1
            chars_per_token = min(32.0, max(1.0, len(text) / max(1, len(tokens))))
            overlap = self._next_overlap(text, tokens, tk)
            pos = cut
            doc.release(pos - len(overlap))

    def _emit(
        self,
        doc: _Document,
        text: str,
        tokens: list[int],
        overlap: str,
        pos: int,
        end: int,
        index: int,
    ) -> Chunk:
        start = pos - len(overlap)
        metadata = _chunk_metadata(doc.spans, start, end, pos, self.encoding)
        return Chunk(
            text=text, index=index, token_count=len(tokens), overlap=len(overlap), metadata=metadata
        )

    @staticmethod
    def _cut(doc: _Document, pos: int, hi: int) -> int:
        """The best cut in ``(pos, hi]`` (document offsets), ``hi`` being the furthest that fits."""
        buffer, base = doc.view()
        lo_b, hi_b = pos - base, hi - base
        if hi_b - lo_b <= 1:
            return hi
        floor = lo_b + int((hi_b - lo_b) * _MIN_SHARE)
        for needles in _BOUNDARIES:
            best = -1
            for needle in needles:
                found = buffer.rfind(needle, floor, hi_b)
                if found >= 0:
                    best = max(best, found + len(needle))
            if best > 0 and buffer[best - 1 : best + 1] == "\r\n":
                best = best + 1 if best < hi_b else best - 1
            if best > lo_b:
                return base + best
        # Anywhere: but keep "\r\n" and a character with its marks/joiners together if possible.
        cut = hi_b
        for _ in range(16):
            if cut - 1 <= lo_b:
                return hi
            if (
                buffer[cut - 1 : cut + 1] == "\r\n"
                or _glues_to_previous(buffer[cut : cut + 1] or "a")
                or (buffer[cut - 1] == "\u200d")
            ):
                cut -= 1
                continue
            return base + cut
        return hi

    def _next_overlap(self, text: str, tokens: list[int], tk: Tokenizer) -> str:
        """The end of ``text`` to repeat at the start of the next chunk (about N tokens).

        The cut that leaves exactly N tokens usually falls inside a word; it moves to the nearer
        word start, forward or back (a long URL can make either far; the nearer one keeps the
        overlap closest to N). Without whitespace around it stays on the token boundary.
        """
        if self.overlap_tokens == 0 or len(tokens) <= 1:
            return ""
        start = tk.suffix_start(tokens, min(self.overlap_tokens, len(tokens) - 1))
        if 0 < start < len(text) and not text[start - 1].isspace():
            space = _WHITESPACE_RUN.search(text, start)
            forward = space.end() if space is not None and space.end() < len(text) else None
            # Look back no further than the forward candidate is away, and never so far that
            # the overlap more than doubles (C speed, bounded).
            reach = (forward if forward is not None else len(text)) - start
            floor = max(0, start - reach)
            last_space = _THROUGH_LAST_WHITESPACE.match(text, floor, start)
            backward = last_space.end() if last_space is not None else None
            if forward is not None and (backward is None or forward - start <= start - backward):
                start = forward
            elif backward is not None:
                start = backward
        return text[start:]


# --------------------------------------------------------------------------------------------
# The record chunker.
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    """One record as it appears in the document: its text plus the separator after it."""

    text: str
    tokens: int
    span: _Span


class RecordChunker(Chunker):
    """Packs whole records (one section each: a transcript segment, a list item) into chunks.

    A record is never split: agents reason about a speaker turn or a JSON item as a whole. The
    unit that is packed is a record's text *with* the :data:`SECTION_SEPARATOR` that follows it
    in the document (the last record has none), so chunk texts concatenate back to the
    document exactly. Records are added while the chunk's real token count stays within
    ``max_tokens``; a record that alone exceeds the limit goes into a chunk of its own, whole,
    with ``metadata["oversized"] = True`` (the one way a chunk can exceed the limit here).

    Overlap is in whole records: with ``overlap_tokens > 0`` each chunk starts by repeating the
    last records of the previous chunk whose token counts add up to at most ``overlap_tokens``
    (never all of them, and dropped when they would push the chunk over the limit). The default
    here is no overlap, since repeated turns would be counted twice by agents that merge
    results. ``metadata["records"]`` is ``[first, last]``, the ordinals of the records in the
    chunk (overlap included).
    """

    name = "records"

    def __init__(
        self, max_tokens: int = 512, overlap_tokens: int = 0, encoding: str = "o200k_base"
    ) -> None:
        super().__init__(max_tokens, overlap_tokens, encoding)

    def chunk(self, sections: Iterable[Section]) -> Iterator[Chunk]:
        tokenizer = get_tokenizer(self.encoding)  # unknown encoding: ConfigurationError now
        return self._chunks(sections, tokenizer)

    def _chunks(self, sections: Iterable[Section], tk: Tokenizer) -> Iterator[Chunk]:
        packer = _RecordPacker(self, tk)
        previous: Section | None = None
        offset = 0
        ordinal = 0
        for section in sections:
            if previous is not None:
                separator = "" if section.continued else SECTION_SEPARATOR
                yield from packer.add(self._record(previous, offset, ordinal, tk, separator))
                offset += len(previous.text) + len(separator)
                ordinal += 1
            if not isinstance(section.text, str):
                raise TypeError(
                    f"section {ordinal + (previous is not None)} has text of type "
                    f"{type(section.text).__name__}, not str"
                )
            previous = section
        if previous is not None:
            yield from packer.add(self._record(previous, offset, ordinal, tk, ""))
        yield from packer.finish()

    @staticmethod
    def _record(section: Section, offset: int, ordinal: int, tk: Tokenizer, separator: str) -> _Record:
        text = section.text + separator
        span = _Span(offset, offset + len(section.text), section.metadata or {}, ordinal)
        return _Record(text, tk.count(text), span)


class _RecordPacker:
    """The chunk being filled by :class:`RecordChunker`; the first ``repeated`` are overlap."""

    def __init__(self, chunker: RecordChunker, tk: Tokenizer) -> None:
        self.max_tokens = chunker.max_tokens
        self.overlap_tokens = chunker.overlap_tokens
        self.encoding = chunker.encoding
        self.tk = tk
        self.records: list[_Record] = []
        self.repeated = 0
        self.total = 0  # sum of the records' own counts: the estimate that decides packing
        self.index = 0

    def add(self, record: _Record) -> Iterator[Chunk]:
        fresh = len(self.records) > self.repeated
        if fresh and record.text and self.total + record.tokens > self.max_tokens:
            yield from self._flush()
        while self.repeated and self.total + record.tokens > self.max_tokens:
            self._drop_first()  # repeated records make room for new ones
        self.records.append(record)
        self.total += record.tokens

    def finish(self) -> Iterator[Chunk]:
        while len(self.records) > self.repeated:
            yield from self._flush()

    def _drop_first(self) -> None:
        self.total -= self.records.pop(0).tokens
        self.repeated -= 1

    def _flush(self) -> Iterator[Chunk]:
        carried: list[_Record] = []
        while True:
            text = "".join(r.text for r in self.records)
            tokens = self.tk.count(text)
            if tokens <= self.max_tokens:
                break
            if self.repeated:
                self._drop_first()
            elif len(self.records) > 1:  # the estimate was optimistic: move a record on
                carried.insert(0, self.records.pop())
                self.total -= carried[0].tokens
            else:
                break  # one record alone over the limit: oversized, kept whole
        records = self.records
        overlap = sum(len(r.text) for r in records[: self.repeated])
        if len(text) > overlap:  # an empty last record adds no text and no chunk
            start = records[0].span.start
            end = records[-1].span.start + len(records[-1].text)
            metadata = _chunk_metadata(
                (r.span for r in records),
                start,
                end,
                records[self.repeated].span.start,
                self.encoding,
            )
            metadata["records"] = [records[0].span.ordinal, records[-1].span.ordinal]
            if tokens > self.max_tokens:
                metadata["oversized"] = True
            yield Chunk(text, self.index, tokens, overlap, metadata)
            self.index += 1
        self._keep_overlap()
        for record in carried:
            yield from self.add(record)

    def _keep_overlap(self) -> None:
        """Start the next chunk with the trailing records that fit in ``overlap_tokens``."""
        keep = 0
        budget = self.overlap_tokens
        for record in reversed(self.records[1:]):
            if record.tokens > budget:
                break
            budget -= record.tokens
            keep += 1
        self.records = self.records[len(self.records) - keep :] if keep else []
        self.repeated = keep
        self.total = sum(r.tokens for r in self.records)
