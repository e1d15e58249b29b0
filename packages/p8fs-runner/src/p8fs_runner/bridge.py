"""``p8fs-run bridge``: follow the SeaweedFS filer and publish its changes to ``p8fs.storage.events``.

The filer keeps a log of every metadata change, each stamped with a nanosecond timestamp
(``tsNs``); ``weed filer.meta.tail -timeAgo=D`` replays that log from ``now - D`` and then
follows it. The bridge runs it as a subprocess and, for each change under the path prefix:

1. parses it (:func:`p8fs_runner.events.parse_event`); directories, multipart parts and
   SeaweedFS's own bookkeeping are skipped; a change that cannot be parsed is still published
   (raw) so that the router dead-letters it with an ``errors`` row instead of it vanishing here;
2. publishes it to JetStream with ``Nats-Msg-Id`` = the change's stable id (type, paths,
   ``tsNs``), and waits for the stream's acknowledgement;
3. then records the last handled ``tsNs`` as its checkpoint in a NATS key-value bucket.

On restart it replays from the checkpoint (minus a small margin for clock skew), skips what the
checkpoint already covers, and anything published but not yet checkpointed when it stopped is
dropped by the stream's duplicate window: nothing is missed and nothing is published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from p8fs.errors import ConfigurationError
from p8fs_runner.events import InvalidEvent, parse_event
from p8fs_runner.settings import RunnerSettings
from p8fs_runner.tiers import EVENTS_STREAM, EVENTS_SUBJECT

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

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

#: Longest line ``weed filer.meta.tail`` may print (small files' content is inlined in entries).
MAX_LINE = 16 * 1024 * 1024
#: Seconds a burst of pipelined publishes may wait for its acknowledgements.
ACK_TIMEOUT = 10.0
#: Bytes read from the tail's output at a time.
READ_CHUNK = 256 * 1024
#: Largest document accumulated before it is declared broken and skipped.
MAX_DOCUMENT = 32 * 1024 * 1024
#: Seconds ``filer.meta.tail`` must have run before the bridge reports itself ready.
FOLLOWING_AFTER = 2.0


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
    #: Changes at or before the checkpoint, re-read because of the replay margin.
    skipped_before_checkpoint: int = 0
    #: Publishes that failed and were retried (broker down, stream not created yet).
    publish_retries: int = 0
    tail_starts: int = 0
    checkpoint_ns: int | None = None


class MetaTailDecoder:
    """Split ``weed filer.meta.tail`` output into JSON documents.

    It prints each change as indented JSON: ``{`` alone on a line, the fields indented, ``}``
    alone on a line (measured on SeaweedFS 4.48). A compact one-line object is accepted too, in
    case a version prints JSON lines. A block that does not parse is returned as text so the
    caller can publish it for the router to dead-letter.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0

    def feed_line(self, line: str) -> Iterator[dict[str, Any] | str]:
        stripped = line.rstrip("\r\n")
        if not self._lines:
            if not stripped.strip():
                return
            if stripped.startswith("{") and stripped.endswith("}") and len(stripped) > 2:
                try:
                    document = json.loads(stripped)
                except ValueError:
                    pass
                else:
                    if isinstance(document, dict):
                        yield document
                        return
        self._lines.append(stripped)
        self._size += len(stripped)
        if stripped == "}" or self._size > MAX_DOCUMENT:
            text = "\n".join(self._lines)
            self._lines, self._size = [], 0
            try:
                document = json.loads(text)
            except ValueError:
                yield text
                return
            yield document if isinstance(document, dict) else text


@dataclass
class _Outgoing:
    """One change on its way out: its filer time, and the message (None: nothing to send)."""

    ts_ns: int | None
    payload: bytes | None
    msg_id: str
    retry: bool = False


def checkpoint_key(path_prefix: str) -> str:
    """The KV key of the checkpoint for one followed prefix (KV keys allow few characters)."""
    return "checkpoint." + hashlib.sha256(path_prefix.encode()).hexdigest()[:16]


def raw_msg_id(text: str) -> str:
    return "raw-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def time_ago(checkpoint_ns: int | None, settings: RunnerSettings, now_ns: int | None = None) -> str:
    """The ``-timeAgo`` duration for a (re)start: from the checkpoint minus the margin, or the
    first-start window when there is no checkpoint yet."""
    if checkpoint_ns is None:
        return f"{int(settings.bridge_start_ago * 1e9)}ns"
    now_ns = now_ns if now_ns is not None else time.time_ns()
    margin = int(settings.bridge_replay_margin * 1e9)
    return f"{max(now_ns - checkpoint_ns + margin, margin, 1)}ns"


