"""DreamModel: a user's sessions and documents → goals, dreams, fears, tasks, relationships.

The output shape is the seed's "DreamModel Output" (``agentlets.dreaming.DreamModel``), typed
throughout. When a user's data exceeds one call, each part is analysed, the lists are unioned and
de-duplicated, and one final call writes the executive summary over the merged findings — the
original kept only the last part's answer.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, field_validator

from p8fs.agents.base import Agent, AgentInput, FollowUpCall, write_summary
from p8fs.agents.errors import InvalidAgentInput
from p8fs.models import Resource, Session
from p8fs.providers import Section

Priority = Literal["high", "medium", "low"]
#: Between the parts' summaries in a merged (not yet finalized) result.
PART_SEPARATOR = "\n\n"
Timeline = Literal["short-term", "medium-term", "long-term"]


def _lower(value: Any) -> Any:
    return (
        value.strip().lower().replace("_", "-").replace(" ", "-")
        if isinstance(value, str)
        else value
    )


class Goal(BaseModel):
    goal: str
    category: str = Field(description="career, health, learning, relationships, finance, ...")
    priority: Priority = "medium"

    @field_validator("priority", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return _lower(value)


class Dream(BaseModel):
    dream: str
    category: str = Field(description="lifestyle, career, travel, creative, ...")
    timeline: Timeline = "long-term"

    @field_validator("timeline", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return _lower(value)


class Fear(BaseModel):
    fear: str
    category: str | None = None
    intensity: Priority | None = None

    @field_validator("intensity", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return _lower(value)


class PendingTask(BaseModel):
    task: str
    due: str | None = Field(None, description="Due date or time as stated, if any.")
    priority: Priority | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return _lower(value)


class Appointment(BaseModel):
    title: str
    when: str | None = Field(None, description="Date/time as stated (ISO 8601 when known).")
    participants: list[str] = Field(default_factory=list)
    location: str | None = None


class EntityRelationship(BaseModel):
    source: str = Field(description="A person, organisation, project or concept.")
    relation: str = Field(description="e.g. works_with, manages, client_of, part_of.")
    target: str


class Recommendation(BaseModel):
    recommendation: str
    rationale: str | None = None
    priority: Priority | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return _lower(value)


class DreamMetrics(BaseModel):
    total_documents_analyzed: int = Field(0, ge=0)
    confidence_score: float = Field(0.0, ge=0.0, le=1.0)
    data_completeness: float = Field(0.0, ge=0.0, le=1.0)


class UserData(BaseModel):
    """What the dreaming worker collected for one tenant: its newest sessions and resources."""

    tenant_id: str
    sessions: list[Session] = Field(default_factory=list)
    resources: list[Resource] = Field(default_factory=list)
    #: How many were left out to stay within the limits and the token budget.
    sessions_skipped: int = 0
    resources_skipped: int = 0
    token_count: int = 0


def render_session(session: Session) -> str:
    lines = [f"## Session {session.name or session.id} ({session.created_at.isoformat()})"]
    if session.query:
        lines.append(f"query: {session.query}")
    for message in session.messages:
        role = message.get("role", "?")
        content = message.get("content", "")
        if not isinstance(content, str):
            content = str(content)
        lines.append(f"{role}: {content}")
    return "\n".join(lines)


def render_resource(resource: Resource) -> str:
    return (
        f"## Document {resource.name} [{resource.category}] "
        f"({resource.created_at.isoformat()}, {resource.uri})\n{resource.content}"
    )


class ExecutiveSummary(BaseModel):
    """You write the executive summary of an analysis of one person's notes, documents and
    conversations. The analysis was done in parts; you receive the merged findings (goals,
    dreams, fears, pending tasks, appointments, relationships, recommendations and themes).

    Write executive_summary: one paragraph on what this person is focused on, worried about and
    working towards right now. Return key_themes ordered by importance, keeping only themes
    supported by the findings.
    """

    executive_summary: str
    key_themes: list[str] = Field(default_factory=list)


class DreamModel(Agent):
    """You analyse one person's recent chat sessions and documents (voice memos, notes, specs,
    contracts) to understand their life and work: what they want, fear and must do.

    Extract, citing only what the data supports:
    - goals (with category and priority high/medium/low) and dreams (longer-term aspirations,
      with category and timeline short-term/medium-term/long-term);
    - fears and worries; pending_tasks (with due dates when stated); appointments (title, when,
      participants, location);
    - entity_relationships between people, organisations, projects and concepts
      (source, relation, target);
    - recommendations that would help this person, with a rationale;
    - key_themes and an executive_summary;
    - metrics: total_documents_analyzed, confidence_score and data_completeness (0 to 1).
    When the input says it is one part of a larger set, analyse only that part.
    """

    agent_aliases = ("agentlets.dreaming.DreamModel",)

    user_id: str = Field("", description="The tenant/user analysed.")
    analysis_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    executive_summary: str = ""
    key_themes: list[str] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    dreams: list[Dream] = Field(default_factory=list)
    fears: list[Fear] = Field(default_factory=list)
    pending_tasks: list[PendingTask] = Field(default_factory=list)
    appointments: list[Appointment] = Field(default_factory=list)
    entity_relationships: list[EntityRelationship] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    metrics: DreamMetrics = Field(default_factory=DreamMetrics)

    # -- input ---------------------------------------------------------------------------
    @classmethod
    def prepare_input(cls, data: Any) -> AgentInput:
        """``UserData`` (or a dict with ``sessions``/``resources``): one record per item."""
        if isinstance(data, AgentInput):
            return data
        if isinstance(data, dict):
            data = UserData.model_validate(data)
        if isinstance(data, str):
            return super().prepare_input(data)
        if not isinstance(data, UserData):
            raise InvalidAgentInput(f"DreamModel cannot read {type(data).__name__} input")
        records = [
            Section(render_session(s), {"kind": "session", "id": s.id}) for s in data.sessions
        ] + [Section(render_resource(r), {"kind": "resource", "id": r.id}) for r in data.resources]
        if not records:
            raise InvalidAgentInput(
                f"tenant {data.tenant_id!r} has no sessions or resources to analyse",
                tenant_id=data.tenant_id,
            )
        header = (
            f"# Data of user {data.tenant_id}\n"
            f"{len(data.sessions)} chat sessions and {len(data.resources)} documents, newest first."
        )
        return AgentInput(
            header=header,
            records=records,
            context={"user_id": data.tenant_id, "documents": len(records)},
            source=data.tenant_id,
        )

    @classmethod
    def postprocess(cls, result: Self, agent_input: AgentInput) -> Self:
        """The user and the document count are facts of the input, not the model's guess."""
        if agent_input.context.get("user_id"):
            result.user_id = agent_input.context["user_id"]
        documents = agent_input.context.get("documents", len(agent_input.records))
        result.metrics.total_documents_analyzed = int(documents)
        return result

    # -- merging ---------------------------------------------------------------------------
    @classmethod
    def merge(cls, parts: list[Self], agent_input: AgentInput) -> Self:
        """Union every list with duplicates removed; metrics weighted by each part's size."""
        weights = [max(p.metrics.total_documents_analyzed, 1) for p in parts]
        total = sum(weights)
        return cls(
            user_id=next((p.user_id for p in parts if p.user_id), ""),
            executive_summary=PART_SEPARATOR.join(
                p.executive_summary for p in parts if p.executive_summary
            ),
            key_themes=_union_text([t for p in parts for t in p.key_themes]),
            goals=_union([x for p in parts for x in p.goals], "goal"),
            dreams=_union([x for p in parts for x in p.dreams], "dream"),
            fears=_union([x for p in parts for x in p.fears], "fear"),
            pending_tasks=_union([x for p in parts for x in p.pending_tasks], "task"),
            appointments=_union([x for p in parts for x in p.appointments], "title", "when"),
            entity_relationships=_union(
                [x for p in parts for x in p.entity_relationships], "source", "relation", "target"
            ),
            recommendations=_union([x for p in parts for x in p.recommendations], "recommendation"),
            metrics=DreamMetrics(
                total_documents_analyzed=sum(p.metrics.total_documents_analyzed for p in parts),
                confidence_score=sum(
                    p.metrics.confidence_score * w for p, w in zip(parts, weights, strict=True)
                )
                / total,
                data_completeness=sum(
                    p.metrics.data_completeness * w for p, w in zip(parts, weights, strict=True)
                )
                / total,
            ),
        )

    @classmethod
    async def finalize(cls, merged: Self, call: FollowUpCall[Any], agent_input: AgentInput) -> Self:
        """One call writes the executive summary over everything the parts found."""
        findings = merged.model_dump(
            mode="json", exclude={"executive_summary", "analysis_id", "metrics"}
        )
        partials = [p for p in merged.executive_summary.split(PART_SEPARATOR) if p]
        summary = await write_summary(call, ExecutiveSummary, agent_input, findings, partials)
        merged.executive_summary = summary.executive_summary
        if summary.key_themes:
            merged.key_themes = _union_text([*summary.key_themes, *merged.key_themes])
        return merged


def _norm(text: Any) -> str:
    return " ".join(str(text or "").split()).casefold()


def _union_text(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = _norm(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _union(items: list[Any], *keys: str) -> list[Any]:
    """Keep the first of each group of items equal on ``keys`` (case and spacing ignored)."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for item in items:
        key = tuple(_norm(getattr(item, k)) for k in keys)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out
