"""Create and check the JetStream streams and consumers of :mod:`p8fs_runner.tiers`.

The router is the only process that calls :func:`ensure_topology`; workers call
:func:`bind_consumer`, which never creates anything and fails with a message that says what to run.
That split is the seed's ("router is the single authority for consumer creation"), and it means a
misconfigured worker cannot silently create a consumer with library defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from p8fs.errors import ConfigurationError, P8fsError
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


#: JetStream's answers to a stream with more replicas than the deployment can place:
#: 10074 "replicas > 1 not supported in non-clustered mode" (one server), 10005 "no suitable
#: peers for placement" (more replicas than JetStream servers; measured on nats-server 2.15),
#: 10023 "insufficient resources" (the servers lack the storage for another copy).
REPLICA_ERROR_CODES = frozenset({10074, 10005, 10023})
#: JetStream is enabled but has no meta leader yet (a cluster still electing): wait.
JETSTREAM_TEMPORARILY_UNAVAILABLE = 10008


def _server_label(js: JetStreamContext) -> str:
    """``host:port`` of the server ``js`` talks to, without credentials (for error messages)."""
    url = getattr(getattr(js, "_nc", None), "connected_url", None)
    if url is None or url.hostname is None:
        return "the NATS server"
    return f"the NATS server at {url.hostname}:{url.port}"


async def wait_for_jetstream(js: JetStreamContext, limit: float = 30.0) -> None:
    """Return once JetStream answers; raise a :class:`ConfigurationError` naming
    ``P8FS_NATS_URL`` if the server has no JetStream at all.

    Why: without JetStream every API request gets "no responders", which nats-py reports as a
    bare ``ServiceUnavailableError()``; a router or worker would fail with that and nothing to
    go on. A cluster that is still electing its meta leader answers 503 with code 10008 instead:
    that heals by itself, so it is waited for (up to ``limit``).
    """
    deadline = time.monotonic() + limit
    no_responders = 0
    while True:
        try:
            await js.account_info()
            return
        except ServiceUnavailableError as exc:
            if exc.err_code is None:  # nobody serves $JS.API: JetStream is off
                no_responders += 1
                if no_responders >= 3:
                    raise ConfigurationError(
                        f"{_server_label(js)} has no JetStream: every server of P8FS_NATS_URL "
                        "must run with JetStream enabled (nats-server -js, or a jetstream {} "
                        "block in its configuration), on every node of a cluster"
                    ) from exc
            last: BaseException = exc
        except (NatsTimeoutError, TimeoutError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TopologyError(
                f"JetStream at {_server_label(js)} did not answer within {limit:.0f} s "
                f"({type(last).__name__}: {last}); a cluster needs a majority of its nodes up"
            )
        await asyncio.sleep(0.3)


def _replicas_error(name: str, replicas: int, exc: APIError) -> ConfigurationError | None:
    """A :class:`ConfigurationError` naming ``P8FS_NATS_REPLICAS`` if ``exc`` says the
    deployment cannot hold ``replicas`` copies of stream ``name``; else None."""
    text = (exc.description or "").lower()
    if exc.err_code not in REPLICA_ERROR_CODES and not any(
        words in text for words in ("replicas", "insufficient resources", "suitable peers")
    ):
        return None
    return ConfigurationError(
        f"P8FS_NATS_REPLICAS={replicas}: stream {name} cannot have {replicas} replicas on this "
        f"NATS deployment ({exc.description}). Set P8FS_NATS_REPLICAS to at most the number of "
        "JetStream servers of the cluster (1 for a single server), or bring the missing "
        "nodes back / add servers."
    )


def stream_config(spec: QueueSpec) -> api.StreamConfig:
    """A queue's stream: work-queue retention (a message lives until a worker acks it), on disk,
    with a duplicate window so a re-published ``Nats-Msg-Id`` is dropped, in ``spec.replicas``
    copies (``P8FS_NATS_REPLICAS``; its consumer inherits them)."""
    return api.StreamConfig(
        name=spec.stream,
        description=spec.description or None,
        subjects=[spec.subject],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=spec.replicas,
    )


def dlq_stream_config(replicas: int | None = None) -> api.StreamConfig:
    """Dead letters: kept (limits retention) until replayed or ``DLQ_MAX_AGE`` passes, with as
    many copies as the queues (a dead letter is the only record of a failed event)."""
    return api.StreamConfig(
        name=DLQ_STREAM,
        description="dead-lettered storage events with the reason they failed",
        subjects=[f"{DLQ_SUBJECT_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=DLQ_MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=replicas,
    )


#: The stream settings the runner owns; anything else an operator set on a stream is kept.
STREAM_FIELDS: tuple[str, ...] = (
    "description",
    "subjects",
    "retention",
    "storage",
    "discard",
    "duplicate_window",
    "max_age",
    "num_replicas",
)


def stream_changes(current: api.StreamConfig, wanted: api.StreamConfig) -> dict[str, Any]:
    """The runner-owned settings in which ``current`` differs from ``wanted`` (name -> wanted).

    ``None`` in ``wanted`` means "the server's default" and is not a difference, except for
    ``description``.
    """
    changes = {}
    for name in STREAM_FIELDS:
        want = getattr(wanted, name)
        if want is None and name != "description":
            continue
        have = getattr(current, name)
        if name == "num_replicas":
            have = have or 1
        if have != want:
            changes[name] = want
    return changes


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


#: A cluster that has just changed (a node restarted, replicas raised a moment ago) can report
#: a peer offline for a few seconds (measured under load); placement is retried this long
#: before "no suitable peers" is the operator's to fix.
PLACEMENT_GRACE = 15.0
#: JetStream's "no suitable peers for placement".
NO_SUITABLE_PEERS = 10005


async def _placed(request: Callable[[], Awaitable[Any]]) -> Any:
    """``request`` (a stream create or update), retried while peers are briefly offline."""
    deadline = time.monotonic() + PLACEMENT_GRACE
    while True:
        try:
            return await request()
        except APIError as exc:
            if exc.err_code != NO_SUITABLE_PEERS or time.monotonic() > deadline:
                raise
            log.warning("no suitable peers for placement yet (%s); retrying", exc.description)
            await asyncio.sleep(1.0)


async def _ensure_stream(
    js: JetStreamContext, config: api.StreamConfig, report: TopologyReport
) -> None:
    """Create the stream, or update the runner-owned settings of an existing one that differ
    (replicas included); an up-to-date stream is left alone (no update request at all)."""
    assert config.name is not None
    replicas = config.num_replicas or 1
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await _placed(lambda: js.add_stream(config))
        except APIError as exc:
            raise _replicas_error(config.name, replicas, exc) or TopologyError(
                f"cannot create stream {config.name}: {exc.description}"
            ) from exc
        report.streams_created.append(config.name)
        return
    changes = stream_changes(info.config, config)
    if not changes:
        return
    # Start from the stream's own configuration: only what the runner owns changes.
    updated = dataclasses.replace(info.config, **changes)
    try:
        await _placed(lambda: js.update_stream(updated))
    except APIError as exc:
        replicas_error = _replicas_error(config.name, replicas, exc)
        if replicas_error is not None:
            raise replicas_error from exc
        # An incompatible existing stream holds messages: never delete it behind the operator's back.
        raise TopologyError(
            f"stream {config.name} exists with settings that cannot be updated "
            f"({exc.description}); move its messages and delete it, then run the router again"
        ) from exc
    if "num_replicas" in changes:
        log.warning(
            "stream %s: replicas %s -> %s (P8FS_NATS_REPLICAS)",
            config.name,
            info.config.num_replicas or 1,
            replicas,
        )
    report.streams_updated.append(config.name)


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> bool:
    """Give an existing stream ``replicas`` copies if it has another number; True if updated.

    For streams the router does not define but should not lose with a node either, such as
    the bridge's checkpoint bucket (a key-value bucket is the stream ``KV_<bucket>``): only the
    replicas change, everything else the stream's owner set stays. Errors as for the router's
    own streams (a :class:`ConfigurationError` naming ``P8FS_NATS_REPLICAS``).
    """
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) == replicas:
        return False
    try:
        await _placed(
            lambda: js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
        )
    except APIError as exc:
        raise _replicas_error(stream, replicas, exc) or TopologyError(
            f"cannot change the replicas of stream {stream}: {exc.description}"
        ) from exc
    log.warning(
        "stream %s: replicas %s -> %s (P8FS_NATS_REPLICAS)",
        stream,
        info.config.num_replicas or 1,
        replicas,
    )
    return True


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
    js: JetStreamContext,
    queues: tuple[QueueSpec, ...] = ALL_QUEUES,
    *,
    replicas: int | None = None,
) -> TopologyReport:
    """Create or update every stream and durable consumer of ``queues`` plus the dead-letter
    stream, and delete stale consumers. Idempotent: several router replicas may run it at once.

    Streams get ``replicas`` copies, or each queue's own ``replicas`` (``P8FS_NATS_REPLICAS``
    through :meth:`RunnerSettings.queues`); the dead-letter stream the most of them. Where
    neither says (``None``: the tier table's own rows), existing streams keep their copies. Raises
    :class:`ConfigurationError` naming the setting when JetStream is off or the deployment
    cannot hold that many copies.
    """
    if replicas is not None:
        queues = tuple(q.with_overrides(replicas=replicas) for q in queues)
    await wait_for_jetstream(js)
    report = TopologyReport()
    for spec in queues:

        async def queue_step(spec: QueueSpec = spec) -> None:
            await _ensure_stream(js, stream_config(spec), report)
            await _delete_stale_consumers(js, spec, report)
            await _ensure_consumer(js, spec, report)

        await _retrying(js, queue_step, spec.stream)
    dlq_replicas = max((q.replicas for q in queues if q.replicas is not None), default=None)

    async def dlq_step() -> None:
        await _ensure_stream(js, dlq_stream_config(dlq_replicas), report)

    await _retrying(js, dlq_step, DLQ_STREAM)
    log.info("topology: %s", report.summary())
    return report


#: How long the router waits for a stream's leader to be elected (a node just lost) before it
#: gives up setting the topology up.
ELECTION_TIMEOUT = 60.0


async def _retrying(
    js: JetStreamContext,
    step: Callable[[], Awaitable[None]],
    what: str,
    limit: float = ELECTION_TIMEOUT,
) -> None:
    """Run an idempotent topology step again while JetStream cannot answer for a moment.

    Why: right after a node of a cluster is lost, requests about the streams it led time out
    or answer 503 until a new leader is elected (seconds; measured in tests/runner/
    test_cluster.py); a router starting then must wait, not crash-loop.
    """
    deadline = time.monotonic() + limit
    while True:
        try:
            await step()
            return
        except (NatsTimeoutError, TimeoutError, ServiceUnavailableError) as exc:
            if isinstance(exc, ServiceUnavailableError) and exc.err_code is None:
                await wait_for_jetstream(js)  # JetStream off: a ConfigurationError
            if time.monotonic() > deadline:
                raise TopologyError(
                    f"stream {what}: JetStream did not answer within {limit:.0f} s "
                    f"({type(exc).__name__}: {exc}); a cluster needs a majority of its nodes up"
                ) from exc
            log.warning("stream %s: JetStream busy (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(0.5)


async def bind_consumer(js: JetStreamContext, spec: QueueSpec) -> JetStreamContext.PullSubscription:
    """Bind to a queue's existing durable consumer; never create it.

    Raises :class:`ConsumerNotFound` with the command to run when the router has not created it,
    and :class:`ConfigurationError` when the server has no JetStream.
    """
    try:
        try:
            await js.consumer_info(spec.stream, spec.durable)
        except ServiceUnavailableError:
            await wait_for_jetstream(js)  # raises if JetStream is off; else it was a blip
            await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        raise ConsumerNotFound(
            f"consumer {spec.durable} on stream {spec.stream} not found: "
            "run `p8fs-run router` first",
            stream=spec.stream,
            durable=spec.durable,
        ) from None
    return await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