class FilerBridge:
    """Follows one filer path prefix into ``p8fs.storage.events``; see the module docstring."""

    def __init__(self, settings: RunnerSettings, nc: Client) -> None:
        if not settings.seaweedfs_filer:
            raise ConfigurationError(
                "the bridge needs the filer address: set P8FS_SEAWEEDFS_FILER (host:port)"
            )
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.kv: KeyValue | None = None
        self.key = checkpoint_key(settings.bridge_path_prefix)
        self.stats = BridgeStats()
        self._process: asyncio.subprocess.Process | None = None
        self._process_started = 0.0

    def following(self) -> bool:
        """Whether ``filer.meta.tail`` is running and has outlived a failed connection (for
        ``/readyz``): it exits within milliseconds when the filer is unreachable."""
        return (
            self._process is not None
            and self._process.returncode is None
            and time.monotonic() - self._process_started > FOLLOWING_AFTER
        )

    # -- checkpoint ---------------------------------------------------------------------

    async def open_checkpoint(self) -> int | None:
        from nats.js.errors import BucketNotFoundError, KeyNotFoundError

        bucket = self.settings.bridge_kv_bucket
        try:
            self.kv = await self.js.key_value(bucket)
        except BucketNotFoundError:
            self.kv = await self.js.create_key_value(
                bucket=bucket, history=1, description="p8fs event bridge checkpoints"
            )
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            return None
        try:
            value = json.loads(entry.value or b"{}")
            checkpoint = int(value["ts_ns"])
        except (ValueError, KeyError, TypeError):
            log.warning("bridge: unreadable checkpoint %r ignored", entry.value)
            return None
        self.stats.checkpoint_ns = checkpoint
        return checkpoint

    async def save_checkpoint(self, ts_ns: int) -> None:
        assert self.kv is not None
        value = {
            "ts_ns": ts_ns,
            "path_prefix": self.settings.bridge_path_prefix,
            "filer": self.settings.seaweedfs_filer,
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

    def prepare(self, document: dict[str, Any] | str, checkpoint: int | None) -> _Outgoing:
        """Decide what one change becomes: skipped, ignored, or a message to publish."""
        ts_ns: int | None = None
        if isinstance(document, dict):
            raw_ts = document.get("tsNs")
            with contextlib.suppress(TypeError, ValueError):
                ts_ns = int(raw_ts) if raw_ts is not None else None
            if ts_ns is not None and checkpoint is not None and ts_ns <= checkpoint:
                self.stats.skipped_before_checkpoint += 1
                EVENTS.labels("before_checkpoint").inc()
                return _Outgoing(None, None, "")
        try:
            event = parse_event(document)
        except InvalidEvent as exc:
            text = document if isinstance(document, str) else json.dumps(document)
            log.warning("bridge: invalid filer event, publishing it for dead-lettering: %s", exc)
            self.stats.invalid += 1
            EVENTS.labels("invalid").inc()
            return _Outgoing(ts_ns, text.encode(), raw_msg_id(text))
        if event is None:
            self.stats.ignored += 1
            EVENTS.labels("ignored").inc()
            return _Outgoing(ts_ns, None, "")
        return _Outgoing(ts_ns, event.to_json(), event.dedupe_id())

    async def publish_batch(
        self, documents: list[dict[str, Any] | str], checkpoint: int | None, stop: asyncio.Event
    ) -> int | None:
        """Publish a burst of changes pipelined (acks awaited together, order kept by the one
        connection); a failed one is retried alone until it succeeds. Returns the newest
        ``tsNs`` handled without a gap, i.e. what may be checkpointed."""
        outgoing = [self.prepare(document, checkpoint) for document in documents]
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
        if waiting:  # one deadline for the whole burst, not one per message
            await asyncio.wait(waiting, timeout=ACK_TIMEOUT)
        newest: int | None = None
        for item, future in zip(outgoing, futures, strict=True):
            if future is not None:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._count(future.result())
                else:
                    future.cancel()
                    item.retry = True
            if item.retry and not await self.publish(item.payload or b"", item.msg_id, stop):
                break  # stopping: everything from here on is replayed next time
            if item.ts_ns is not None and (newest is None or item.ts_ns > newest):
                newest = item.ts_ns
        return newest

    # -- following the filer ------------------------------------------------------------

    async def _start_tail(self, checkpoint: int | None) -> asyncio.subprocess.Process:
        from p8fs_runner.embedded import weed_binary

        argv = [
            str(weed_binary()),
            "filer.meta.tail",
            f"-filer={self.settings.seaweedfs_filer}",
            f"-pathPrefix={self.settings.bridge_path_prefix}",
            f"-timeAgo={time_ago(checkpoint, self.settings)}",
        ]
        log.info(
            "bridge: following %s%s from %s",
            self.settings.seaweedfs_filer,
            self.settings.bridge_path_prefix,
            "the checkpoint" if checkpoint is not None else "the first-start window",
        )
        self.stats.tail_starts += 1
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )

    async def _read(
        self, process: asyncio.subprocess.Process, queue: asyncio.Queue[dict[str, Any] | str | None]
    ) -> None:
        """Read the tail's output in large chunks (a change is ~60 printed lines: one await per
        line would cost more than the publishing) and queue each decoded document."""
        decoder = MetaTailDecoder()
        assert process.stdout is not None
        pending = b""
        try:
            while True:
                chunk = await process.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                pending += chunk
                lines = pending.split(b"\n")
                pending = lines.pop()
                if len(pending) > MAX_LINE:
                    log.warning("bridge: dropping an over-long output line from the tail")
                    pending = b""
                for line in lines:
                    for document in decoder.feed_line(line.decode("utf-8", "replace")):
                        await queue.put(document)
            if pending:
                for document in decoder.feed_line(pending.decode("utf-8", "replace")):
                    await queue.put(document)
        finally:
            await queue.put(None)

    @staticmethod
    async def _log_stderr(process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while True:
            line = await process.stderr.readline()
            if not line:
                return
            log.info("weed filer.meta.tail: %s", line.decode("utf-8", "replace").rstrip())

    async def run(self, stop: asyncio.Event | None = None) -> BridgeStats:
        """Follow the filer until ``stop`` is set; restarts the tail if it exits."""
        stop = stop or asyncio.Event()
        checkpoint = await self.open_checkpoint()
        delay = 1.0
        while not stop.is_set():
            process = await self._start_tail(checkpoint)
            self._process = process
            started = self._process_started = time.monotonic()
            queue: asyncio.Queue[dict[str, Any] | str | None] = asyncio.Queue(maxsize=1000)
            reader = asyncio.create_task(self._read(process, queue))
            errors = asyncio.create_task(self._log_stderr(process))
            try:
                checkpoint = await self._pump(queue, checkpoint, stop)
            finally:
                await self._stop_tail(process)
                reader.cancel()
                errors.cancel()
                await asyncio.gather(reader, errors, return_exceptions=True)
            if stop.is_set():
                break
            # The tail ended by itself (filer restarting, unreachable): retry with backoff.
            delay = 1.0 if time.monotonic() - started > 30 else min(delay * 2, 30.0)
            log.warning(
                "bridge: filer.meta.tail exited with %s; restarting in %.0f s",
                process.returncode,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        log.info("bridge stopped: %s", self.stats)
        return self.stats

    async def _pump(
        self,
        queue: asyncio.Queue[dict[str, Any] | str | None],
        checkpoint: int | None,
        stop: asyncio.Event,
    ) -> int | None:
        """Publish what the tail prints; checkpoint after each burst. Returns the checkpoint."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                getting = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getting, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if getting not in done:
                    getting.cancel()
                    return checkpoint
                batch = [getting.result()]
                while not queue.empty() and len(batch) < 500:
                    batch.append(queue.get_nowait())
                ended = None in batch
                documents = [d for d in batch if d is not None]
                newest = await self.publish_batch(documents, checkpoint, stop)
                if newest is not None and (checkpoint is None or newest > checkpoint):
                    await self.save_checkpoint(newest)
                    checkpoint = newest
                if ended or stop.is_set():
                    return checkpoint
        finally:
            stopping.cancel()

    async def _stop_tail(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()
                await process.wait()


async def run_bridge(
    settings: RunnerSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
    metrics_port: int | None = None,
) -> BridgeStats:
    """Connect to NATS and run the bridge until ``stop`` is set (the CLI sets it on SIGTERM).

    Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics_port`` (default
    ``P8FS_METRICS_PORT``); ready means connected to NATS with ``filer.meta.tail`` running.
    """
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.metrics import start_probe_server

    settings = settings or RunnerSettings()
    nc = await connect_nats(settings, name="p8fs-bridge")
    bridge = FilerBridge(settings, nc)

    async def ready() -> bool:
        return bool(nc.is_connected) and bridge.following()

    port = settings.metrics_port if metrics_port is None else metrics_port
    probes = await start_probe_server(ready, port, settings.metrics_host)
    try:
        return await bridge.run(stop)
    finally:
        if probes is not None:
            await probes.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
