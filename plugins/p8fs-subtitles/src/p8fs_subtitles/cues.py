"""Reading SRT and WebVTT cues from a stream of lines, one cue at a time.

Both formats are blocks separated by blank lines: an optional identifier line (the SRT counter,
a WebVTT cue id), a timing line ``start --> end`` and the cue's text. The reader is a small state
machine over lines rather than a block splitter, so memory holds one cue, never the file, and a
file that forgot the blank line between two cues still parses (a timing line always starts a new
cue; the counter just above it belongs to the new cue, not to the previous cue's text).

Speakers: WebVTT names them per cue with voice tags (``<v Sarah>text``); transcripts (SRT above
all) often put ``Name:`` at the start of a turn's first cue only, as podcasts do, so a speaker
named that way is carried forward to the following cues until the next ``Name:``. Cue text is kept as written, except that WebVTT
markup (tags, entities) is removed, as HTML tags would be: it is formatting, not words.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

#: ``[hh:]mm:ss,mmm`` (SRT) or ``[hh:]mm:ss.mmm`` (WebVTT); fractions of 1-3 digits are tolerated.
_TIMESTAMP = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING_LINE = re.compile(rf"^\s*{_TIMESTAMP}\s*-->\s*{_TIMESTAMP}(?:\s+(?P<settings>.*))?\s*$")
#: ``Travis: When you ...``: a capitalised name of at most three words, a colon, then the words.
_SPEAKER_PREFIX = re.compile(r"^(?:-\s*|>>\s*)?([A-Z][\w'.\-]*(?: [A-Z][\w'.\-]*){0,2}):\s+\S")
_VOICE_TAG = re.compile(r"<v(?:\.[\w.\-]+)?[ \t]+([^>]+)>")
_TAG = re.compile(r"<[^>]*>")
#: Blocks of a WebVTT file that are not cues.
_VTT_NON_CUE_BLOCKS = ("NOTE", "STYLE", "REGION")

#: A cue longer than this (characters) means the file is not really subtitles.
MAX_CUE_CHARS = 1 << 20


class CueTooLong(ValueError):
    """A cue's text grew past :data:`MAX_CUE_CHARS` (no blank line for a very long stretch)."""


@dataclass(frozen=True, slots=True)
class Cue:
    """One subtitle cue: when it is shown, what it says and who says it."""

    ordinal: int
    start: float
    end: float
    text: str
    identifier: str | None = None
    speaker: str | None = None
    line: int = 0


def parse_timestamp(groups: Iterable[str | None]) -> float:
    """Seconds from the regex groups ``(hours, minutes, seconds, fraction)``.

    Raises :class:`ValueError` for minutes or seconds of 60 or more.
    """
    hours, minutes, seconds, fraction = groups
    m, s = int(minutes or 0), int(seconds or 0)
    if m >= 60 or s >= 60:
        raise ValueError(f"minutes and seconds must be below 60 (got {m:02d}:{s:02d})")
    millis = int((fraction or "0").ljust(3, "0"))
    return int(hours or 0) * 3600 + m * 60 + s + millis / 1000


def parse_timing(line: str) -> tuple[float, float] | None:
    """``(start, end)`` in seconds if ``line`` is a timing line, else ``None``.

    Raises :class:`ValueError` when it looks like a timing line but the times are impossible.
    """
    match = _TIMING_LINE.match(line)
    if match is None:
        return None
    groups = match.groups()
    start = parse_timestamp(groups[0:4])
    end = parse_timestamp(groups[4:8])
    if end < start:
        raise ValueError(f"the cue ends ({end:.3f} s) before it starts ({start:.3f} s)")
    return start, end


def clean_vtt_text(text: str) -> tuple[str, str | None]:
    """WebVTT cue text without markup, and the first voice (``<v Name>``) it names."""
    voice = _VOICE_TAG.search(text)
    speaker = voice.group(1).strip() if voice else None
    return html.unescape(_TAG.sub("", text)), speaker or None


def speaker_prefix(text: str) -> str | None:
    """``"Travis"`` for ``"Travis: When you first get"``; ``None`` when no speaker is named."""
    match = _SPEAKER_PREFIX.match(text)
    return match.group(1) if match else None


