"""The subtitles content provider: SRT and WebVTT files as one section per cue.

Written only against p8fs's public API (``p8fs.providers``, ``p8fs.errors``, ``p8fs.encoding``),
as any third-party plugin would be. The file is decoded incrementally and read line by line, so
a ten-hour transcript costs no more memory than a ten-second one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from p8fs.encoding import TextStream, looks_like_text
from p8fs.errors import CorruptDocument, LimitExceeded
from p8fs.providers import (
    ContentProvider,
    ExtractContext,
    Section,
    Source,
    open_binary,
    source_name,
)
from p8fs_subtitles.cues import Cue, CueReader, CueTooLong

#: Bytes read at a time.
READ_BYTES = 1 << 16
#: The head inspected to detect the encoding (a whole subtitle file, usually).
DETECT_BYTES = 1 << 20

WEBVTT_MIME = "text/vtt"
#: The line breaks subtitle files use (not str.splitlines's extra ones, such as U+2028).
_NEWLINE = re.compile(r"\r\n|\r|\n")


class SubtitleProvider(ContentProvider):
    """SRT and WebVTT subtitles: one section per cue with its start, end and speaker.

    The priority is above the core text provider's, which would otherwise take these files as
    plain text (it is the fallback for every text format nobody claims).
    """

    name = "subtitles"
    mime_types = ("application/x-subrip", "text/vtt")
    extensions = (".srt", ".vtt")
    priority = 20

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        with open_binary(source) as stream:
            webvtt = context.mime_type == WEBVTT_MIME or context.filename.lower().endswith(".vtt")
            reader = CueReader(context.warn, webvtt=webvtt)
            try:
                for cue in reader.feed(self._lines(stream, context)):
                    yield _section(cue)
                    context.check_deadline()
                for cue in reader.close():
                    yield _section(cue)
            except CueTooLong as exc:
                raise LimitExceeded(f"{source_name(source)}: {exc}", provider=self.name) from exc
            context.metadata.update(
                format="webvtt" if reader.webvtt else "srt",
                cues=reader.cues,
                skipped_blocks=reader.skipped,
            )
            if reader.cues == 0:
                raise CorruptDocument(
                    f"{source_name(source)} has no readable subtitle cue (expected blocks of a "
                    "'00:00:01,000 --> 00:00:02,000' timing line followed by text)",
                    provider=self.name,
                )

    @staticmethod
    def _lines(stream: BinaryIO, context: ExtractContext) -> Iterator[str]:
        """The file's lines, decoded as they are read (``\\r\\n``, ``\\r`` and ``\\n`` all end one)."""
        text = TextStream(stream, context.warn, detect_bytes=DETECT_BYTES, read_bytes=READ_BYTES)
        if not looks_like_text(text.head[:8192]):
            raise CorruptDocument(
                f"{context.filename or context.uri or 'the file'} is binary, not a subtitle file"
            )
        context.metadata["encoding"] = text.encoding
        tail = ""
        for piece in text:
            buffer, held = tail + piece, ""
            if buffer.endswith("\r"):
                buffer, held = buffer[:-1], "\r"  # its "\n" may be the next piece's first character
            lines = _NEWLINE.split(buffer)
            # The last piece is a line still being read.
            tail = lines.pop() + held
            yield from lines
        if tail:
            yield from _NEWLINE.split(tail.rstrip("\r")) if tail.endswith("\r") else [tail]


def _section(cue: Cue) -> Section:
    metadata: dict[str, object] = {
        "kind": "cue",
        "index": cue.ordinal,
        "start": cue.start,
        "end": cue.end,
    }
    if cue.speaker:
        metadata["speaker"] = cue.speaker
    if cue.identifier is not None:
        metadata["cue_id"] = cue.identifier
    return Section(cue.text, metadata)
