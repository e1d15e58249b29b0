"""Dead letters: events that failed for good, kept with the reason until an operator acts.

JetStream does not dead-letter by itself: when ``max_deliver`` is exhausted a message just stays
in the work-queue stream and an advisory is published (measured). So the runner does it: the
original payload is published *unchanged* to ``p8fs.storage.dlq.<queue>`` (stream
``P8FS_STORAGE_EVENTS_DLQ``) with the failure in headers, and only after the broker confirms it is
the source message terminated. ``replay`` puts the original payload back where it came from and
removes the dead letter, so nothing is ever lost between the two.

An event may carry a secret of its sender (a document's ``password`` in its ``metadata``). The
payload keeps it, since replay must restore the event exactly; everything *shown* of a dead
letter (the reason header, ``to_dict``, ``dlq list``) masks it (:mod:`p8fs.redaction`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.js.errors import NotFoundError

from p8fs.redaction import mapping_secrets, redact_mapping, redact_text
from p8fs_runner.tiers import DLQ_STREAM, DLQ_SUBJECT_PREFIX, EVENTS_SUBJECT, TEST

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from p8fs_runner.tiers import QueueSpec

#: Headers a dead letter carries (the payload is the original event, byte for byte).
H_QUEUE = "P8fs-Dlq-Queue"
H_STREAM = "P8fs-Dlq-Stream"
H_SEQ = "P8fs-Dlq-Seq"
H_REASON = "P8fs-Dlq-Reason"
H_CODE = "P8fs-Dlq-Code"
H_DELIVERIES = "P8fs-Dlq-Deliveries"
H_FAILED_AT = "P8fs-Dlq-Failed-At"
H_TENANT = "P8fs-Dlq-Tenant"
H_URI = "P8fs-Dlq-Uri"

_MAX_HEADER = 2000


def _header_value(text: str) -> str:
    """Header values are one line of limited length; the full text is in the errors row."""
    one_line = " ".join(str(text).split())
    return one_line[:_MAX_HEADER]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of the dead-letter stream, as ``dlq list`` shows it."""

    seq: int
    subject: str
    queue: str
    reason: str
    code: str
    deliveries: int
    failed_at: str
    tenant_id: str
    uri: str
    source_stream: str
    source_seq: int | None
    data: bytes

    def to_dict(self) -> dict[str, Any]:
        """The letter as ``dlq list --json`` prints it: secrets in the event masked."""
        out = {k: getattr(self, k) for k in self.__slots__ if k != "data"}
        try:
            event: Any = json.loads(self.data)
        except ValueError:
            event = self.data.decode("utf-8", "replace")
        hidden = _event_secrets(self.data)
        out["reason"] = redact_text(self.reason, hidden)
        out["uri"] = redact_text(self.uri, hidden)
        out["event"] = _redact_event(event, hidden)
        return out


def _event_secrets(data: bytes) -> list[str]:
    """Secret values an event payload carries under secret keys of its ``metadata`` (or a
    filer entry's ``extended`` attributes); elsewhere ``key`` is an object key, not a secret."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("metadata", "extended"):
                    found.extend(mapping_secrets(v))
                    if k == "extended":  # the filer keeps x-amz-meta-* values base64-encoded
                        found.extend(_decoded(value) for value in mapping_secrets(v))
                else:
                    walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(event)
    return found


def _decoded(value: str) -> str:
    import base64
    import binascii

    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return value


def _redact_event(event: Any, hidden: list[str]) -> Any:
    """An event with its user metadata's secrets masked. Only the metadata maps are masked by
    key: elsewhere ``key`` is an object key, not a secret."""
    if isinstance(event, dict):
        return {
            k: redact_mapping(v, hidden)
            if k in ("metadata", "extended")
            else _redact_event(v, hidden)
            for k, v in event.items()
        }
    if isinstance(event, list):
        return [_redact_event(item, hidden) for item in event]
    if isinstance(event, str):
        return redact_text(event, hidden)
    return event


async def publish_dead_letter(
    js: JetStreamContext,
    spec: QueueSpec,
    data: bytes,
    *,
    source_stream: str,
    source_seq: int,
    deliveries: int,
    reason: str,
    code: str,
    tenant_id: str = "",
    uri: str = "",
) -> None:
    """Publish an event's original payload and the failure to the dead-letter stream, and wait
    for the broker's confirmation (the caller removes the source only after this returns)."""
    hidden = _event_secrets(data)
    reason, uri = redact_text(reason, hidden), redact_text(uri, hidden)
    headers = {
        H_QUEUE: spec.name,
        H_STREAM: source_stream,
        H_SEQ: str(source_seq),
        H_REASON: _header_value(reason) or "unknown",
        H_CODE: _header_value(code) or "error",
        H_DELIVERIES: str(deliveries),
        H_FAILED_AT: datetime.now(UTC).isoformat(),
        H_TENANT: _header_value(tenant_id),
        H_URI: _header_value(uri),
        # Dead-lettering the same message twice (a retry after a lost PubAck, or the advisory
        # path racing the worker) stores it once.
        "Nats-Msg-Id": f"dlq:{source_stream}:{source_seq}",
    }
    await js.publish(spec.dlq_subject, data, headers=headers, stream=DLQ_STREAM)


async def dead_letter(
    js: JetStreamContext,
    spec: QueueSpec,
    msg: Msg,
    *,
    reason: str,
    code: str,
    tenant_id: str = "",
    uri: str = "",
) -> None:
    """Dead-letter a delivered message (the caller then ``term``s it)."""
    md = msg.metadata
    await publish_dead_letter(
        js,
        spec,
        msg.data,
        source_stream=md.stream,
        source_seq=md.sequence.stream,
        deliveries=md.num_delivered,
        reason=reason,
        code=code,
        tenant_id=tenant_id,
        uri=uri,
    )


