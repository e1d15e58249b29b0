"""``p8fs-run bridge``: follow the SeaweedFS filer and publish its changes to ``p8fs.storage.events``.

The filer keeps a log of every metadata change, each stamped with a nanosecond timestamp
(``ts_ns``), and serves it over gRPC: ``SeaweedFiler.SubscribeMetadata`` replays the log from a
given ``since_ns`` and then follows it (the stubs are generated from SeaweedFS's ``filer.proto``,
see :mod:`p8fs_runner.filer_pb`). The bridge subscribes to it directly, so it needs neither the
``weed`` binary nor any text parsing, and for each change under the path prefix:

1. turns it into the filer's JSON shape (protojson, as ``weed filer.meta.tail`` printed it) and
   parses it (:func:`p8fs_runner.events.parse_event`); directories, multipart parts and
   SeaweedFS's own bookkeeping are skipped; a change the parser refuses is still published
   (raw) so that the router dead-letters it with an ``errors`` row instead of it vanishing here;
2. publishes it to JetStream with ``Nats-Msg-Id`` = the change's stable id (type, paths,
   ``ts_ns``), and waits for the stream's acknowledgement;
3. then records the last handled ``ts_ns`` as its checkpoint in a NATS key-value bucket.

On (re)subscribing it asks for the log from the checkpoint minus a small margin, skips what the
checkpoint already covers, and anything published but not yet checkpointed when it stopped is
dropped by the stream's duplicate window: nothing is missed and nothing is published twice.

The filer stamps a change's ``ts_ns`` before appending it to its log, so under concurrent
writes the log is not strictly in ``ts_ns`` order: a change may follow one stamped a little
later. "Everything up to the checkpoint is done" therefore holds only up to
:data:`OUT_OF_ORDER_NS` before it. The checkpoint also records the (short) ids of the changes
published within that window, and a replay skips a change in the window only if its id is
there; within one subscription nothing is skipped by time at all (each log entry arrives once).

When the stream ends or fails (the filer restarts, the network drops) the bridge subscribes
again with a growing delay, from its checkpoint; an outage is logged once when it starts and
once when it ends, not per retry. The filer sends an empty "idle heartbeat" every few seconds
while the subscriber is caught up; once one has arrived, a stream silent for
:data:`STREAM_IDLE_TIMEOUT` is presumed dead (a half-open connection) and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge

from p8fs.errors import ConfigurationError
from p8fs_runner.events import InvalidEvent, parse_event
from p8fs_runner.pubacks import await_pubacks
from p8fs_runner.settings import RunnerSettings
from p8fs_runner.tiers import EVENTS_STREAM, EVENTS_SUBJECT

if TYPE_CHECKING:  # pragma: no cover
    from grpc.aio import UnaryStreamCall
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

    from p8fs_runner.filer_pb.filer_pb2 import SubscribeMetadataResponse

log = logging.getLogger(__name__)

EVENTS = Counter(
    "p8fs_bridge_events_total",
    "Filer changes handled by the bridge, by outcome "
    "(published, duplicate, ignored, invalid, before_checkpoint).",
    ["outcome"],
)
CHECKPOINT = Gauge(
    "p8fs_bridge_checkpoint_timestamp_seconds",
    "Filer time of the last change the bridge handled (its checkpoint).",
)
FILER_UP = Gauge(
    "p8fs_bridge_filer_subscribed",
    "1 while the bridge holds an open SubscribeMetadata stream to the filer, else 0.",
)

#: SeaweedFS serves gRPC on the filer's HTTP port plus this, unless started with -port.grpc.
FILER_GRPC_PORT_OFFSET = 10000
#: Largest gRPC message accepted: while catching up the filer packs up to 256 changes, each
#: with its chunk list, into one response (gRPC's 4 MiB default is too small for that).
MAX_MESSAGE_BYTES = 1 << 30
#: Seconds without a message after which a stream that has sent idle heartbeats (every 5 s
#: from SeaweedFS 4.x when caught up) is presumed dead and replaced.
STREAM_IDLE_TIMEOUT = 30.0
#: Delay before the first resubscription after a failure, and the most it grows to.
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0
#: Changes queued between the gRPC reader and the publisher (back-pressure on the stream).
QUEUE_SIZE = 2000
#: Largest burst published before a checkpoint is written.
BATCH_SIZE = 500
#: Name this bridge gives the filer (shown in the filer's subscriber list and logs).
CLIENT_NAME = "p8fs-bridge"
#: How far (ns) a change's ``ts_ns`` may lag one logged before it: the filer stamps the time
#: before taking its log lock (measured here with 32 concurrent writers on 2 busy cores: 44 of
#: 3,000 changes out of order, by up to 78 ms; 2 s leaves room for a stalled filer).
OUT_OF_ORDER_NS = 2_000_000_000
#: Hex digits of a message id kept in the checkpoint's window of recent ids.
RECENT_ID_CHARS = 12
#: Most recent ids a checkpoint keeps (~35 bytes each; a KV value must stay under 1 MB). At
#: more than this many changes in OUT_OF_ORDER_NS the window shrinks to the newest ones.
MAX_RECENT = 10_000


@dataclass
class BridgeStats:
    """What one bridge run did (also logged when it stops)."""

    #: Messages the stream accepted as new (the raw invalid ones included).
    published: int = 0
    #: Messages the stream dropped as already seen (same ``Nats-Msg-Id``).
    duplicates: int = 0
    #: Changes with nothing to process (directories, multipart parts, SeaweedFS internals).
    ignored: int = 0
    #: Changes the parser refused, published raw for the router to dead-letter.
    invalid: int = 0
    #: Changes the checkpoint already covers, re-read because of the replay margin.
    skipped_before_checkpoint: int = 0
    #: Publishes that failed and were retried (broker down, stream not created yet).
    publish_retries: int = 0
    #: SubscribeMetadata calls made (the first one and every resubscription).
    subscribe_attempts: int = 0
    #: Streams the filer accepted (answered with at least one message).
    subscriptions: int = 0
    #: Idle heartbeats and progress marks received (liveness only; never checkpointed).
    heartbeats: int = 0
    #: Outages (the filer unreachable or the stream lost), each logged once.
    outages: int = 0
    checkpoint_ns: int | None = None


@dataclass
class _Outgoing:
    """One change on its way out: its filer time, and the message (None: nothing to send)."""

    ts_ns: int | None
    payload: bytes | None
    msg_id: str
    retry: bool = False


@dataclass
class _StreamEnd:
    """Queued by the reader when the stream is over: why (None: the filer closed it cleanly)."""

    error: str | None


def checkpoint_key(path_prefix: str) -> str:
    """The KV key of the checkpoint for one followed prefix (KV keys allow few characters)."""
    return "checkpoint." + hashlib.sha256(path_prefix.encode()).hexdigest()[:16]


def raw_msg_id(document: dict[str, Any]) -> str:
    """A stable id for a change the parser refused. Keys are sorted: the filer re-marshals each
    change when it sends it, and Go writes map fields (``extended``) in random order."""
    text = json.dumps(document, sort_keys=True, ensure_ascii=False)
    return "raw-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def since_ns(checkpoint_ns: int | None, settings: RunnerSettings, now_ns: int | None = None) -> int:
    """Where a subscription starts in the filer's log: the checkpoint minus the replay margin,
    or, with no checkpoint yet, the first-start window before now."""
    if checkpoint_ns is None:
        now_ns = now_ns if now_ns is not None else time.time_ns()
        return max(now_ns - int(settings.bridge_start_ago * 1e9), 0)
    return max(checkpoint_ns - int(settings.bridge_replay_margin * 1e9), 0)


def filer_grpc_address(settings: RunnerSettings) -> tuple[str, str]:
    """``(host:port, where it came from)`` of the filer's gRPC API.

    ``P8FS_BRIDGE_FILER_GRPC`` when set; otherwise ``P8FS_SEAWEEDFS_FILER`` (``host:port`` or
    ``http://host:port``) with the port + 10000, SeaweedFS's own rule. The second element names
    the setting(s) for error messages.
    """
    if settings.bridge_filer_grpc:
        host, port = _host_port(settings.bridge_filer_grpc, "P8FS_BRIDGE_FILER_GRPC")
        return f"{host}:{port}", "P8FS_BRIDGE_FILER_GRPC"
    if not settings.seaweedfs_filer:
        raise ConfigurationError(
            "the bridge needs the filer address: set P8FS_SEAWEEDFS_FILER (host:port of the "
            "filer; its gRPC API is on port + 10000) or P8FS_BRIDGE_FILER_GRPC (host:grpc-port)"
        )
    host, port = _host_port(settings.seaweedfs_filer, "P8FS_SEAWEEDFS_FILER")
    return (
        f"{host}:{port + FILER_GRPC_PORT_OFFSET}",
        f"P8FS_SEAWEEDFS_FILER port + {FILER_GRPC_PORT_OFFSET}; set P8FS_BRIDGE_FILER_GRPC if the "
        "filer's gRPC port differs",
    )


def _host_port(value: str, variable: str) -> tuple[str, int]:
    text = value.strip()
    try:
        parts = urlsplit(text if "://" in text else "//" + text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{variable}={value!r} is not host:port ({exc})") from exc
    if not host or port is None:
        raise ConfigurationError(f"{variable}={value!r} is not host:port")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return host, port


def change_document(response: SubscribeMetadataResponse) -> dict[str, Any]:
    """One change as the filer's protojson shape (what :func:`parse_event` reads).

    Chunk lists and inlined content are dropped first: nothing downstream reads them, and a
    large file's chunk list would make every message (and a dead letter) needlessly big.
    """
    from google.protobuf.json_format import MessageToDict

    notification = response.event_notification
    for entry_field in ("old_entry", "new_entry"):
        if notification.HasField(entry_field):
            entry = getattr(notification, entry_field)
            entry.ClearField("chunks")
            entry.ClearField("content")
    return MessageToDict(response)


class FilerBridge:
    """Follows one filer path prefix into ``p8fs.storage.events``; see the module docstring."""

    def __init__(self, settings: RunnerSettings, nc: Client) -> None:
        self.address, self.address_source = filer_grpc_address(settings)
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.kv: KeyValue | None = None
        self.key = checkpoint_key(settings.bridge_path_prefix)
        self.stats = BridgeStats()
        # The filer tells subscriptions apart by (client_id, client_epoch): a resubscription
        # with a higher epoch replaces the old stream instead of being refused as a duplicate.
        self._client_id = random.randint(1, 2**31 - 1)
        self._epoch = 0
        self._subscribed = False
        self._heartbeats_seen = False
        self._last_message = 0.0
        self._outage_since: float | None = None
        self._outage_attempts = 0
        #: The checkpoint when the current subscription started: changes at or before it are
        #: replays (see the module docstring); None on a first start.
        self._replay_until: int | None = None
        #: Short ids (and ``ts_ns``) of changes published within OUT_OF_ORDER_NS of the newest.
        self._recent: dict[str, int] = {}

    def following(self) -> bool:
        """Whether a SubscribeMetadata stream is open and alive (for ``/readyz``)."""
        if not self._subscribed:
            return False
        if self._heartbeats_seen:
            return time.monotonic() - self._last_message < STREAM_IDLE_TIMEOUT
        return True

    # -- checkpoint ---------------------------------------------------------------------

    async def open_checkpoint(self) -> int | None:
        from nats.js.errors import BucketNotFoundError, KeyNotFoundError

        from p8fs_runner.topology import ensure_replicas

        bucket = self.settings.bridge_kv_bucket
        replicas = self.settings.nats_replicas
        try:
            self.kv = await self.js.key_value(bucket)
        except BucketNotFoundError:
            # As many copies as the queues: a checkpoint lost with its node would make the
            # bridge replay P8FS_BRIDGE_START_AGO of history again.
            self.kv = await self.js.create_key_value(
                bucket=bucket,
                history=1,
                description="p8fs event bridge checkpoints",
                replicas=replicas,
            )
        else:
            await ensure_replicas(self.js, f"KV_{bucket}", replicas)
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            return None
        try:
            value = json.loads(entry.value or b"{}")
            checkpoint = int(value["ts_ns"])
            recent = {str(short): int(ts) for short, ts in value.get("recent", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("bridge: unreadable checkpoint %r ignored", entry.value)
            return None
        self._recent = recent
        self.stats.checkpoint_ns = checkpoint
        return checkpoint

    async def save_checkpoint(self, ts_ns: int) -> None:
        assert self.kv is not None
        oldest = ts_ns - OUT_OF_ORDER_NS
        recent = [(ts, short) for short, ts in self._recent.items() if ts > oldest]
        if len(recent) > MAX_RECENT:
            recent = sorted(recent)[-MAX_RECENT:]
        self._recent = {short: ts for ts, short in recent}
        value = {
            "ts_ns": ts_ns,
            "recent": self._recent,
            "path_prefix": self.settings.bridge_path_prefix,
            "filer": self.address,
            "saved_at_ns": time.time_ns(),
        }
        await self.kv.put(self.key, json.dumps(value).encode())
        self.stats.checkpoint_ns = ts_ns
        CHECKPOINT.set(ts_ns / 1e9)

    # -- publishing ---------------------------------------------------------------------

    def _count(self, ack: Any) -> None:
        if ack.duplicate:
            self.stats.duplicates += 1
            EVENTS.labels("duplicate").inc()
        else:
            self.stats.published += 1
            EVENTS.labels("published").inc()

    async def publish(self, payload: bytes, msg_id: str, stop: asyncio.Event) -> bool:
        """Publish until the stream acknowledges (a broker restart is waited out).
        Returns False only when asked to stop before it succeeded."""
        delay = 0.2
        while True:
            try:
                ack = await self.js.publish(
                    EVENTS_SUBJECT,
                    payload,
                    timeout=5.0,
                    stream=EVENTS_STREAM,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except Exception as exc:
                self.stats.publish_retries += 1
                log.warning(
                    "bridge: publish to %s failed (%s: %s); is the router running (it creates "
                    "the stream %s)? retrying in %.1f s",
                    EVENTS_SUBJECT,
                    type(exc).__name__,
                    exc,
                    EVENTS_STREAM,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return False
                delay = min(delay * 2, 10.0)
                continue
            self._count(ack)
            return True

    def prepare(self, document: dict[str, Any]) -> _Outgoing:
        """Decide what one change becomes: skipped, ignored, or a message to publish."""
        ts_ns: int | None = None
        with contextlib.suppress(TypeError, ValueError):
            raw_ts = document.get("tsNs")
            ts_ns = int(raw_ts) if raw_ts is not None else None
        replay = (
            self._replay_until is not None and ts_ns is not None and ts_ns <= self._replay_until
        )
        if replay and ts_ns is not None and ts_ns <= (self._replay_until or 0) - OUT_OF_ORDER_NS:
            return self._skipped()
        try:
            event = parse_event(document)
        except InvalidEvent as exc:
            text = json.dumps(document, ensure_ascii=False)
            item = _Outgoing(ts_ns, text.encode(), raw_msg_id(document))
            if replay and item.msg_id[:RECENT_ID_CHARS] in self._recent:
                return self._skipped()
            log.warning("bridge: invalid filer event, publishing it for dead-lettering: %s", exc)
            self.stats.invalid += 1
            EVENTS.labels("invalid").inc()
            return item
        if event is None:
            self.stats.ignored += 1
            EVENTS.labels("ignored").inc()
            return _Outgoing(ts_ns, None, "")
        item = _Outgoing(ts_ns, event.to_json(), event.dedupe_id())
        if replay and item.msg_id[:RECENT_ID_CHARS] in self._recent:
            return self._skipped()
        return item

    def start_replay(self, checkpoint: int | None) -> None:
        """Begin a subscription from ``checkpoint``: the changes at or before it that arrive
        are replays, skipped when the checkpoint covers them (see the module docstring)."""
        self._replay_until = checkpoint

    def _skipped(self) -> _Outgoing:
        self.stats.skipped_before_checkpoint += 1
        EVENTS.labels("before_checkpoint").inc()
        return _Outgoing(None, None, "")

    async def publish_batch(
        self, documents: list[dict[str, Any]], stop: asyncio.Event
    ) -> int | None:
        """Publish a burst of changes pipelined (acks awaited together, order kept by the one
        connection); a failed one is retried alone until it succeeds. Returns the newest
        ``ts_ns`` handled without a gap, i.e. what may be checkpointed."""
        outgoing = [self.prepare(document) for document in documents]
        futures: list[asyncio.Future[Any] | None] = []
        for item in outgoing:
            if item.payload is None:
                futures.append(None)
                continue
            try:
                future = await self.js.publish_async(
                    EVENTS_SUBJECT,
                    item.payload,
                    stream=EVENTS_STREAM,
                    headers={"Nats-Msg-Id": item.msg_id},
                )
            except Exception:
                future = None
                item.retry = True
            futures.append(future)
        waiting = [f for f in futures if f is not None]
        acks = iter(await await_pubacks(waiting))  # one deadline for the whole burst
        newest: int | None = None
        for item, future in zip(outgoing, futures, strict=True):
            if future is not None:
                ack = next(acks)
                if isinstance(ack, BaseException):
                    item.retry = True
                else:
                    self._count(ack)
            if item.retry and not await self.publish(item.payload or b"", item.msg_id, stop):
                break  # stopping: everything from here on is replayed next time
            if item.ts_ns is None:
                continue
            if item.payload is not None:
                self._recent[item.msg_id[:RECENT_ID_CHARS]] = item.ts_ns
            if newest is None or item.ts_ns > newest:
                newest = item.ts_ns
        return newest

    # -- following the filer ------------------------------------------------------------

    async def _read(
        self,
        call: UnaryStreamCall[Any, SubscribeMetadataResponse],
        queue: asyncio.Queue[dict[str, Any] | _StreamEnd],
    ) -> None:
        """Read the stream into ``queue``: each change as a document, then a :class:`_StreamEnd`.

        A response may carry a batch (the envelope's own change, then ``events``) when the
        filer is catching up; one with no change in it is a heartbeat or a progress mark.
        """
        import grpc

        try:
            while True:
                timeout = STREAM_IDLE_TIMEOUT if self._heartbeats_seen else None
                try:
                    response = await asyncio.wait_for(call.read(), timeout=timeout)
                except TimeoutError:
                    await queue.put(
                        _StreamEnd(f"no message (not even a heartbeat) for {timeout:.0f} s")
                    )
                    return
                if response is grpc.aio.EOF:
                    await queue.put(_StreamEnd(None))
                    return
                self._last_message = time.monotonic()
                if not self._subscribed:
                    self._subscribed = True
                    self.stats.subscriptions += 1
                    FILER_UP.set(1)
                    self._recovered()
                for change in (response, *response.events):
                    notification = change.event_notification
                    if notification.HasField("old_entry") or notification.HasField("new_entry"):
                        await queue.put(change_document(change))
                    else:
                        self.stats.heartbeats += 1
                        self._heartbeats_seen = self._heartbeats_seen or change.ts_ns > 0
        except grpc.aio.AioRpcError as exc:
            await queue.put(_StreamEnd(f"{exc.code().name}: {exc.details()}"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a message we cannot convert: resubscribe, do not die
            log.exception("bridge: unexpected error reading the filer stream")
            await queue.put(_StreamEnd(f"{type(exc).__name__}: {exc}"))

    async def _pump(
        self,
        queue: asyncio.Queue[dict[str, Any] | _StreamEnd],
        checkpoint: int | None,
        stop: asyncio.Event,
    ) -> tuple[int | None, _StreamEnd | None]:
        """Publish what the stream delivers; checkpoint after each burst. Returns the
        checkpoint and how the stream ended (None: asked to stop)."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                getting = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getting, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if getting not in done:
                    getting.cancel()
                    return checkpoint, None
                batch = [getting.result()]
                while not queue.empty() and len(batch) < BATCH_SIZE:
                    batch.append(queue.get_nowait())
                ends = [item for item in batch if isinstance(item, _StreamEnd)]
                documents = [item for item in batch if not isinstance(item, _StreamEnd)]
                newest = await self.publish_batch(documents, stop)
                if newest is not None and (checkpoint is None or newest > checkpoint):
                    await self.save_checkpoint(newest)
                    checkpoint = newest
                if stop.is_set():
                    return checkpoint, None
                if ends:
                    return checkpoint, ends[0]
        finally:
            stopping.cancel()

    async def _follow(
        self, checkpoint: int | None, stop: asyncio.Event
    ) -> tuple[int | None, _StreamEnd | None]:
        """One subscription: from the checkpoint until the stream ends or ``stop`` is set."""
        import grpc

        from p8fs_runner.filer_pb import filer_pb2, filer_pb2_grpc

        self._epoch += 1
        self.start_replay(checkpoint)
        self._subscribed = False
        self._heartbeats_seen = False
        self.stats.subscribe_attempts += 1
        request = filer_pb2.SubscribeMetadataRequest(
            client_name=CLIENT_NAME,
            path_prefix=self.settings.bridge_path_prefix,
            since_ns=since_ns(checkpoint, self.settings),
            client_id=self._client_id,
            client_epoch=self._epoch,
            client_supports_batching=True,
            client_supports_idle_heartbeat=True,
        )
        # A fresh channel per subscription: grpc's own reconnect backoff (up to two minutes)
        # would otherwise decide when a restarted filer is seen again, not ours.
        channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 0),
            ],
        )
        queue: asyncio.Queue[dict[str, Any] | _StreamEnd] = asyncio.Queue(maxsize=QUEUE_SIZE)
        call = filer_pb2_grpc.SeaweedFilerStub(channel).SubscribeMetadata(request)
        reader = asyncio.create_task(self._read(call, queue))
        try:
            return await self._pump(queue, checkpoint, stop)
        finally:
            self._subscribed = False
            FILER_UP.set(0)
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await channel.close()

    def _lost(self, end: _StreamEnd, was_subscribed: bool) -> None:
        """Log an outage once, when it starts; later failed attempts only at debug level."""
        reason = end.error or "the filer closed the stream"
        if self._outage_since is not None:
            self._outage_attempts += 1
            log.debug("bridge: filer at %s still unavailable (%s)", self.address, reason)
            return
        self._outage_since = time.monotonic()
        self._outage_attempts = 1
        self.stats.outages += 1
        if was_subscribed:
            log.warning(
                "bridge: the filer's SubscribeMetadata stream at %s ended (%s); resubscribing "
                "with backoff from the checkpoint",
                self.address,
                reason,
            )
        else:
            log.error(
                "bridge: cannot subscribe to the filer's gRPC API at %s (%s): %s; retrying "
                "with backoff until it answers",
                self.address,
                self.address_source,
                reason,
            )

    def _recovered(self) -> None:
        if self._outage_since is None:
            log.info(
                "bridge: following %s on the filer at %s",
                self.settings.bridge_path_prefix,
                self.address,
            )
            return
        log.warning(
            "bridge: following the filer at %s again after %.1f s (%d failed attempts); "
            "resumed from the checkpoint",
            self.address,
            time.monotonic() - self._outage_since,
            self._outage_attempts,
        )
        self._outage_since = None
        self._outage_attempts = 0

    async def run(self, stop: asyncio.Event | None = None) -> BridgeStats:
        """Follow the filer until ``stop`` is set, resubscribing (with backoff) when the stream
        ends; each subscription resumes from the checkpoint."""
        stop = stop or asyncio.Event()
        checkpoint = await self.open_checkpoint()
        log.info(
            "bridge: subscribing to %s on the filer at %s from %s",
            self.settings.bridge_path_prefix,
            self.address,
            "the checkpoint" if checkpoint is not None else "the first-start window",
        )
        delay = RECONNECT_MIN
        while not stop.is_set():
            subscriptions = self.stats.subscriptions
            checkpoint, end = await self._follow(checkpoint, stop)
            if stop.is_set() or end is None:
                break
            was_subscribed = self.stats.subscriptions > subscriptions
            if was_subscribed:
                delay = RECONNECT_MIN
            self._lost(end, was_subscribed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, RECONNECT_MAX)
        log.info("bridge stopped: %s", self.stats)
        return self.stats


async def run_bridge(
    settings: RunnerSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
    metrics_port: int | None = None,
) -> BridgeStats:
    """Connect to NATS and run the bridge until ``stop`` is set (the CLI sets it on SIGTERM).

    Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics_port`` (default
    ``P8FS_METRICS_PORT``); ready means connected to NATS with a live SubscribeMetadata stream.
    """
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.metrics import start_probe_server

    settings = settings or RunnerSettings()
    filer_grpc_address(settings)  # a configuration error before connecting to anything
    nc = await connect_nats(settings, name="p8fs-bridge")
    bridge = FilerBridge(settings, nc)

    async def ready() -> bool | str:
        if not nc.is_connected:
            return "not connected to NATS"
        if not bridge.following():
            return (
                f"no live SubscribeMetadata stream from the filer at {bridge.address} "
                f"({bridge.address_source})"
            )
        return True

    port = settings.metrics_port if metrics_port is None else metrics_port
    probes = await start_probe_server(ready, port, settings.metrics_host)
    try:
        return await bridge.run(stop)
    finally:
        if probes is not None:
            await probes.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
