"""The router: reads ``p8fs.storage.events`` and hands each event to its tier by file size.

Order of operations per batch, and why:

1. parse every event (one parser for every shape, :mod:`p8fs_runner.events`); an event that
   cannot be parsed is recorded (``errors`` row), dead-lettered and terminated right here, so
   workers only ever see well-formed events;
2. publish each good event to its tier subject with a ``Nats-Msg-Id`` derived from the source
   message (stream sequence and timestamp), all at once with ``publish_async``;
3. wait for every PubAck (with a deadline, :mod:`p8fs_runner.pubacks`: a node lost mid-publish
   never answers), and only then ack the source messages; one unanswered is retried.

If the router dies between 2 and 3 the source is redelivered (to this or another replica sharing
the durable) and published again with the same id, which the tier stream drops as a duplicate.
So an event is routed exactly once as long as the retry comes within the duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from p8fs.errors import error_code
from p8fs_runner import metrics
from p8fs_runner.dlq import dead_letter
from p8fs_runner.pubacks import PUBACK_TIMEOUT, await_pubacks
from p8fs_runner.tiers import ROUTER, QueueSpec, tier_for_size

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from p8fs.models import ErrorRecord

log = logging.getLogger(__name__)

#: Writes an ``errors`` row (``Database.record_error``); ``None`` logs only.
ErrorSink = Callable[["ErrorRecord"], Awaitable[Any]]


def route_msg_id(msg: Msg) -> str:
    """The ``Nats-Msg-Id`` the routed copy of ``msg`` is published with.

    Stable across redeliveries of the same source message (its stream sequence never changes),
    and distinct across a re-created stream (the stored timestamp differs).
    """
    md = msg.metadata
    return f"route:{md.stream}:{md.sequence.stream}:{md.timestamp}"


@dataclass
class RouteStats:
    """Counts of one batch (or a whole run)."""

    routed: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    invalid: int = 0
    retried: int = 0

    def add(self, other: RouteStats) -> None:
        for tier, n in other.routed.items():
            self.routed[tier] = self.routed.get(tier, 0) + n
        self.ignored += other.ignored
        self.invalid += other.invalid
        self.retried += other.retried

    @property
    def total(self) -> int:
        return sum(self.routed.values()) + self.ignored + self.invalid


async def record_error(
    sink: ErrorSink | None,
    *,
    tenant_id: str,
    process: str,
    message: str,
    exc: BaseException | None,
    metadata: dict[str, Any],
) -> None:
    """Write an ``errors`` row through ``sink``; a failing database must not stop the caller
    from dead-lettering (the dead letter carries the reason too)."""
    if sink is None:
        log.error("%s: %s (%s)", process, message, metadata)
        return
    from p8fs.models import ErrorRecord

    stack = "".join(traceback.format_exception(exc)) if exc is not None else None
    try:
        await sink(
            ErrorRecord(
                tenant_id=tenant_id or "unknown",
                process=process,
                message=message,
                stack_trace=stack,
                metadata=metadata,
            )
        )
    except Exception as db_exc:  # the DLQ still holds the event and the reason
        log.error("could not record error row (%s): %s", db_exc, message)


class Router:
    """Routes batches from the router's durable consumer to the tier streams."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        errors: ErrorSink | None = None,
        spec: QueueSpec = ROUTER,
        tier_for: Callable[[int], QueueSpec] = tier_for_size,
        puback_within: float = PUBACK_TIMEOUT,
    ) -> None:
        self.js = js
        self.errors = errors
        self.spec = spec
        self.tier_for = tier_for
        #: Seconds a batch's publishes may wait for their PubAcks before they count as failed.
        self.puback_within = puback_within
        self.stats = RouteStats()

    async def _reject(self, msg: Msg, exc: BaseException) -> None:
        """An event that can never be routed: errors row, dead letter, term."""
        md = msg.metadata
        preview = msg.data[:500].decode("utf-8", "replace")
        await record_error(
            self.errors,
            tenant_id=str(getattr(exc, "details", {}).get("tenant_id", "") or "unknown"),
            process="router",
            message=f"invalid storage event: {exc}",
            exc=exc,
            metadata={
                "code": error_code(exc),
                "stream": md.stream,
                "seq": md.sequence.stream,
                "payload": preview,
            },
        )
        await dead_letter(self.js, self.spec, msg, reason=str(exc), code=error_code(exc))
        await msg.term()
        metrics.DEAD_LETTERED.labels(self.spec.name).inc()
        log.error(
            "dead-lettered an invalid storage event (%s seq %d): %s",
            md.stream,
            md.sequence.stream,
            exc,
        )

    async def route(self, msgs: list[Msg]) -> RouteStats:
        """Route one fetched batch; every message is settled when this returns."""
        from p8fs_runner.events import parse_event

        stats = RouteStats()
        pending: list[tuple[Msg, QueueSpec, asyncio.Future[Any]]] = []
        for msg in msgs:
            try:
                event = parse_event(msg.data)
            except Exception as exc:  # InvalidEvent, or a parser bug: both are dead letters
                await self._reject(msg, exc)
                stats.invalid += 1
                continue
            if event is None:  # a directory, a multipart part: nothing to process
                await msg.ack()
                stats.ignored += 1
                continue
            tier = self.tier_for(event.size or 0)
            payload = event.to_json()
            data = payload.encode() if isinstance(payload, str) else payload
            future = await self.js.publish_async(
                tier.subject, data, headers={"Nats-Msg-Id": route_msg_id(msg)}, stream=tier.stream
            )
            pending.append((msg, tier, future))

        results = await await_pubacks([f for _, _, f in pending], self.puback_within)
        for (msg, tier, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                await self._publish_failed(msg, tier, result)
                stats.retried += 1
                continue
            await msg.ack()
            stats.routed[tier.name] = stats.routed.get(tier.name, 0) + 1
            metrics.ROUTED.labels(tier.name).inc()
        self.stats.add(stats)
        return stats

    async def _publish_failed(self, msg: Msg, tier: QueueSpec, exc: BaseException) -> None:
        """The tier stream did not confirm: retry later, or dead-letter after the last delivery."""
        n = msg.metadata.num_delivered
        log.warning("publish to %s failed (delivery %d): %s", tier.subject, n, exc)
        if self.spec.is_last_delivery(n):
            await record_error(
                self.errors,
                tenant_id="unknown",
                process="router",
                message=f"could not publish to {tier.subject} after {n} deliveries: {exc}",
                exc=exc,
                metadata={"code": "transient", "stream": msg.metadata.stream},
            )
            await dead_letter(self.js, self.spec, msg, reason=str(exc), code="transient")
            await msg.term()
            return
        await msg.nak(delay=self.spec.retry_delay(n))

    async def run(self, sub: Any, stop: asyncio.Event, *, fetch_timeout: float = 1.0) -> RouteStats:
        """Fetch and route until ``stop`` is set; a batch in hand is always finished first."""
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.spec.batch, timeout=fetch_timeout)
            except (TimeoutError, NatsTimeoutError):
                continue  # an empty fetch raises plain asyncio.TimeoutError too (measured)
            except NatsError as exc:
                # A broker restart answers 503 / no responders for a moment: ask again.
                log.warning("fetch failed (%s: %s); retrying", type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                continue
            try:
                stats = await self.route(msgs)
            except Exception as exc:
                # Settling failed midway (the broker went away): whatever was not acked comes
                # back after the ack wait and is routed again under the same message ids.
                log.error(
                    "routing a batch failed (%s: %s); it will be redelivered",
                    type(exc).__name__,
                    exc,
                )
                continue
            log.debug("routed %s", stats)
        return self.stats
