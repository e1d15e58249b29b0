"""The built-in plain-text and Markdown provider, so that p8fs-core alone is useful.

It streams: the file is decoded incrementally and cut into sections at blank lines (``\\n\\n``),
which is exactly the separator chunkers put back between sections, so no character is lost or
added. Markdown sections start at headings (outside fenced code blocks) and carry the heading in
their metadata.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from p8fs import hookimpl
from p8fs.chunking import SECTION_SEPARATOR
from p8fs.encoding import TextStream
from p8fs.providers import ContentProvider, ExtractContext, Section, Source, open_binary

#: Read size; sections are emitted once this much text is buffered (at the next blank line).
READ_BYTES = 1 << 16
#: Longest section without a blank line. Past it the run is cut at a line break (or anywhere)
#: and continues in the next section (``Section.continued``), so memory stays bounded.
MAX_SECTION_CHARS = 16 * READ_BYTES
#: Files up to this size are inspected whole for their encoding (exact for mixed files).
WHOLE_FILE_DETECTION_BYTES = 1 << 20

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


class TextProvider(ContentProvider):
    """Plain text, Markdown, JSON, YAML, CSV and other text formats, in any supported encoding."""

    name = "text"
    mime_types = (
        "text/plain",
        "text/markdown",
        "text/x-markdown",
        "text/csv",
        "text/tab-separated-values",
        "application/json",
        "application/jsonl",
        "application/yaml",
        "application/x-yaml",
        "text/x-log",
    )
    extensions = (".txt", ".text", ".md", ".markdown", ".csv", ".tsv", ".json", ".jsonl",
                  ".yaml", ".yml", ".log", ".rst")
    priority = 0

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        markdown = (context.mime_type or "").endswith("markdown") or context.filename.lower().endswith(
            (".md", ".markdown")
        )
        with open_binary(source) as stream:
            yield from self._sections(stream, context, markdown)

    def _sections(self, stream: BinaryIO, context: ExtractContext, markdown: bool) -> Iterator[Section]:
        text = TextStream(stream, context.warn, detect_bytes=WHOLE_FILE_DETECTION_BYTES, read_bytes=READ_BYTES)
        context.metadata["encoding"] = text.encoding
        splitter = _MarkdownSplitter() if markdown else _ParagraphSplitter()
        for piece in text:
            yield from splitter.feed(piece)
            context.check_deadline()
        yield from splitter.close()


def _long_run_cut(text: str) -> int:
    """Where to cut a run of text with no blank line: after its last line break within
    :data:`MAX_SECTION_CHARS`, else at the limit (never between ``\r`` and ``\n``)."""
    cut = text.rfind("\n", 0, MAX_SECTION_CHARS) + 1
    if cut <= 0:
        cut = MAX_SECTION_CHARS
        if text[cut - 1] == "\r":
            cut -= 1
    return cut


class _ParagraphSplitter:
    """Cuts a text stream at blank lines into sections of about :data:`READ_BYTES` characters."""

    def __init__(self) -> None:
        self.buffer = ""
        self._continued = False

    def feed(self, text: str) -> Iterator[Section]:
        self.buffer += text
        while len(self.buffer) > READ_BYTES:
            cut = self.buffer.rfind(SECTION_SEPARATOR, 0, READ_BYTES)
            if cut <= 0:
                cut = self.buffer.find(SECTION_SEPARATOR, READ_BYTES, MAX_SECTION_CHARS)
            if cut > 0:
                yield self.emit(self.buffer[:cut], {})
                self.buffer = self.buffer[cut + len(SECTION_SEPARATOR):]
            elif len(self.buffer) > MAX_SECTION_CHARS:
                yield from self.emit_long_run()
            else:
                return  # no blank line yet: keep buffering, up to MAX_SECTION_CHARS

    def emit_long_run(self) -> Iterator[Section]:
        cut = _long_run_cut(self.buffer)
        yield self.emit(self.buffer[:cut], {})
        self.buffer = self.buffer[cut:]
        self._continued = True

    def emit(self, text: str, metadata: dict[str, Any]) -> Section:
        section = Section(text, metadata, continued=self._continued)
        self._continued = False
        return section

    def close(self) -> Iterator[Section]:
        if self.buffer:
            yield self.emit(self.buffer, {})
        self.buffer = ""


class _MarkdownSplitter(_ParagraphSplitter):
    """Like paragraphs, but a section also starts at every heading outside a code fence."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[str] = []  # paragraphs of the current section
        self.size = 0
        self.heading: str | None = None
        self.fence: str | None = None
        self.tail = ""

    def feed(self, text: str) -> Iterator[Section]:
        self.tail += text
        parts = self.tail.split(SECTION_SEPARATOR)
        self.tail = parts.pop()  # may be incomplete
        for block in parts:
            yield from self._block(block)
        if len(self.tail) > MAX_SECTION_CHARS:
            # Megabytes without a blank line: emit what is there, continue in the next section.
            yield from self._flush()
            cut = _long_run_cut(self.tail)
            piece, self.tail = self.tail[:cut], self.tail[cut:]
            self._track_fences(piece)
            yield self.emit(piece, self._metadata())
            self._continued = True

    def _block(self, block: str) -> Iterator[Section]:
        first = block.lstrip("\n").split("\n", 1)[0]
        heading = _ATX_HEADING.match(first) if self.fence is None else None
        if heading and self.blocks:
            yield from self._flush()
        if heading:
            self.heading = heading.group(2).strip()
        self.blocks.append(block)
        self.size += len(block)
        self._track_fences(block)
        if self.size > READ_BYTES and (self.fence is None or self.size > MAX_SECTION_CHARS):
            yield from self._flush()

    def _track_fences(self, block: str) -> None:
        for line in block.split("\n"):
            match = _FENCE.match(line)
            if not match:
                continue
            marker = match.group(1)
            if self.fence is None:
                self.fence = marker[0] * len(marker)
            elif marker.startswith(self.fence):
                self.fence = None

    def _metadata(self) -> dict[str, Any]:
        return {"heading": self.heading, "kind": "section"} if self.heading else {}

    def _flush(self) -> Iterator[Section]:
        if self.blocks:
            yield self.emit(SECTION_SEPARATOR.join(self.blocks), self._metadata())
        self.blocks = []
        self.size = 0

    def close(self) -> Iterator[Section]:
        yield from self._block(self.tail)
        self.tail = ""
        yield from self._flush()


@hookimpl
def p8fs_register_providers(register: Callable[[type[ContentProvider]], None]) -> None:
    register(TextProvider)


__all__ = ["TextProvider"]
