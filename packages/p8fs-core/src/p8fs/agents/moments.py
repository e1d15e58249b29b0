"""MomentBuilder: a transcript → typed, time-bounded moments (what happened, who, where, mood).

The output shape is the original system's (``agentlets.moments.MomentBuilder``, see the seed's
"MomentBuilder Output"), with two things made strict: ``moment_type`` comes from a fixed set, and
every moment must lie inside the transcript it came from — a moment outside the recording is a
validation error, which instructor sends back to the model to correct.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, Self, cast, get_args

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from p8fs.agents.base import Agent, AgentInput, FollowUpCall, write_summary
from p8fs.agents.transcripts import as_utc, iso, read_transcript
from p8fs.ids import stable_id
from p8fs.models import Moment, PresentPerson

#: The kinds of moment. The corpus' expected outputs use meeting, conversation, reflection and
#: observation; the seed's moment guide adds planning, focused work, learning, creative work,
#: worrying and travel (collaborates/plans/focuses/learns/creates/worries/relocates).
MomentType = Literal[
    "meeting",
    "conversation",
    "reflection",
    "observation",
    "planning",
    "focus",
    "learning",
    "creative",
    "worry",
    "travel",
]
MOMENT_TYPES: tuple[str, ...] = get_args(MomentType)

#: Slack allowed at the transcript's edges (timestamps are rounded to the second).
BOUNDS_TOLERANCE = timedelta(seconds=1)
#: Validation-context key: clamp moments into the transcript instead of rejecting them.
REPAIR_TIMES = "repair_times"


def _clamp(moment: ExtractedMoment, start: datetime, end: datetime) -> None:
    """Move a moment's start and end inside ``[start, end]`` (flagged in its metadata)."""
    new_start = min(max(moment.start, start), end)
    new_end = min(max(moment.end, new_start), end)
    if (new_start, new_end) != (moment.start, moment.end):
        moment.resource_timestamp, moment.resource_ends_timestamp = new_start, new_end
        moment.metadata["times_repaired"] = True


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = " ".join(item.split()).casefold()
        if key and key not in seen:
            seen.add(key)
            out.append(item.strip())
    return out


def person_key(person: PresentPerson) -> str:
    """Who a present person is, for de-duplication and scoring: fingerprint, else id, else label."""
    return (person.fingerprint_id or person.user_id or person.user_label or "").casefold()


