"""The pydantic models of what p8fs stores, shaped after the original system's tables.

These are the records the database layer reads and writes and the CLI prints. Field names follow
the original ``files``/``resources``/``jobs``/``errors`` tables and the MomentBuilder output, so
queries and dashboards written against the original keep working.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """Timezone-aware now in UTC (stored naive-UTC where a dialect has no time zones)."""
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Record(BaseModel):
    """Base of stored records: every row belongs to exactly one tenant."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(default_factory=new_id)
    tenant_id: str


class FileRecord(Record):
    """A processed file (table ``files``)."""

    uri: str
    name: str = ""
    file_size: int | None = None
    mime_type: str | None = None
    content_hash: str | None = None
    provider: str | None = None
    chunk_count: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    upload_timestamp: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Resource(Record):
    """One chunk of a file's text (table ``resources``), e.g. ``Sample_chunk_0``."""

    file_id: str
    name: str
    category: str = "content_chunk"
    content: str
    ordinal: int
    uri: str
    token_count: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class JobStatus(StrEnum):
    """Life cycle of a ``jobs`` row.

    A file's processing goes PENDING → RUNNING → DONE | FAILED; an asynchronous agent job
    (an LLM batch) goes PENDING → SUBMITTED → COMPLETED | FAILED. A finished status (see
    :data:`FINAL_JOB_STATUSES`) is never overwritten by an unfinished one: the database refuses
    it, so a late or repeated write (a redelivered message) cannot reopen a finished job.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUBMITTED = "SUBMITTED"
    DONE = "DONE"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


#: Statuses a job ends in; one of these is only ever replaced by another one of these.
FINAL_JOB_STATUSES = frozenset({JobStatus.DONE, JobStatus.COMPLETED, JobStatus.FAILED})


class Job(Record):
    """An asynchronous task (table ``jobs``): a file being processed, a dream batch."""

    job_type: str
    status: JobStatus = JobStatus.PENDING
    payload: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    queued_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ErrorRecord(Record):
    """A failure worth a human's attention (table ``errors``)."""

    date: datetime = Field(default_factory=utcnow)
    process: str | None = None
    message: str
    stack_trace: str | None = None
    level: str = "ERROR"
    metadata: dict[str, Any] = Field(default_factory=dict)


class Session(Record):
    """A chat session or conversation of a user (table ``sessions``), read by the dreaming agent."""

    name: str = ""
    query: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class PresentPerson(BaseModel):
    """Someone present in a moment. The one shape used everywhere."""

    model_config = ConfigDict(extra="ignore")

    fingerprint_id: str | None = None
    user_id: str | None = None
    user_label: str | None = None


class Moment(Record):
    """A time-bounded activity from a transcript (table ``moments``)."""

    name: str
    content: str = ""
    summary: str | None = None
    category: str | None = None
    uri: str | None = None
    resource_timestamp: datetime | None = None
    resource_ends_timestamp: datetime | None = None
    moment_type: str | None = None
    emotion_tags: list[str] = Field(default_factory=list)
    topic_tags: list[str] = Field(default_factory=list)
    present_persons: list[PresentPerson] = Field(default_factory=list)
    location: str | None = None
    background_sounds: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    source_resource_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


__all__ = [
    "ErrorRecord",
    "FileRecord",
    "Job",
    "JobStatus",
    "Moment",
    "PresentPerson",
    "Record",
    "Resource",
    "Session",
    "utcnow",
]