#: Where nats-server announces a message whose deliveries ran out (core NATS, not stored).
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"


async def dead_letter_exhausted(
    js: JetStreamContext, advisory: dict[str, Any], queues: dict[str, QueueSpec]
) -> DeadLetter | None:
    """Dead-letter a message whose ``max_deliver`` ran out without any worker settling it.

    That happens when every delivery crashed or hung its worker (killed for memory, a stuck
    native library): nobody was alive to dead-letter it, and JetStream leaves such a message in
    the work-queue stream forever, announcing it only by an advisory. The router listens to the
    advisory and moves the message to the dead-letter stream. Returns ``None`` for advisories
    about other streams or messages already gone.
    """
    stream = str(advisory.get("stream", ""))
    spec = queues.get(stream)
    seq = advisory.get("stream_seq")
    if spec is None or not isinstance(seq, int):
        return None
    try:
        raw = await js.get_msg(stream, seq)
    except NotFoundError:
        return None  # settled meanwhile (a late ack, or another router replica)
    deliveries = int(advisory.get("deliveries") or spec.max_deliver)
    reason = (
        f"no worker settled this event in {deliveries} deliveries "
        "(each one crashed or stopped heartbeating)"
    )
    tenant_id, uri = _event_identity(raw.data or b"")
    await publish_dead_letter(
        js,
        spec,
        raw.data or b"",
        source_stream=stream,
        source_seq=seq,
        deliveries=deliveries,
        reason=reason,
        code="max_deliveries",
        tenant_id=tenant_id,
        uri=uri,
    )
    try:
        await js.delete_msg(stream, seq)
    except NotFoundError:
        pass
    return DeadLetter(
        seq=0,
        subject=spec.dlq_subject,
        queue=spec.name,
        reason=reason,
        code="max_deliveries",
        deliveries=deliveries,
        failed_at=datetime.now(UTC).isoformat(),
        tenant_id=tenant_id,
        uri=uri,
        source_stream=stream,
        source_seq=seq,
        data=raw.data or b"",
    )


def _event_identity(data: bytes) -> tuple[str, str]:
    """Tenant and URI of an event payload, if it parses (best effort, for the record)."""
    try:
        from p8fs_runner.events import parse_event

        event = parse_event(data)
    except Exception:
        return "", ""
    if event is None:
        return "", ""
    return event.tenant_id, event.uri


def _from_raw(raw: Any) -> DeadLetter:
    h = raw.headers or {}
    seq = h.get(H_SEQ)
    return DeadLetter(
        seq=int(raw.seq),
        subject=str(raw.subject),
        queue=h.get(H_QUEUE, ""),
        reason=h.get(H_REASON, ""),
        code=h.get(H_CODE, ""),
        deliveries=int(h.get(H_DELIVERIES, "0") or 0),
        failed_at=h.get(H_FAILED_AT, ""),
        tenant_id=h.get(H_TENANT, ""),
        uri=h.get(H_URI, ""),
        source_stream=h.get(H_STREAM, ""),
        source_seq=int(seq) if seq and seq.isdigit() else None,
        data=raw.data or b"",
    )


async def count(js: JetStreamContext) -> int:
    """Dead letters currently held (0 if the stream does not exist yet)."""
    try:
        info = await js.stream_info(DLQ_STREAM)
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def list_dead_letters(js: JetStreamContext, limit: int | None = None) -> list[DeadLetter]:
    """The dead letters, oldest first (deleted sequence numbers are skipped)."""
    try:
        info = await js.stream_info(DLQ_STREAM)
    except NotFoundError:
        return []
    out: list[DeadLetter] = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if limit is not None and len(out) >= limit:
            break
        try:
            raw = await js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:
            continue
        out.append(_from_raw(raw))
    return out


def replay_subject(letter: DeadLetter) -> str:
    """Where a dead letter goes back to: self-test letters to the test queue (never production),
    everything else to the main events subject, to be routed again by its current size."""
    if letter.queue == TEST.name:
        return TEST.subject
    return EVENTS_SUBJECT


async def replay(js: JetStreamContext, seqs: list[int] | None = None) -> list[DeadLetter]:
    """Republish dead letters (all, or the given sequence numbers) and delete them from the DLQ.

    Each is deleted only after its republish is confirmed, so a crash in between duplicates at
    worst (the pipeline is idempotent), never loses.
    """
    if seqs is None:
        letters = await list_dead_letters(js)
    else:
        letters = []
        for seq in seqs:
            try:
                letters.append(_from_raw(await js.get_msg(DLQ_STREAM, seq)))
            except NotFoundError:
                raise LookupError(f"no dead letter with sequence {seq} in {DLQ_STREAM}") from None
    done: list[DeadLetter] = []
    for letter in letters:
        await js.publish(
            replay_subject(letter),
            letter.data,
            headers={"Nats-Msg-Id": f"replay:{letter.seq}:{time.time_ns()}"},
        )
        await js.delete_msg(DLQ_STREAM, letter.seq)
        done.append(letter)
    return done


__all__ = [
    "DLQ_STREAM",
    "DLQ_SUBJECT_PREFIX",
    "MAX_DELIVERIES_ADVISORY",
    "DeadLetter",
    "count",
    "dead_letter",
    "dead_letter_exhausted",
    "list_dead_letters",
    "publish_dead_letter",
    "replay",
    "replay_subject",
]
