"""A tier worker: pull storage events from its durable consumer, process them, settle each one.

Settlement rules (the original system broke each of them):

* **ack only after the database commit** (the file's rows and its DONE ``jobs`` row, in one
  transaction);
* **heartbeat** every message this worker holds with ``in_progress()`` at a third of the ack
  wait, so a slow file is never handed to a second worker, whatever its size;
* **transient** failure (database, S3, broker): ``nak`` with the tier's growing delay, so a
  database outage does not burn every retry in a second;
* **permanent** failure, or a transient one on the last allowed delivery: ``errors`` row, dead
  letter with the reason (confirmed by the broker), then ``term``;
* **stop** (SIGTERM/SIGINT): fetch nothing more, let files in progress finish for up to a grace
  period, and nak (without delay) what is left, so nothing waits for an ack-wait timeout.

The worker holds at most ``concurrency + prefetch`` messages: ``concurrency`` being processed and
a small prefetch (small tier only) so the next file is ready when a slot frees up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from p8fs_runner import metrics
from p8fs_runner.dlq import dead_letter
from p8fs_runner.router import ErrorSink, record_error

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from p8fs.models import Job
    from p8fs_runner.events import StorageEvent
    from p8fs_runner.tiers import QueueSpec

log = logging.getLogger(__name__)

#: ``jobs.job_type`` of a file's processing.
JOB_TYPE = "file_processing"
#: Seconds to wait before fetching again after the broker refused a fetch (restarting).
BROKER_RETRY = 0.5
#: Seconds between attempts of a set-up (``ready``) that failed transiently.
SETUP_RETRY = 1.0
#: A file still in progress after this many seconds gets its ``jobs`` row written RUNNING.
#: Most files finish sooner, and a RUNNING row that lives for milliseconds costs a database
#: write per file and tells nobody anything (like Celery's ``task_track_started``, off there).
RUNNING_AFTER = 1.0
#: Outcomes (results, failures) a worker keeps for its caller: the most recent ones only.
RECENT_OUTCOMES = 1000


class EventProcessor(Protocol):
    """Does the work for one event and returns what goes into the job's ``result``.

    Raises a :mod:`p8fs.errors` type; :func:`p8fs.errors.is_permanent` decides the settlement.
    ``recorded`` on the exception (set by the pipeline) means an ``errors`` row already exists.
    """

    async def __call__(self, event: StorageEvent, job: Job | None = None) -> dict[str, Any]:
        """``job``, when given, may be committed DONE together with the file's rows; the
        returned ``job_done`` says whether it was (then the worker writes no DONE of its own)."""
        ...


JobSink = Callable[["Job"], Awaitable[Any]]


def job_id_for(msg: Msg) -> str:
    """One ``jobs`` row per event, whatever the number of deliveries.

    The router publishes with a ``Nats-Msg-Id`` derived from the source event; that id (or the
    stream sequence, for events published straight to a tier) is stable across redeliveries.
    """
    from p8fs.ids import stable_id

    headers = msg.headers or {}
    source = headers.get("Nats-Msg-Id") or f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    return stable_id("job", JOB_TYPE, source)


def _recent() -> deque[dict[str, Any]]:
    return deque(maxlen=RECENT_OUTCOMES)


@dataclass
class WorkerStats:
    """What a worker did (returned by :meth:`Worker.run`, printed by the self-test).

    The counters cover the whole run; ``results`` and ``failures`` keep the latest
    :data:`RECENT_OUTCOMES` entries only, so a worker that runs for weeks does not grow.
    """

    acked: int = 0
    nakked: int = 0
    dead_lettered: int = 0
    ignored: int = 0
    interrupted: int = 0
    results: deque[dict[str, Any]] = field(default_factory=_recent)
    #: One entry per failed delivery: uri, reason, code, permanent (dead-lettered) or not.
    failures: deque[dict[str, Any]] = field(default_factory=_recent)


class Worker:
    """Processes one queue's messages with bounded concurrency and explicit settlement."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: QueueSpec,
        processor: EventProcessor,
        *,
        errors: ErrorSink | None = None,
        jobs: JobSink | None = None,
        prefetch: int | None = None,
        grace: float = 25.0,
        process_name: str | None = None,
        running_after: float = RUNNING_AFTER,
    ) -> None:
        self.js = js
        self.spec = spec
        self.processor = processor
        self.errors = errors
        self.jobs = jobs
        self.prefetch = (
            (spec.batch if spec.concurrency < spec.batch else 0) if prefetch is None else prefetch
        )
        self.grace = grace
        self.running_after = running_after
        self.process_name = process_name or f"storage-worker-{spec.name}"
        self.stats = WorkerStats()
        self._semaphore = asyncio.Semaphore(spec.concurrency)
        self._held: dict[int, Msg] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        #: Set once the first fetch request has been sent (start-time measurement).
        self.first_fetch_at: float | None = None

    @property
    def max_held(self) -> int:
        return self.spec.concurrency + self.prefetch

    # -- the fetch loop -------------------------------------------------------------------
    async def run(
        self,
        sub: Any,
        stop: asyncio.Event,
        *,
        fetch_timeout: float = 1.0,
        max_messages: int | None = None,
        ready: Callable[[], Awaitable[Any]] | None = None,
    ) -> WorkerStats:
        """Fetch and process until ``stop`` is set (or ``max_messages`` were settled).

        ``ready`` is awaited before the first message is processed but after the first fetch
        is sent, so slow set-up (a database schema check) overlaps the wait for messages.
        """
        self._stopping = False  # a worker may be run again after a stop (the self-test does)
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="p8fs-heartbeat")
        ready_task = asyncio.ensure_future(ready()) if ready is not None else None
        fetched = 0
        try:
            while not stop.is_set():
                if max_messages is not None and fetched >= max_messages:
                    break
                room = self.max_held - len(self._held)
                if room <= 0:
                    self._slot_freed.clear()
                    await _wait_first(self._slot_freed.wait(), stop.wait())
                    continue
                want = min(self.spec.batch, room)
                if max_messages is not None:
                    want = min(want, max_messages - fetched)
                if self.first_fetch_at is None:
                    self.first_fetch_at = time.monotonic()
                try:
                    msgs = await sub.fetch(want, timeout=fetch_timeout)
                except (TimeoutError, NatsTimeoutError):
                    continue  # an empty fetch may raise either (measured)
                except NatsError as exc:
                    # A broker restart: JetStream answers 503 or nobody answers for a moment
                    # after the reconnect (measured). Not a reason to exit; ask again shortly.
                    log.warning("fetch failed (%s: %s); retrying", type(exc).__name__, exc)
                    await _wait_first(asyncio.sleep(BROKER_RETRY), stop.wait())
                    continue
                if ready_task is not None:
                    try:
                        await ready_task
                    except BaseException as exc:
                        for msg in msgs:  # set-up failed: give the messages straight back
                            await self._release(msg, "nak")
                        if not _heals(exc) or ready is None:
                            raise
                        # A worker (re)started while the database is down must wait for it,
                        # not exit and crash-loop (found by tests/reliability/test_load_faults).
                        log.warning("set-up failed (%s); retrying", exc)
                        await _wait_first(asyncio.sleep(SETUP_RETRY), stop.wait())
                        ready_task = asyncio.ensure_future(ready())
                        continue
                    ready_task = None
                for msg in msgs:
                    fetched += 1
                    self._held[id(msg)] = msg
                    task = asyncio.create_task(self._process(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if stop.is_set():
                await self._drain()
            elif self._tasks:  # max_messages reached: let everything finish
                await asyncio.wait(set(self._tasks))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if ready_task is not None:
                ready_task.cancel()
        return self.stats

    async def _drain(self) -> None:
        """Stop: finish what is being processed within the grace period, nak the rest now."""
        self._stopping = True
        if not self._tasks:
            return
        log.info("stopping: waiting up to %.0fs for %d file(s)", self.grace, len(self._tasks))
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- heartbeats -----------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """``in_progress()`` for every held message, queued or being processed."""
        interval = self.spec.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._held.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:  # the connection reconnects; the next beat retries
                    log.warning("heartbeat failed: %s", exc)

    # -- one message ----------------------------------------------------------------------
    async def _process(self, msg: Msg) -> None:
        try:
            async with self._semaphore:
                if self._stopping:
                    await self._release(msg, "nak")  # never started: give it back at once
                    self.stats.interrupted += 1
                    return
                try:
                    await self._handle(msg)
                except Exception as exc:
                    # Settling failed (the broker went away while a dead letter was being
                    # published): hand the message back, to be retried after the usual delay,
                    # rather than leave it to the ack wait or kill the task silently.
                    log.error(
                        "could not settle a message (%s: %s); handing it back",
                        type(exc).__name__,
                        exc,
                    )
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self.spec.retry_delay(msg.metadata.num_delivered))
                    self.stats.nakked += 1
        finally:
            self._held.pop(id(msg), None)
            self._slot_freed.set()

    async def _handle(self, msg: Msg) -> None:
        from p8fs.errors import error_code, is_permanent
        from p8fs_runner.events import parse_event

        tier = self.spec.name
        md = msg.metadata
        if md.num_delivered > 1:
            metrics.REDELIVERED.labels(tier).inc()
        try:
            event = parse_event(msg.data)
        except Exception as exc:
            await self._dead_letter(msg, exc, event=None, recorded=False)
            return
        if event is None:
            await msg.ack()
            self.stats.ignored += 1
            return

        job = self._job(msg, event)
        started = time.monotonic()
        metrics.IN_FLIGHT.labels(tier).inc()
        running = _RunningMark(self.jobs, job, self.running_after)
        try:
            result = await self.processor(event, job if self.jobs is not None else None)
            await running.settle()
            if not result.pop("job_done", False):
                job.result = result
                await self._save_job(job, "DONE")  # committed before the ack
        except asyncio.CancelledError:
            # Stop after the grace period: hand the file back to another worker now.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._interrupted(msg, job, running))
            raise
        except Exception as exc:
            await running.settle()
            metrics.SECONDS.labels(tier).observe(time.monotonic() - started)
            last = self.spec.is_last_delivery(md.num_delivered)
            self.stats.failures.append(
                {
                    "uri": event.uri,
                    "reason": str(exc),
                    "code": error_code(exc),
                    "permanent": is_permanent(exc) or last,
                    "delivery": md.num_delivered,
                }
            )
            if is_permanent(exc) or last:
                job.error = f"{error_code(exc)}: {exc}"
                try:
                    await self._save_job(job, "FAILED")
                except Exception as db_exc:
                    if not last and _heals(db_exc):
                        # The database went down while this failure was being recorded: the
                        # errors row may be missing and the job would stay RUNNING. Retry the
                        # delivery (it fails the same way, cheaply) instead of dead-lettering
                        # now (found by tests/reliability/test_load_faults.py).
                        log.warning("%s: cannot record its failure yet (%s)", event.uri, db_exc)
                        await msg.nak(delay=self.spec.retry_delay(md.num_delivered))
                        self.stats.nakked += 1
                        return
                metrics.FAILED.labels(tier, "permanent").inc()
                await self._dead_letter(
                    msg, exc, event=event, recorded=bool(getattr(exc, "recorded", False)), last=last
                )
            else:
                metrics.FAILED.labels(tier, "transient").inc()
                delay = self.spec.retry_delay(md.num_delivered)
                log.warning(
                    "%s failed (delivery %d/%d), retrying in %.0fs: %s",
                    event.uri,
                    md.num_delivered,
                    self.spec.max_deliver,
                    delay,
                    exc,
                )
                job.error = f"{error_code(exc)}: {exc} (retry in {delay:.0f}s)"
                with contextlib.suppress(Exception):
                    await self._save_job(job, "PENDING")
                await msg.nak(delay=delay)
                self.stats.nakked += 1
            return
        finally:
            metrics.IN_FLIGHT.labels(tier).dec()
        await msg.ack()
        elapsed = time.monotonic() - started
        metrics.SECONDS.labels(tier).observe(elapsed)
        metrics.PROCESSED.labels(tier).inc()
        if event.size:
            metrics.BYTES.labels(tier).inc(event.size)
        self.stats.acked += 1
        self.stats.results.append(
            {
                "uri": event.uri,
                "event_type": event.event_type,
                **result,
                "delivery": md.num_delivered,
                "seq": md.sequence.stream,
            }
        )

    async def _interrupted(self, msg: Msg, job: Job, running: _RunningMark) -> None:
        await running.settle()
        await msg.nak()
        self.stats.interrupted += 1
        job.error = "interrupted by worker shutdown; handed back to the queue"
        await self._save_job(job, "PENDING")

    async def _release(self, msg: Msg, how: str) -> None:
        with contextlib.suppress(Exception):
            await msg.nak() if how == "nak" else await msg.ack()

    def _job(self, msg: Msg, event: StorageEvent) -> Job:
        from p8fs.models import Job

        return Job(
            id=job_id_for(msg),
            tenant_id=event.tenant_id,
            job_type=JOB_TYPE,
            payload={
                "uri": event.uri,
                "event_type": event.event_type,
                "size": event.size,
                "tier": self.spec.name,
                "stream": msg.metadata.stream,
                "seq": msg.metadata.sequence.stream,
                "delivery": msg.metadata.num_delivered,
            },
        )

    async def _save_job(self, job: Job, status: str) -> None:
        from p8fs.models import JobStatus, utcnow

        job.status = JobStatus(status)
        job.updated_at = utcnow()
        if self.jobs is not None:
            await self.jobs(job)

    async def _dead_letter(
        self,
        msg: Msg,
        exc: BaseException,
        *,
        event: StorageEvent | None,
        recorded: bool,
        last: bool = False,
    ) -> None:
        from p8fs.errors import error_code

        md = msg.metadata
        reason = str(exc) or type(exc).__name__
        if last and not recorded:
            reason = f"{reason} (after {md.num_delivered} deliveries)"
        if not recorded:
            await record_error(
                self.errors,
                tenant_id=event.tenant_id if event else "unknown",
                process=self.process_name,
                message=reason,
                exc=exc,
                metadata={
                    "code": error_code(exc),
                    "uri": event.uri if event else None,
                    "stream": md.stream,
                    "seq": md.sequence.stream,
                    "deliveries": md.num_delivered,
                    "trace": "".join(traceback.format_exception_only(exc)).strip(),
                },
            )
        await dead_letter(
            self.js,
            self.spec,
            msg,
            reason=reason,
            code=error_code(exc),
            tenant_id=event.tenant_id if event else "",
            uri=event.uri if event else "",
        )
        await msg.term()
        metrics.DEAD_LETTERED.labels(self.spec.name).inc()
        self.stats.dead_lettered += 1
        log.error("dead-lettered %s: %s", event.uri if event else "invalid event", reason)


class _RunningMark:
    """Writes a job RUNNING once its file has been in progress for ``after`` seconds.

    :meth:`settle` is awaited before the job's outcome is written: it cancels a mark not yet
    due, or waits for one being written, so RUNNING is never committed after the outcome by
    this worker (and the database refuses it over a finished status in any case).
    """

    def __init__(self, sink: JobSink | None, job: Job, after: float) -> None:
        self._writing = False
        self._task: asyncio.Task[None] | None = None
        if sink is not None:
            self._task = asyncio.create_task(self._mark(sink, job, after), name="p8fs-running")

    async def _mark(self, sink: JobSink, job: Job, after: float) -> None:
        from p8fs.models import JobStatus, utcnow

        if after > 0:
            await asyncio.sleep(after)
        self._writing = True
        # A copy: the pipeline may be turning ``job`` itself into DONE meanwhile.
        mark = job.model_copy(update={"status": JobStatus.RUNNING, "updated_at": utcnow()})
        try:
            await sink(mark)
        except Exception as exc:  # only a progress mark: the outcome is written regardless
            log.warning("could not mark job %s RUNNING: %s", job.id, exc)

    async def settle(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        if not self._writing:
            task.cancel()
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(task)


def _heals(exc: BaseException) -> bool:
    """Whether a failure may go away by itself (a database or broker that is down)."""
    from p8fs.errors import is_permanent

    return isinstance(exc, Exception) and not is_permanent(exc)


async def _wait_first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
