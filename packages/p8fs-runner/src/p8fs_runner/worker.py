"""A tier worker: pull storage events from its durable consumer, process them, settle each one.

One path per delivery: :meth:`Worker._handle` gets a typed outcome from processing, takes the
pure decision of :func:`p8fs_runner.settlement.decide` (the settlement table lives there) and
carries it out. What the carrying out keeps:

* **ack only after the database commit** (the file's rows and its DONE ``jobs`` row, in one
  transaction);
* **heartbeat** every message this worker holds with ``in_progress()`` at a third of the ack
  wait, so a slow file is never handed to a second worker, whatever its size;
* **a dead letter is confirmed by the broker before the message is ``term``-ed**, and its
  ``errors`` row is written first;
* **a dependency outage spends no delivery**: while the database or S3 is down (or refuses the
  credentials) the worker stops pulling, reports not ready, keeps the messages it holds (the
  heartbeats keep them its own) and processes them again once the probes pass;
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from p8fs.errors import is_permanent
from p8fs.ids import stable_id
from p8fs_runner import metrics
from p8fs_runner.dlq import dead_letter
from p8fs_runner.router import ErrorSink, record_error
from p8fs_runner.settlement import (
    Ack,
    DeadLetter,
    Decision,
    Failed,
    Ignored,
    Interrupted,
    Invalid,
    Nak,
    Outcome,
    Processed,
    Wait,
    decide,
    may_be_outage,
)

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from p8fs.models import Job
    from p8fs_runner.dependencies import Dependencies
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
    """Does the work for one event and says how it went (it raises nothing for a failure of
    the work itself: that is a :class:`~p8fs_runner.settlement.Failed`)."""

    async def __call__(self, event: StorageEvent, job: Job | None = None) -> Processed | Failed:
        """``job``, when given, may be committed DONE together with the file's rows
        (``Processed.job_committed``); then the worker writes no DONE of its own."""
        ...


JobSink = Callable[["Job"], Awaitable[Any]]


def job_id_for(msg: Msg) -> str:
    """One ``jobs`` row per event, whatever the number of deliveries.

    The router publishes with a ``Nats-Msg-Id`` derived from the source event; that id (or the
    stream sequence, for events published straight to a tier) is stable across redeliveries.
    """

    headers = msg.headers or {}
    source = headers.get("Nats-Msg-Id") or f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    return stable_id("job", JOB_TYPE, source)


@dataclass(frozen=True)
class SettledFile:
    """One acknowledged event and what was done with it."""

    uri: str
    event_type: str
    action: str
    #: Delivery number (1 = first) and stream sequence of the message.
    delivery: int
    seq: int
    #: What the ``jobs`` row's ``result`` holds (for an ingest, ``p8fs.pipeline.ingest_summary``:
    #: file_id, chunks, provider, seconds, skipped).
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class FailedDelivery:
    """One delivery that failed: dead-lettered (``permanent``) or handed back for a retry."""

    uri: str
    reason: str
    code: str
    permanent: bool
    delivery: int


def _recent() -> deque[Any]:
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
    #: Dependency outages this worker paused for.
    outages: int = 0
    results: deque[SettledFile] = field(default_factory=_recent)
    failures: deque[FailedDelivery] = field(default_factory=_recent)

    def result_for(self, uri: str) -> SettledFile | None:
        """The latest acknowledged result for ``uri``, if it is among the recent ones."""
        return next((r for r in reversed(self.results) if r.uri == uri), None)

    def failure_for(self, uri: str) -> FailedDelivery | None:
        """The latest failed delivery of ``uri``, if it is among the recent ones."""
        return next((f for f in reversed(self.failures) if f.uri == uri), None)


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
        dependencies: Dependencies | None = None,
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
        #: Probes asked when a failure may be a dependency's; ``None``: every failure is the
        #: file's (a worker without probes spends deliveries during an outage).
        self.dependencies = dependencies
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
        self._halt = asyncio.Event()
        #: Why the worker is paused (a dependency is down), or ``None``.
        self.outage: str | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._recovery: asyncio.Task[None] | None = None
        self._paused_at = 0.0
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
        self._halt.clear()
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="p8fs-heartbeat")
        setup = asyncio.ensure_future(ready()) if ready is not None else None
        fetched = 0
        try:
            while not stop.is_set():
                if max_messages is not None and fetched >= max_messages:
                    break
                want = await self._room(stop, max_messages, fetched)
                if want <= 0:
                    continue
                msgs = await self._fetch(sub, want, fetch_timeout, stop)
                if not msgs:
                    continue
                fetched += len(msgs)
                for msg in msgs:
                    self._held[id(msg)] = msg  # heartbeats cover it from now on
                if setup is not None:
                    if not await self._set_up(setup, ready, stop, msgs):
                        break
                    setup = None
                for msg in msgs:
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
            if setup is not None:
                setup.cancel()
            if self._recovery is not None:
                self._recovery.cancel()
        return self.stats

    async def _room(self, stop: asyncio.Event, max_messages: int | None, fetched: int) -> int:
        """How many messages to ask for now; 0 after waiting for a free slot or a recovery."""
        if self.outage is not None:  # paused: pull nothing until the dependency answers
            await _wait_first(self._resumed.wait(), stop.wait())
            return 0
        room = self.max_held - len(self._held)
        if room <= 0:
            self._slot_freed.clear()
            await _wait_first(self._slot_freed.wait(), stop.wait())
            return 0
        want = min(self.spec.batch, room)
        if max_messages is not None:
            want = min(want, max_messages - fetched)
        return want

    async def _fetch(
        self, sub: Any, want: int, wait: float, stop: asyncio.Event
    ) -> list[Msg]:
        if self.first_fetch_at is None:
            self.first_fetch_at = time.monotonic()
        try:
            return list(await sub.fetch(want, timeout=wait))
        except (TimeoutError, NatsTimeoutError):
            return []  # an empty fetch may raise either (measured)
        except NatsError as exc:
            # A broker restart: JetStream answers 503 or nobody answers for a moment after the
            # reconnect (measured). Not a reason to exit; ask again shortly.
            log.warning("fetch failed (%s: %s); retrying", type(exc).__name__, exc)
            await _wait_first(asyncio.sleep(BROKER_RETRY), stop.wait())
            return []

    async def _set_up(
        self,
        setup: asyncio.Future[Any],
        ready: Callable[[], Awaitable[Any]] | None,
        stop: asyncio.Event,
        msgs: list[Msg],
    ) -> bool:
        """Finish the set-up before the first messages are processed.

        A set-up that fails transiently (the database is down at start) is an outage like any
        other: the fetched messages are kept, not handed back (that would spend a delivery each
        second), and the set-up is retried until it succeeds. Returns ``False`` when ``stop`` came
        first (the messages are then handed back); a permanent failure is raised.
        """
        while True:
            try:
                await setup
            except BaseException as exc:
                if not _heals(exc) or ready is None:
                    for msg in msgs:
                        await self._hand_back(msg)
                    raise
                self._pause(f"set-up failed: {exc}")
                await _wait_first(asyncio.sleep(SETUP_RETRY), stop.wait())
                if stop.is_set():
                    for msg in msgs:
                        await self._hand_back(msg)
                    return False
                setup = asyncio.ensure_future(ready())
                continue
            if self.outage is not None and self._recovery is None:
                self._resume()
            return True

    async def _drain(self) -> None:
        """Stop: finish what is being processed within the grace period, nak the rest now."""
        self._stopping = True
        self._halt.set()  # messages waiting for a dependency are handed back at once
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
        """``in_progress()`` for every held message, queued, being processed or waiting."""
        interval = self.spec.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._held.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:  # the connection reconnects; the next beat retries
                    log.warning("heartbeat failed: %s", exc)

    # -- outages --------------------------------------------------------------------------
    def _pause(self, reason: str) -> None:
        if self.outage is None:
            log.error(
                "pausing the %s worker: %s; holding %d message(s) until it answers",
                self.spec.name,
                reason,
                len(self._held),
            )
            self.stats.outages += 1
            self._paused_at = time.monotonic()
            self._resumed.clear()
            metrics.PAUSED.labels(self.spec.name).set(1)
        self.outage = reason

    def _resume(self) -> None:
        if self.outage is not None:
            log.warning(
                "resuming the %s worker after %.1fs: its dependencies answer again",
                self.spec.name,
                time.monotonic() - self._paused_at,
            )
        self.outage = None
        self._recovery = None
        metrics.PAUSED.labels(self.spec.name).set(0)
        self._resumed.set()

    async def _outage_of(self, outcome: Outcome, event: StorageEvent | None) -> str | None:
        """The reason a dependency is down, when ``outcome`` may be its fault."""
        if self.dependencies is None or not isinstance(outcome, Failed):
            return None
        if not may_be_outage(outcome.error):
            return None
        return await self.dependencies.check(event)

    async def _wait_for_dependencies(self, reason: str, event: StorageEvent | None) -> bool:
        """Pause (once for all messages) until the probes pass; ``False`` if stopped first."""
        assert self.dependencies is not None
        self._pause(reason)
        if self._recovery is None:
            self._recovery = asyncio.create_task(self._recover(event), name="p8fs-recovery")
        await _wait_first(self._resumed.wait(), self._halt.wait())
        return self._resumed.is_set()

    async def _recover(self, event: StorageEvent | None) -> None:
        assert self.dependencies is not None
        if await self.dependencies.wait_until_up(event, self._halt):
            self._resume()
        else:
            self._recovery = None

    # -- one message ----------------------------------------------------------------------
    async def _process(self, msg: Msg) -> None:
        try:
            async with self._semaphore:
                if self._stopping:
                    await self._hand_back(msg)  # never started: give it back at once
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
        """Outcome, decision, execution; again after a dependency outage, which spends nothing."""
        from p8fs_runner.events import parse_event

        if msg.metadata.num_delivered > 1:
            metrics.REDELIVERED.labels(self.spec.name).inc()
        try:
            event = parse_event(msg.data)
        except Exception as exc:
            await self._settle(msg, decide(Invalid(exc), delivery=1, policy=self.spec))
            return
        if event is None:
            await self._settle(msg, Ack(), Ignored())
            return
        job = self._job(msg, event)
        while True:
            outcome = await self._attempt(msg, event, job)
            decision = decide(
                outcome,
                delivery=msg.metadata.num_delivered,
                policy=self.spec,
                outage=await self._outage_of(outcome, event),
            )
            if isinstance(decision, Wait):
                # The jobs row says why the file waits (best effort: the database may be the
                # dependency that is down).
                job.error = f"waiting for a dependency: {decision.reason}"
                with contextlib.suppress(Exception):
                    await self._save_job(job, "PENDING")
                if await self._wait_for_dependencies(decision.reason, event):
                    continue  # the dependency is back: process the file again
                outcome = Interrupted()
                decision = decide(outcome, delivery=msg.metadata.num_delivered, policy=self.spec)
            try:
                await self._settle(msg, decision, outcome, event, job)
                return
            except Exception as exc:
                # Writing the outcome failed: if a dependency is down, wait for it and redo.
                reason = await self._outage_of(Failed(exc), event)
                if reason is None:
                    raise
                if not await self._wait_for_dependencies(reason, event):
                    await self._settle(msg, decide(Interrupted(), delivery=1, policy=self.spec),
                                       Interrupted(), event, job)
                    return

    async def _attempt(self, msg: Msg, event: StorageEvent, job: Job) -> Outcome:
        """Run the processor once for ``event``; a stop past the grace period hands it back."""
        tier = self.spec.name
        started = time.monotonic()
        metrics.IN_FLIGHT.labels(tier).inc()
        running = _RunningMark(self.jobs, job, self.running_after)
        try:
            outcome = await self.processor(event, job if self.jobs is not None else None)
        except asyncio.CancelledError:
            # Stop after the grace period: hand the file back to another worker now.
            with contextlib.suppress(Exception):
                await asyncio.shield(running.settle())
                await asyncio.shield(
                    self._settle(msg, Nak(0.0, "interrupted by worker shutdown"), Interrupted(),
                                 event, job)
                )
            raise
        except Exception as exc:  # a processor that raises instead of returning Failed
            outcome = Failed(exc)
        finally:
            metrics.IN_FLIGHT.labels(tier).dec()
        await running.settle()
        metrics.SECONDS.labels(tier).observe(time.monotonic() - started)
        return outcome

    # -- carrying a decision out -----------------------------------------------------------
    async def _settle(
        self,
        msg: Msg,
        decision: Decision,
        outcome: Outcome | None = None,
        event: StorageEvent | None = None,
        job: Job | None = None,
    ) -> None:
        """Carry ``decision`` out: the ``jobs`` row first, then the broker."""
        md = msg.metadata
        if isinstance(outcome, Failed) and event is not None:
            self.stats.failures.append(
                FailedDelivery(
                    uri=event.uri,
                    reason=str(outcome.error),
                    code=outcome.code,
                    permanent=isinstance(decision, DeadLetter),
                    delivery=md.num_delivered,
                )
            )
        if isinstance(decision, Ack):
            await self._ack(msg, outcome, event, job)
        elif isinstance(decision, Nak):
            await self._nak(msg, decision, outcome, event, job)
        elif isinstance(decision, DeadLetter):
            await self._dead_letter(msg, decision, outcome, event, job)
        else:  # pragma: no cover - Wait is resolved by _handle
            raise AssertionError(f"cannot carry out {decision!r}")

    async def _ack(
        self, msg: Msg, outcome: Outcome | None, event: StorageEvent | None, job: Job | None
    ) -> None:
        if isinstance(outcome, Processed) and job is not None and not outcome.job_committed:
            job.result = dict(outcome.summary)
            await self._save_job(job, "DONE")  # committed before the ack
        await msg.ack()
        if not isinstance(outcome, Processed) or event is None:
            self.stats.ignored += 1
            return
        tier = self.spec.name
        metrics.PROCESSED.labels(tier).inc()
        if event.size:
            metrics.BYTES.labels(tier).inc(event.size)
        self.stats.acked += 1
        md = msg.metadata
        self.stats.results.append(
            SettledFile(
                uri=event.uri,
                event_type=event.event_type,
                action=outcome.action,
                delivery=md.num_delivered,
                seq=md.sequence.stream,
                summary=outcome.summary,
            )
        )

    async def _nak(
        self,
        msg: Msg,
        decision: Nak,
        outcome: Outcome | None,
        event: StorageEvent | None,
        job: Job | None,
    ) -> None:
        md = msg.metadata
        if isinstance(outcome, Interrupted):
            self.stats.interrupted += 1
            note = decision.reason
        else:
            metrics.FAILED.labels(self.spec.name, "transient").inc()
            self.stats.nakked += 1
            code = outcome.code if isinstance(outcome, Failed) else "transient"
            note = f"{code}: {decision.reason} (retry in {decision.delay:.0f}s)"
            log.warning(
                "%s failed (delivery %d/%d), retrying in %.0fs: %s",
                event.uri if event else "event",
                md.num_delivered,
                self.spec.max_deliver,
                decision.delay,
                decision.reason,
            )
        await msg.nak(delay=decision.delay) if decision.delay else await msg.nak()
        if job is not None:
            job.error = note
            with contextlib.suppress(Exception):  # only a progress note; the message is safe
                await self._save_job(job, "PENDING")

    async def _dead_letter(
        self,
        msg: Msg,
        decision: DeadLetter,
        outcome: Outcome | None,
        event: StorageEvent | None,
        job: Job | None,
    ) -> None:
        md = msg.metadata
        error = outcome.error if isinstance(outcome, Failed | Invalid) else None
        if job is not None:
            job.error = f"{decision.code}: {error}"
            try:
                await self._save_job(job, "FAILED")
            except Exception as exc:
                # With probes, _handle finds the outage, waits for the database and tries
                # again, rather than dead-letter a failure that has no record yet. Without
                # them the message must still settle: on its last delivery (or when retrying
                # cannot help) the dead letter alone carries the reason.
                if self.dependencies is not None or (_heals(exc) and not decision.last_delivery):
                    raise
                log.warning("could not record job %s FAILED (%s); dead-lettering it", job.id, exc)
        metrics.FAILED.labels(self.spec.name, "permanent").inc()
        if decision.record_error:
            await record_error(
                self.errors,
                tenant_id=event.tenant_id if event else "unknown",
                process=self.process_name,
                message=decision.reason,
                exc=error,
                metadata={
                    "code": decision.code,
                    "uri": event.uri if event else None,
                    "stream": md.stream,
                    "seq": md.sequence.stream,
                    "deliveries": md.num_delivered,
                    "trace": "".join(traceback.format_exception_only(error)).strip()
                    if error is not None
                    else None,
                },
            )
        await dead_letter(
            self.js,
            self.spec,
            msg,
            reason=decision.reason,
            code=decision.code,
            tenant_id=event.tenant_id if event else "",
            uri=event.uri if event else "",
        )
        await msg.term()
        metrics.DEAD_LETTERED.labels(self.spec.name).inc()
        self.stats.dead_lettered += 1
        log.error("dead-lettered %s: %s", event.uri if event else "invalid event", decision.reason)

    async def _hand_back(self, msg: Msg) -> None:
        """Nak without delay, ignoring a broker that is gone (it redelivers after the ack wait)."""
        with contextlib.suppress(Exception):
            await msg.nak()

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
    return isinstance(exc, Exception) and not is_permanent(exc)


async def _wait_first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
