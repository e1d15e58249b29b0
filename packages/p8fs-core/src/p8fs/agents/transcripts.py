"""Transcripts as the original system wrote them, and plain text, read into one typed shape.

The seed's format (``tests/sample_data/moment_samples``) is a JSON object with ``segments``
(timestamp, speaker, text, duration), ``speakers`` (speaker id → voice fingerprint, user id and
label), ``environment`` (location, background sounds) and the recording's start and end. Plain
text is accepted too: each paragraph (or line) becomes an untimed segment. Invalid JSON is an
:class:`InvalidAgentInput` naming the line and column, never a silent fallback to "plain text".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from p8fs.agents.errors import InvalidAgentInput
from p8fs.providers import Section


def as_utc(value: datetime) -> datetime:
    """Naive timestamps in transcripts are UTC; make every comparison aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """``2025-01-13T09:00:00Z``: the compact UTC form the corpus uses."""
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")


class TranscriptSegment(BaseModel):
    """One utterance."""

    model_config = ConfigDict(extra="allow")

    timestamp: datetime | None = None
    speaker_id: str | None = None
    speaker_label: str | None = None
    text: str
    duration_seconds: float | None = None

    @property
    def end(self) -> datetime | None:
        if self.timestamp is None:
            return None
        return as_utc(self.timestamp) + timedelta(seconds=self.duration_seconds or 0)


class Speaker(BaseModel):
    """A voice in the recording and who it belongs to, when known."""

    model_config = ConfigDict(extra="allow")

    speaker_id: str | None = None
    fingerprint_id: str | None = None
    user_id: str | None = None
    user_label: str | None = None


class Environment(BaseModel):
    model_config = ConfigDict(extra="allow")

    location: str | None = None
    background_sounds: str | None = None
    recording_quality: str | None = None


class Transcript(BaseModel):
    """A recording's transcript in the seed's format."""

    model_config = ConfigDict(extra="allow")

    transcript_id: str | None = None
    source_uri: str | None = None
    start_timestamp: datetime | None = None
    end_timestamp: datetime | None = None
    duration_seconds: float | None = None
    segments: list[TranscriptSegment] = Field(default_factory=list)
    speakers: list[Speaker] = Field(default_factory=list)
    environment: Environment | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        """Start and end of the recording (declared, else derived from the segments)."""
        start = self.start_timestamp
        if start is None:
            stamps = [s.timestamp for s in self.segments if s.timestamp is not None]
            start = min(stamps, key=as_utc) if stamps else None
        end = self.end_timestamp
        if end is None and start is not None and self.duration_seconds is not None:
            end = as_utc(start) + timedelta(seconds=self.duration_seconds)
        if end is None:
            ends = [e for e in (s.end for s in self.segments) if e is not None]
            end = max(ends) if ends else None
        return (as_utc(start) if start else None, as_utc(end) if end else None)

    def speaker(self, speaker_id: str | None) -> Speaker | None:
        return next((s for s in self.speakers if s.speaker_id == speaker_id), None)

    def header(self) -> str:
        """What every chunk of this transcript repeats: identity, bounds, people, place."""
        start, end = self.bounds()
        lines = ["# Transcript"]
        for label, value in (
            ("transcript_id", self.transcript_id),
            ("source_uri", self.source_uri),
            ("start_timestamp", iso(start)),
            ("end_timestamp", iso(end)),
            ("duration_seconds", self.duration_seconds),
        ):
            if value is not None:
                lines.append(f"{label}: {value}")
        if self.speakers:
            lines.append("speakers:")
            for s in self.speakers:
                lines.append(
                    "  - "
                    + ", ".join(f"{k}: {v}" for k, v in s.model_dump(exclude_none=True).items())
                )
        if self.environment is not None:
            env = self.environment.model_dump(exclude_none=True)
            if env:
                lines.append("environment:")
                lines.extend(f"  {k}: {v}" for k, v in env.items())
        return "\n".join(lines)

    def sections(self) -> list[Section]:
        """One section per segment (a record the chunker keeps whole), rendered for the model."""
        out = []
        for index, seg in enumerate(self.segments):
            who = seg.speaker_label or seg.speaker_id
            if seg.speaker_id and seg.speaker_label:
                who = f"{seg.speaker_label} ({seg.speaker_id})"
            stamp = iso(seg.timestamp)
            prefix = f"[{stamp}" + (f" +{seg.duration_seconds:g}s" if seg.duration_seconds else "")
            prefix = prefix + "] " if stamp else ""
            text = f"{prefix}{who}: {seg.text}" if who else f"{prefix}{seg.text}"
            out.append(
                Section(
                    text=text,
                    metadata={
                        "kind": "segment",
                        "index": index,
                        "timestamp": stamp,
                        "speaker": seg.speaker_id,
                    },
                )
            )
        return out


def parse_json_text(text: str, source: str | None = None) -> Any:
    """``json.loads`` with the error turned into :class:`InvalidAgentInput` (line, column)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{source}: " if source else ""
        raise InvalidAgentInput(
            f"{where}invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            source=source,
            line=exc.lineno,
            column=exc.colno,
        ) from exc


def transcript_from_text(text: str, source: str | None = None) -> Transcript:
    """Plain text: one untimed segment per paragraph (per line if there are no blank lines)."""
    stripped = text.strip()
    if not stripped:
        raise InvalidAgentInput(f"{source or 'input'} is empty: nothing to analyse", source=source)
    parts = [p.strip() for p in stripped.split("\n\n") if p.strip()]
    if len(parts) == 1:
        parts = [p.strip() for p in stripped.splitlines() if p.strip()]
    return Transcript(
        source_uri=source,
        segments=[TranscriptSegment(text=p) for p in parts],
    )


def transcript_from_data(data: dict[str, Any], source: str | None = None) -> Transcript:
    """A parsed JSON object in the seed's format."""
    if not isinstance(data, dict):
        raise InvalidAgentInput(
            f"{source or 'input'}: a transcript must be a JSON object, got {type(data).__name__}",
            source=source,
        )
    try:
        transcript = Transcript.model_validate(data)
    except ValidationError as exc:
        raise InvalidAgentInput(
            f"{source or 'input'} is not a transcript: {exc.errors()[0]['loc']}: "
            f"{exc.errors()[0]['msg']}",
            source=source,
        ) from exc
    if not transcript.segments:
        raise InvalidAgentInput(f"{source or 'input'} has no segments", source=source)
    if transcript.source_uri is None and source is not None:
        transcript.source_uri = source
    return transcript


def read_transcript(data: Any, source: str | None = None) -> Transcript:
    """Any reasonable input → :class:`Transcript`.

    Accepts a :class:`Transcript`, a dict in the seed's format, a :class:`~pathlib.Path` to a
    ``.json`` or text file, or a string (JSON when it starts with ``{``, plain text otherwise).
    """
    if isinstance(data, Transcript):
        return data
    if isinstance(data, dict):
        return transcript_from_data(data, source)
    if isinstance(data, Path):
        try:
            text = data.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidAgentInput(f"{data} is not UTF-8 text", source=str(data)) from exc
        return read_transcript(text, source or str(data))
    if isinstance(data, bytes):
        return read_transcript(data.decode("utf-8"), source)
    if isinstance(data, str):
        if data.lstrip().startswith(("{", "[")):
            return transcript_from_data(parse_json_text(data, source), source)
        return transcript_from_text(data, source)
    raise InvalidAgentInput(f"cannot read a transcript from {type(data).__name__}", source=source)