class CueReader:
    """Turns lines into :class:`Cue` objects as soon as each cue is complete.

    ``warn`` receives a message for every block that is skipped (no timing line, impossible
    times), with its line number, so nothing is dropped silently.
    """

    def __init__(self, warn: Callable[[str], None], *, webvtt: bool = False) -> None:
        self.warn = warn
        self.webvtt = webvtt
        self.speaker: str | None = None
        self.cues = 0
        self.skipped = 0
        self._lineno = 0
        self._first_line = True
        # The cue being read: its times, text lines, identifier and first line number.
        self._timing: tuple[float, float] | None = None
        self._text: list[str] = []
        self._size = 0
        self._identifier: str | None = None
        self._cue_line = 0
        # Outside a cue: the line that may be the next cue's identifier; a block being skipped.
        self._pending: str | None = None
        self._pending_line = 0
        self._skipping = False
        self._junk_line = 0

    def feed(self, lines: Iterable[str]) -> Iterator[Cue]:
        """Consume lines (without their line breaks); yield every cue they complete."""
        for line in lines:
            self._lineno += 1
            if self._first_line:
                self._first_line = False
                if line.startswith("WEBVTT"):
                    self.webvtt = True
                    self._skipping = True  # the header block
                    continue
            yield from self._line(line)

    def close(self) -> Iterator[Cue]:
        """End of input: the last cue, if any."""
        yield from self._finish_cue()
        self._end_block()

    # -- internals ----------------------------------------------------------------------
    def _line(self, line: str) -> Iterator[Cue]:
        if not line.strip():
            yield from self._finish_cue()
            self._end_block()
            return
        if self._skipping:
            return
        try:
            timing = parse_timing(line)
        except ValueError as exc:
            yield from self._finish_cue()
            self._skip_block(f"line {self._lineno}: invalid timing {line.strip()!r}: {exc}")
            return
        if timing is not None:
            identifier, first_line = self._pending, self._pending_line
            if self._timing is not None and self._text and self._text[-1].strip().isdigit():
                # No blank line before this cue: the counter ended up in the previous cue's text.
                identifier, first_line = self._text.pop().strip(), self._lineno - 1
            yield from self._finish_cue()
            self._timing, self._identifier = timing, identifier
            self._cue_line = first_line or self._lineno
            self._pending = None
            return
        if self._timing is not None:
            self._text.append(line)
            self._size += len(line) + 1
            if self._size > MAX_CUE_CHARS:
                raise CueTooLong(
                    f"the cue starting at line {self._cue_line} is longer than {MAX_CUE_CHARS} "
                    "characters: this does not look like a subtitle file"
                )
            return
        if self._pending is None:
            if self.webvtt and line.startswith(_VTT_NON_CUE_BLOCKS):
                self._skipping = True  # NOTE, STYLE and REGION blocks carry no cue text
                return
            self._pending, self._pending_line = line.strip(), self._lineno
            return
        # A second line before any timing line: this block is not a cue.
        self._skip_block(
            f"line {self._pending_line}: block without a timing line skipped "
            f"({self._pending!r}, {line.strip()!r}, ...)"
        )

    def _skip_block(self, message: str) -> None:
        self.warn(message)
        self.skipped += 1
        self._pending = None
        self._skipping = True

    def _end_block(self) -> None:
        if self._pending is not None and self._timing is None:
            # A lone line between blank lines: an identifier whose timing line never came.
            self.warn(
                f"line {self._pending_line}: text without a timing line ({self._pending!r}) skipped"
            )
            self.skipped += 1
        self._pending = None
        self._skipping = False

    def _finish_cue(self) -> Iterator[Cue]:
        if self._timing is None:
            return
        start, end = self._timing
        raw = "\n".join(self._text)
        self._timing, self._text, self._size = None, [], 0
        voice: str | None = None
        text = raw
        if self.webvtt:
            text, voice = clean_vtt_text(raw)
        named = speaker_prefix(text)
        if named:
            self.speaker = named
        if not text.strip():
            return  # a cue that shows nothing (WebVTT allows them) has nothing to index
        self.cues += 1
        yield Cue(
            ordinal=self.cues,
            start=start,
            end=end,
            text=text,
            identifier=self._identifier,
            # A voice tag names this cue's speaker only (WebVTT's meaning); a `Name:` prefix
            # opens a turn that lasts until the next one.
            speaker=voice or self.speaker,
            line=self._cue_line,
        )