class ExtractedMoment(BaseModel):
    """One time-bounded segment of the user's experience."""

    name: str = Field(description="Short title, e.g. 'Morning Standup with Team'.")
    content: str = Field(description="A few sentences: what happened, what was decided or felt.")
    summary: str | None = Field(None, description="One line.")
    category: str | None = Field(
        None, description="Free-form area such as work, meeting, personal, creative, outdoor."
    )
    uri: str | None = Field(None, description="The recording's source URI.")
    resource_timestamp: datetime = Field(description="Start of the moment (ISO 8601, UTC).")
    resource_ends_timestamp: datetime = Field(description="End of the moment (ISO 8601, UTC).")
    moment_type: MomentType = Field(description="The kind of moment.")
    emotion_tags: list[str] = Field(
        default_factory=list, description="Emotions actually expressed, e.g. focused, stressed."
    )
    topic_tags: list[str] = Field(
        default_factory=list, description="Specific kebab-case topics, e.g. sprint-planning."
    )
    present_persons: list[PresentPerson] = Field(
        default_factory=list,
        description="Everyone who speaks, with fingerprint_id, user_id and user_label as listed "
        "in the transcript's speakers.",
    )
    location: str | None = None
    background_sounds: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("moment_type", mode="before")
    @classmethod
    def _lower_type(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("emotion_tags", "topic_tags")
    @classmethod
    def _clean_tags(cls, value: list[str]) -> list[str]:
        return _dedupe(value)

    @model_validator(mode="after")
    def _ordered(self, info: ValidationInfo) -> Self:
        if as_utc(self.resource_ends_timestamp) < as_utc(self.resource_timestamp):
            if (info.context or {}).get(REPAIR_TIMES):
                self.resource_timestamp, self.resource_ends_timestamp = (
                    self.resource_ends_timestamp,
                    self.resource_timestamp,
                )
                self.metadata["times_repaired"] = True
                return self
            raise ValueError(
                f"moment {self.name!r} ends ({iso(self.resource_ends_timestamp)}) before it "
                f"starts ({iso(self.resource_timestamp)})"
            )
        return self

    @property
    def start(self) -> datetime:
        return as_utc(self.resource_timestamp)

    @property
    def end(self) -> datetime:
        return as_utc(self.resource_ends_timestamp)


class MomentsSummary(BaseModel):
    """You write the analysis summary of a transcript that was classified into moments in
    parts. You receive the merged moments (in time order) and each part's own summary.

    Write analysis_summary: one or two sentences over the whole recording: what happened, who
    was involved and how it felt, in time order. Use only what the moments say.
    """

    analysis_summary: str


class MomentBuilder(Agent):
    """You classify a recorded transcript into moments: time-bounded segments of a person's day.

    A moment is a stretch of the recording with one character: a meeting, a conversation, a solo
    reflection or planning session, focused work, learning, creative work, worrying, travel, or
    an observation of the surroundings. Most ten-minute transcripts are one moment; split only
    where the activity, the people or the place clearly changes.

    For each moment give:
    - name: a short specific title; content: a few sentences on what happened, what was decided
      and how it felt; summary: one line; category: the area of life (work, meeting, personal,
      creative, outdoor, ...).
    - resource_timestamp and resource_ends_timestamp: the moment's start and end. They must lie
      within the transcript's start_timestamp and end_timestamp; a moment covering the whole
      recording uses exactly those two values.
    - moment_type: one of the allowed values.
    - emotion_tags: emotions actually expressed (focused, collaborative, stressed, anxious,
      excited, calm, ...). topic_tags: specific kebab-case topics useful for search.
    - present_persons: every speaker present, copying fingerprint_id, user_id and user_label
      from the transcript's speakers list. Do not invent people.
    - uri: the transcript's source_uri; location and background_sounds from its environment.

    Then write analysis_summary (one or two sentences over all moments) and total_moments.
    When the input says it is one part of a longer transcript, describe only that part.
    """

    agent_aliases = ("agentlets.moments.MomentBuilder",)

    # At least one: a transcript with segments is at least one moment. In the schema, so a
    # grammar-constrained local model cannot answer with an empty list (SmolLM2 did).
    moments: list[ExtractedMoment] = Field(
        min_length=1, description="The moments, in time order (at least one)."
    )
    analysis_summary: str = Field(description="One or two sentences over all moments.")
    total_moments: int = Field(0, ge=0, description="How many moments were found.")

    @model_validator(mode="after")
    def _within_transcript(self, info: ValidationInfo) -> Self:
        """Every moment inside the transcript's bounds (when the caller passed them)."""
        context = info.context or {}
        start, end = context.get("start"), context.get("end")
        if context.get(REPAIR_TIMES) and start is not None and end is not None:
            for moment in self.moments:
                _clamp(moment, as_utc(start), as_utc(end))
        problems = []
        for i, moment in enumerate(self.moments):
            if start is not None and moment.start < as_utc(start) - BOUNDS_TOLERANCE:
                problems.append(
                    f"moments[{i}] ({moment.name!r}) starts at {iso(moment.start)}, before the "
                    f"transcript starts ({iso(start)})"
                )
            if end is not None and moment.end > as_utc(end) + BOUNDS_TOLERANCE:
                problems.append(
                    f"moments[{i}] ({moment.name!r}) ends at {iso(moment.end)}, after the "
                    f"transcript ends ({iso(end)})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        self.moments.sort(key=lambda m: (m.start, m.end))
        # A count the model got wrong is not worth a retry: it is derived, so derive it.
        if self.total_moments != len(self.moments):
            self.total_moments = len(self.moments)
        return self

    # -- input ---------------------------------------------------------------------------
    @classmethod
    def prepare_input(cls, data: Any) -> AgentInput:
        """A transcript (seed JSON, dict, path or plain text): header + one record per segment."""
        if isinstance(data, AgentInput):
            return data
        transcript = read_transcript(data)
        start, end = transcript.bounds()
        return AgentInput(
            header=transcript.header(),
            records=transcript.sections(),
            context={
                "start": start,
                "end": end,
                "source_uri": transcript.source_uri,
                "transcript_id": transcript.transcript_id,
                "speakers": [s.model_dump() for s in transcript.speakers],
                "environment": transcript.environment.model_dump()
                if transcript.environment
                else {},
            },
            source=transcript.source_uri or transcript.transcript_id,
        )

    @classmethod
    def postprocess(cls, result: Self, agent_input: AgentInput) -> Self:
        """Fill the URI, place and people's ids the transcript states, where the model left gaps."""
        ctx = agent_input.context
        by_fp = {
            s.get("fingerprint_id"): s for s in ctx.get("speakers", []) if s.get("fingerprint_id")
        }
        by_label = {s.get("user_label"): s for s in ctx.get("speakers", []) if s.get("user_label")}
        env = ctx.get("environment") or {}
        for moment in result.moments:
            if moment.uri is None and ctx.get("source_uri"):
                moment.uri = ctx["source_uri"]
            if moment.location is None and env.get("location"):
                moment.location = env["location"]
            if moment.background_sounds is None and env.get("background_sounds"):
                moment.background_sounds = env["background_sounds"]
            for person in moment.present_persons:
                known = by_fp.get(person.fingerprint_id) or by_label.get(person.user_label)
                if known is None:
                    continue
                person.fingerprint_id = person.fingerprint_id or known.get("fingerprint_id")
                person.user_id = person.user_id or known.get("user_id")
                person.user_label = person.user_label or known.get("user_label")
            if ctx.get("transcript_id") and "transcript_id" not in moment.metadata:
                moment.metadata["transcript_id"] = ctx["transcript_id"]
        return result

    @classmethod
    def repair(cls, output: dict[str, Any] | None, agent_input: AgentInput) -> Self | None:
        """Moments the model still placed outside the recording after its re-asks are clamped
        to the recording (and flagged ``metadata.times_repaired``) rather than losing the
        transcript's moments; any other problem still fails. Small local models get the shape
        right (their servers enforce it with a grammar) but not the clock."""
        if not output:
            return None
        try:
            return cls.model_validate(output, context={**agent_input.context, REPAIR_TIMES: True})
        except ValidationError:
            return None

    # -- merging chunked input ---------------------------------------------------------
    @classmethod
    def merge(cls, parts: list[Self], agent_input: AgentInput) -> Self:
        """All partial moments in time order; overlapping duplicates (same type or name) joined."""
        everything = sorted(
            (m for part in parts for m in part.moments), key=lambda m: (m.start, m.end)
        )
        merged: list[ExtractedMoment] = []
        for moment in everything:
            if merged and _same_moment(merged[-1], moment):
                merged[-1] = join_moments(merged[-1], moment)
            else:
                merged.append(moment.model_copy(deep=True))
        summaries = _dedupe([p.analysis_summary for p in parts if p.analysis_summary])
        result = cls.model_construct(
            moments=merged, analysis_summary="\n\n".join(summaries), total_moments=len(merged)
        )
        return cast(Self, result)

    @classmethod
    async def finalize(cls, merged: Self, call: FollowUpCall[Any], agent_input: AgentInput) -> Self:
        """One call writes analysis_summary over the merged moments (as DreamModel does for its
        executive summary), instead of gluing the parts' summaries together."""
        findings = {
            "moments": [
                m.model_dump(
                    mode="json",
                    include={
                        "name",
                        "summary",
                        "moment_type",
                        "resource_timestamp",
                        "resource_ends_timestamp",
                        "emotion_tags",
                        "topic_tags",
                    },
                )
                for m in merged.moments
            ]
        }
        partials = [p for p in merged.analysis_summary.split("\n\n") if p]
        summary = await write_summary(call, MomentsSummary, agent_input, findings, partials)
        merged.analysis_summary = summary.analysis_summary
        return merged

    # -- storing ---------------------------------------------------------------------------
    def to_moments(self, tenant_id: str, *, source_resource_id: str | None = None) -> list[Moment]:
        """The stored ``moments`` rows, with ids derived from tenant, source and start time, so
        processing the same transcript again updates the same rows."""
        rows = []
        for index, m in enumerate(self.moments):
            source = m.uri or str(m.metadata.get("transcript_id") or source_resource_id or "")
            rows.append(
                Moment(
                    id=stable_id("moment", tenant_id, source, iso(m.start) or "", str(index)),
                    tenant_id=tenant_id,
                    name=m.name,
                    content=m.content,
                    summary=m.summary,
                    category=m.category,
                    uri=m.uri,
                    resource_timestamp=m.start,
                    resource_ends_timestamp=m.end,
                    moment_type=m.moment_type,
                    emotion_tags=list(m.emotion_tags),
                    topic_tags=list(m.topic_tags),
                    present_persons=[p.model_copy() for p in m.present_persons],
                    location=m.location,
                    background_sounds=m.background_sounds,
                    metadata=dict(m.metadata),
                    source_resource_id=source_resource_id,
                )
            )
        return rows


def _same_moment(a: ExtractedMoment, b: ExtractedMoment) -> bool:
    overlaps = b.start < a.end
    same_kind = a.moment_type == b.moment_type or a.name.casefold() == b.name.casefold()
    return overlaps and same_kind


def join_moments(a: ExtractedMoment, b: ExtractedMoment) -> ExtractedMoment:
    """One moment covering both: the earlier's title, both contents, the union of everything."""
    persons: dict[str, PresentPerson] = {}
    for p in [*a.present_persons, *b.present_persons]:
        persons.setdefault(person_key(p), p)
    contents = _dedupe([a.content, b.content])
    summaries = _dedupe([s for s in (a.summary, b.summary) if s])
    sounds = _dedupe([s for s in (a.background_sounds, b.background_sounds) if s])
    return ExtractedMoment(
        name=a.name,
        content="\n\n".join(contents),
        summary=" ".join(summaries) or None,
        category=a.category or b.category,
        uri=a.uri or b.uri,
        resource_timestamp=min(a.start, b.start),
        resource_ends_timestamp=max(a.end, b.end),
        moment_type=a.moment_type,
        emotion_tags=[*a.emotion_tags, *b.emotion_tags],
        topic_tags=[*a.topic_tags, *b.topic_tags],
        present_persons=list(persons.values()),
        location=a.location or b.location,
        background_sounds=", ".join(sounds) or None,
        metadata={**b.metadata, **a.metadata},
    )
