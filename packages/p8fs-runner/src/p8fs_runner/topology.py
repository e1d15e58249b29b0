"""Create and check the JetStream streams and consumers of :mod:`p8fs_runner.tiers`.

The router is the only process that calls :func:`ensure_topology`; workers call
:func:`bind_consumer`, which never creates anything and fails with a message that says what to run.
That split is the seed's ("router is the single authority for consumer creation"), and it means a
misconfigured worker cannot silently create a consumer with library defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.js import api
from nats.js.errors import APIError, NotFoundError

from p8fs.errors import P8fsError
from p8fs_runner.tiers import (
    ALL_QUEUES,
    DLQ_MAX_AGE,
    DLQ_STREAM,
    DLQ_SUBJECT_PREFIX,
    DUPLICATE_WINDOW,
    QueueSpec,
)

if TYPE_CHECKING:  # pragma: no cover
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)


class ConsumerNotFound(P8fsError):
    """A worker's durable consumer does not exist: the router has not set the topology up."""

    permanent = True
    code = "consumer_not_found"


class TopologyError(P8fsError):
    """A stream or consumer could not be created or updated (e.g. an incompatible old stream)."""

    code = "topology"


def stream_config(spec: QueueSpec) -> api.StreamConfig:
    """A queue's stream: work-queue retention (a message lives until a worker acks it), on disk,
    with a duplicate window so a re-published ``Nats-Msg-Id`` is dropped."""
    return api.StreamConfig(
        name=spec.stream,
        description=spec.description or None,
        subjects=[spec.subject],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW,
    )


def dlq_stream_config() -> api.StreamConfig:
    """Dead letters: kept (limits retention) until replayed or ``DLQ_MAX_AGE`` passes."""
    return api.StreamConfig(
        name=DLQ_STREAM,
        description="dead-lettered storage events with the reason they failed",
        subjects=[f"{DLQ_SUBJECT_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=DLQ_MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW,
    )


def consumer_config(spec: QueueSpec) -> api.ConsumerConfig:
    """A queue's durable pull consumer with its tier's settings (never library defaults)."""
    return api.ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        description=spec.description or None,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait,
        backoff=list(spec.backoff),
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=spec.subject,
        replay_policy=api.ReplayPolicy.INSTANT,
    )


@dataclass
class TopologyReport:
    """What :func:`ensure_topology` did, for the router's log."""

    streams_created: list[str] = field(default_factory=list)
    streams_updated: list[str] = field(default_factory=list)
    consumers_created: list[str] = field(default_factory=list)
    consumers_updated: list[str] = field(default_factory=list)
    consumers_recreated: list[str] = field(default_factory=list)
    consumers_deleted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{label}: {', '.join(items)}"
            for label, items in (
                ("streams created", self.streams_created),
                ("streams updated", self.streams_updated),
                ("consumers created", self.consumers_created),
                ("consumers updated", self.consumers_updated),
                ("consumers recreated", self.consumers_recreated),
                ("stale consumers deleted", self.consumers_deleted),
            )
            if items
        ]
        return "; ".join(parts) or "topology already up to date"


async def _ensure_stream(
    js: JetStreamContext, config: api.StreamConfig, report: TopologyReport
) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except APIError as exc:
            raise TopologyError(f"cannot create stream {config.name}: {exc.description}") from exc
        report.streams_created.append(config.name)
        return
    try:
        await js.update_stream(config)
    except APIError as exc:
        # An incompatible existing stream holds messages: never delete it behind the operator's back.
        raise TopologyError(
            f"stream {config.name} exists with settings that cannot be updated "
            f"({exc.description}); move its messages and delete it, then run the router again"
        ) from exc
    report.streams_updated.append(config.name)


def _differs(current: api.ConsumerConfig, wanted: api.ConsumerConfig) -> bool:
    fields = ("ack_wait", "backoff", "max_deliver", "max_ack_pending", "filter_subject")
    return any(getattr(current, f) != getattr(wanted, f) for f in fields)


async def _ensure_consumer(js: JetStreamContext, spec: QueueSpec, report: TopologyReport) -> None:
    wanted = consumer_config(spec)
    label = f"{spec.stream}/{spec.durable}"
    try:
        current = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        await js.add_consumer(spec.stream, config=wanted)
        report.consumers_created.append(label)
        return
    if not _differs(current.config, wanted):
        return
    try:
        await js.add_consumer(spec.stream, config=wanted)  # create-or-update
        report.consumers_updated.append(label)
    except APIError as exc:
        # A setting NATS cannot change in place: delete and recreate. On a work-queue stream the
        # messages stay in the stream, so nothing is lost; unacked ones are delivered again.
        log.warning("consumer %s cannot be updated (%s): recreating it", label, exc.description)
        await js.delete_consumer(spec.stream, spec.durable)
        await js.add_consumer(spec.stream, config=wanted)
        report.consumers_recreated.append(label)


async def _delete_stale_consumers(
    js: JetStreamContext, spec: QueueSpec, report: TopologyReport
) -> None:
    """Delete every other consumer on a queue's stream (old names, ephemeral leftovers).

    A work-queue stream allows one consumer per subject, so a stale one would block ours.
    """
    for info in await js.consumers_info(spec.stream):
        if info.name != spec.durable:
            await js.delete_consumer(spec.stream, info.name)
            report.consumers_deleted.append(f"{spec.stream}/{info.name}")


async def ensure_topology(
    js: JetStreamContext, queues: tuple[QueueSpec, ...] = ALL_QUEUES
) -> TopologyReport:
    """Create or update every stream and durable consumer of ``queues`` plus the dead-letter
    stream, and delete stale consumers. Idempotent: several router replicas may run it at once."""
    report = TopologyReport()
    for spec in queues:
        await _ensure_stream(js, stream_config(spec), report)
        await _delete_stale_consumers(js, spec, report)
        await _ensure_consumer(js, spec, report)
    await _ensure_stream(js, dlq_stream_config(), report)
    log.info("topology: %s", report.summary())
    return report


async def bind_consumer(js: JetStreamContext, spec: QueueSpec) -> JetStreamContext.PullSubscription:
    """Bind to a queue's existing durable consumer; never create it.

    Raises :class:`ConsumerNotFound` with the command to run when the router has not created it.
    """
    try:
        await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        raise ConsumerNotFound(
            f"consumer {spec.durable} on stream {spec.stream} not found: "
            "run `p8fs-run router` first",
            stream=spec.stream,
            durable=spec.durable,
        ) from None
    return await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
