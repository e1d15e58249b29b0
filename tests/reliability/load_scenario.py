"""The load-and-faults scenario shared by ``test_load_faults.py`` (one round, in CI) and
``benchmarks/soak.py`` (many rounds, for minutes).

One round:

1. plan ``n`` events over three tenants (buckets): good files made from a few corpus templates
   and a share of poison files (corrupt PDF bytes, an encrypted PDF without its password, an
   empty file, unsupported binary); every event declares a ``size`` that picks its tier, on
   both sides of both thresholds (100 MiB - 1, 100 MiB, 1 GiB - 1, 1 GiB, ...). The router
   routes by the declared size only, so the large-tier events carry declared sizes over real
   small objects: the test is about the queues and the faults, not about reading big files
   (``benchmarks/queue_throughput.py`` measures that);
2. upload the objects straight to SeaweedFS and publish the events to ``p8fs.storage.events``;
3. while a ``p8fs-run router`` and two ``p8fs-run worker --tier T`` processes per tier work
   through them, inject faults as progress passes fixed marks: SIGKILL a worker that reports a
   file in progress (three times, each replaced), restart nats-server (same port, same store),
   stop the database for ten seconds, make S3 unreachable for five (a proxy that refuses and
   resets connections);
4. wait, with a deadline, until every queue is empty and nothing is waiting for an ack.

:meth:`LoadScenario.verify` then compares the database and the dead-letter stream with what was
planned, file by file, against a reference ingest of each template done in-process beforehand:
every good file has its ``files`` row and exactly the reference's resources, every poison file
an ``errors`` row with its error code and exactly one dead letter; nothing else was
dead-lettered; there is one ``jobs`` row per event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import statistics
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p8fs_runner import tiers
from tests.fixtures.servers import corpus_path
from tests.reliability.faults import PausableProxy, RestartableNats, RunnerProcess, runner_env

#: Short waits for the test, applied to the router and every worker through
#: ``P8FS_TIER_OVERRIDES``: a 3 s ack wait (heartbeats every second), retries after 3, 4 and 6 s,
#: and enough deliveries that the faults of one round cannot exhaust a good file's (a file may
#: be held by a killed worker, lose its ack to the broker restart, fail three times while the
#: database is down and twice while S3 is). Batch sizes and concurrency stay the production ones.
TEST_BACKOFF = [3.0, 4.0, 6.0]
TIER_OVERRIDES: dict[str, dict[str, Any]] = {
    "router": {"backoff": [3.0, 3.0, 6.0], "max_deliver": 12},
    **{name: {"backoff": TEST_BACKOFF, "max_deliver": 12} for name in tiers.TIERS},
}

#: Declared sizes per tier, alternated: both sides of both thresholds, plus ordinary ones.
DECLARED_SIZES: dict[str, tuple[int | None, ...]] = {
    "small": (None, tiers.SMALL_LIMIT - 1),  # None: the object's real size
    "medium": (tiers.SMALL_LIMIT, tiers.MEDIUM_LIMIT - 1, 300 * tiers.MiB),
    "large": (tiers.MEDIUM_LIMIT, 3 * tiers.GiB),
}
#: Out of every 20 events: 14 small, 4 medium, 2 large.
TIER_PATTERN = ("small",) * 14 + ("medium",) * 4 + ("large",) * 2
#: One event in POISON_EVERY is a poison file.
POISON_EVERY = 13
TENANTS = ("load-alpha", "load-beta", "load-gamma")


@dataclass(frozen=True)
class Template:
    """A kind of file: its bytes, its extension, and (poison) the error code it must give."""

    name: str
    suffix: str
    data: bytes
    error_code: str | None = None

    @property
    def poison(self) -> bool:
        return self.error_code is not None


def load_templates() -> tuple[list[Template], list[Template]]:
    """Good and poison templates, from the shared corpus (skips when it is missing)."""
    pdf = corpus_path("pdf/spf_minimal-document.pdf").read_bytes()
    rng = random.Random(7)
    good = [
        Template("pdf", ".pdf", pdf),
        Template(
            "markdown",
            ".md",
            corpus_path(
                "p8fs_sample_data/dreaming/resources/documents/project_alpha_spec.md"
            ).read_bytes(),
        ),
        Template(
            "json",
            ".json",
            corpus_path("p8fs_sample_data/p8fs_node/structured/sample.json").read_bytes(),
        ),
        Template(
            "text", ".txt", corpus_path("p8fs_sample_data/p8fs_node/text/sample.txt").read_bytes()
        ),
        Template("long-text", ".txt", corpus_path("docs/unst_norwich-city.txt").read_bytes()),
    ]
    poison = [
        Template("truncated-pdf", ".pdf", pdf[:3000], "corrupt"),
        Template("garbage-pdf", ".pdf", b"%PDF-1.7\n" + rng.randbytes(4000), "corrupt"),
        Template(
            "encrypted-pdf",
            ".pdf",
            corpus_path("pdf/spf_libreoffice-writer-password.pdf").read_bytes(),
            "encrypted",
        ),
        Template("empty", ".txt", b"", "empty"),
        Template("binary", ".bin", bytes(range(256)) * 16, "unsupported"),
    ]
    return good, poison


#: How often each good template is used (the 33-chunk text is the rarest: it is the heaviest).
GOOD_WEIGHTS = {"pdf": 3, "markdown": 3, "json": 2, "text": 3, "long-text": 1}


@dataclass(frozen=True)
class Planned:
    """One event of the burst and what must come of it."""

    tenant: str
    key: str
    template: Template
    tier: str
    declared_size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.tenant}/{self.key}"

    def event(self) -> bytes:
        return json.dumps(
            {
                "event_type": "create",
                "path": f"/buckets/{self.tenant}/{self.key}",
                "size": self.declared_size,
            }
        ).encode()


def plan(n: int, round_no: int, good: list[Template], poison: list[Template]) -> list[Planned]:
    """``n`` events, deterministic: tiers by :data:`TIER_PATTERN`, poison every
    :data:`POISON_EVERY`, declared sizes alternating within each tier."""
    weighted = [t for t in good for _ in range(GOOD_WEIGHTS.get(t.name, 1))]
    per_tier: Counter[str] = Counter()
    out = []
    for i in range(n):
        tier = TIER_PATTERN[i % len(TIER_PATTERN)]
        if i % POISON_EVERY == 5:
            # The k-th poison file. Its kind shifts by one every lap of the tier pattern;
            # without the shift each tier would only ever see the same one or two kinds.
            k = i // POISON_EVERY
            template = poison[(k + k // len(TIER_PATTERN)) % len(poison)]
        else:
            template = weighted[i % len(weighted)]
        sizes = DECLARED_SIZES[tier]
        declared = sizes[per_tier[tier] % len(sizes)]
        per_tier[tier] += 1
        tenant = TENANTS[i % len(TENANTS)]
        key = f"r{round_no:03d}/{tier}/{i:06d}-{template.name}{template.suffix}"
        item = Planned(
            tenant, key, template, tier, len(template.data) if declared is None else declared
        )
        assert tiers.tier_for_size(item.declared_size).name == tier
        out.append(item)
    return out


@dataclass
class Reference:
    """What a clean, in-process ingest of a good template stores."""

    provider: str
    chunks: int
    digest: str  # sha256 over the chunk texts in order


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\x00")
    return h.hexdigest()


async def reference_ingest(
    good: list[Template], poison: list[Template], work: Path
) -> dict[str, Reference]:
    """Ingest each template once into a SQLite database of its own, with the same pipeline the
    workers run, so the expectations are measured rather than hard-coded. Also checks that
    every poison template really fails permanently with its code (else the test is wrong)."""
    from p8fs.database import Database
    from p8fs.errors import error_code, is_permanent
    from p8fs.pipeline import aingest

    paths = await asyncio.to_thread(_write_templates, work, [*good, *poison])
    refs: dict[str, Reference] = {}
    async with Database(f"sqlite+aiosqlite:///{work / 'reference.db'}") as db:
        await db.init_schema()
        for template in good:
            result = await aingest(str(paths[template.name]), "reference", database=db)
            resources = await db.list_resources("reference", file_id=result.file.id)
            refs[template.name] = Reference(
                result.provider or "", result.chunks, _digest([r.content for r in resources])
            )
            assert result.chunks == len(resources) >= 1
        for template in poison:
            try:
                await aingest(str(paths[template.name]), "reference", database=db)
            except Exception as exc:
                assert is_permanent(exc) and error_code(exc) == template.error_code, (
                    template.name,
                    exc,
                )
            else:
                raise AssertionError(f"poison template {template.name} was ingested")
    return refs


def _write_templates(work: Path, templates: list[Template]) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for template in templates:
        paths[template.name] = work / f"{template.name}{template.suffix}"
        paths[template.name].write_bytes(template.data)
    return paths


@dataclass
class Faults:
    """What was injected (printed in the report)."""

    worker_kills: int = 0
    nats_restarts: int = 0
    database_stops: int = 0
    s3_outages: int = 0
    #: SIGKILLs of a node of a NATS cluster (tests/runner/test_cluster.py).
    nats_node_kills: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            self.worker_kills
            + self.nats_restarts
            + self.database_stops
            + self.s3_outages
            + self.nats_node_kills
        )

    started: float = field(default_factory=time.monotonic)

    def note(self, what: str, progress: float) -> None:
        elapsed = time.monotonic() - self.started
        self.log.append(f"{elapsed:6.1f}s  {what} at {progress:.0%} of the round settled")


@dataclass
class Report:
    events: int
    good: int
    poison: int
    files_rows: int
    resources_rows: int
    errors_rows: int
    dead_letters: int
    jobs_rows: int
    redeliveries: int
    #: Messages still in a stream, pending or waiting for an ack (main stream and tiers).
    pending: int
    faults: Faults
    lost: list[str]
    duplicated: list[str]
    wrong: list[str]
    missing_errors: list[str]
    missing_dead_letters: list[str]
    unexpected_dead_letters: list[str]
    end_to_end: list[float]
    processing: list[float]
    seconds: float

    @property
    def ok(self) -> bool:
        return not (
            self.pending
            or self.lost
            or self.duplicated
            or self.wrong
            or self.missing_errors
            or self.missing_dead_letters
            or self.unexpected_dead_letters
        )

    def failures(self) -> list[str]:
        """Every expectation of a clean round this report breaks (empty when all are met):
        each good file stored once with the reference's chunks, each poison file with its
        errors row and exactly one dead letter, one jobs row per event, nothing left queued."""
        checks = [
            (self.lost, "good files lost"),
            (self.duplicated, "duplicated or stray files"),
            (self.wrong, "files whose rows differ from the reference"),
            (self.missing_errors, "poison files without an errors row"),
            (self.missing_dead_letters, "poison files without exactly one dead letter"),
            (self.unexpected_dead_letters, "good files dead-lettered"),
        ]
        out = [f"{len(items)} {what}, e.g. {items[:3]}" for items, what in checks if items]
        if self.pending:
            out.append(f"{self.pending} messages left in a stream or waiting for an ack")
        if self.files_rows != self.good:
            out.append(f"{self.files_rows} files rows for {self.good} good files")
        if self.dead_letters != self.poison:
            out.append(f"{self.dead_letters} dead letters for {self.poison} poison files")
        if self.jobs_rows != self.events:
            out.append(f"{self.jobs_rows} jobs rows for {self.events} events")
        return out

    def lines(self) -> list[str]:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "n/a"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.2f}s"

        f = self.faults
        return [
            f"events                {self.events:>8,}  ({self.good:,} good, {self.poison:,} poison)",
            f"files rows            {self.files_rows:>8,}",
            f"resources rows        {self.resources_rows:>8,}",
            f"errors rows           {self.errors_rows:>8,}",
            f"dead-lettered         {self.dead_letters:>8,}",
            f"jobs rows             {self.jobs_rows:>8,}",
            f"redeliveries          {self.redeliveries:>8,}",
            f"left in the queues    {self.pending:>8,}",
            f"faults injected       {f.total:>8,}  ({f.worker_kills} worker SIGKILLs, "
            f"{f.nats_restarts} nats-server restarts, {f.database_stops} database stops, "
            f"{f.s3_outages} S3 outages, {f.nats_node_kills} NATS node SIGKILLs)",
            f"lost                  {len(self.lost):>8,}",
            f"duplicated            {len(self.duplicated):>8,}",
            f"wrong content         {len(self.wrong):>8,}",
            f"poison without errors row / dead letter: {len(self.missing_errors)} / "
            f"{len(self.missing_dead_letters)}; good files dead-lettered: "
            f"{len(self.unexpected_dead_letters)}",
            f"latency publish->done p50 {pct(self.end_to_end, 0.5)}  p99 {pct(self.end_to_end, 0.99)}",
            f"processing (last delivery) p50 {pct(self.processing, 0.5)}  p99 {pct(self.processing, 0.99)}"
            f"  mean {statistics.fmean(self.processing) if self.processing else 0:.3f}s",
            f"wall time             {self.seconds:>8.1f}s",
        ]


class LoadScenario:
    """The services, the runner processes and the fault switches of one scenario."""

    def __init__(
        self,
        *,
        database: Any,
        seaweedfs: Any,
        work_dir: Path,
        workers_per_tier: int = 2,
        echo: Callable[[str], None] = print,
        nats: Any = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``nats``: a running NATS the scenario uses instead of starting a
        :class:`RestartableNats` of its own (and does not stop), e.g. the 3-node
        :class:`tests.fixtures.nats_cluster.NatsCluster`; ``env``: more environment for every
        runner process (``P8FS_NATS_REPLICAS``)."""
        self.database = database
        self.seaweedfs = seaweedfs
        self.work_dir = work_dir
        self.workers_per_tier = workers_per_tier
        self.echo = echo
        self._given_nats = nats
        self.extra_env = dict(env or {})
        self.faults = Faults()
        self.published_at: dict[str, float] = {}
        self.planned: list[Planned] = []
        self.processes: dict[str, RunnerProcess] = {}
        self._spawned = 0
        self.killed: set[str] = set()
        #: A RestartableNats of the scenario's own, or the ``nats`` it was given.
        self.nats: Any = None
        self.proxy: PausableProxy | None = None
        self.nc: Any = None
        self.js: Any = None
        self.started_at = time.monotonic()

    # -- set-up -----------------------------------------------------------------------------
    async def start(self) -> None:
        from p8fs.database import Database

        self.work_dir.mkdir(parents=True, exist_ok=True)
        # One schema creation up front: seven processes racing CREATE TABLE IF NOT EXISTS on
        # PostgreSQL can collide in its catalog, which is not what this test is about.
        async with Database(self.database.url) as db:
            await db.init_schema()
        self.nats = self._given_nats or RestartableNats(self.work_dir / "nats")
        s3_port = int(self.seaweedfs.endpoint.rsplit(":", 1)[1])
        self.proxy = PausableProxy("127.0.0.1", s3_port)
        self.env = (
            runner_env(
                self.nats.server,
                data_dir=self.work_dir / "data",
                s3_endpoint=self.proxy.endpoint,
                s3_access_key=self.seaweedfs.access_key,
                s3_secret_key=self.seaweedfs.secret_key,
                database_url=self.database.url,
                tier_overrides=TIER_OVERRIDES,
            )
            | self.extra_env
        )
        await self._connect()
        await self._make_buckets()
        self.spawn("router", ["router"])
        await self.until(self._topology_exists, limit=60, what="the router's topology")
        for tier in tiers.TIERS:
            for _ in range(self.workers_per_tier):
                self.spawn(tier, ["worker", "--tier", tier, "--grace", "2"])
        await self.until(self._all_ready, limit=90, what="every runner process to be ready")

    async def _connect(self) -> None:
        import nats

        assert self.nats is not None

        async def quiet(exc: Exception) -> None:
            """Refused reconnects during the broker restart are expected, not news."""

        self.nc = await nats.connect(
            **self.nats.server.connect_options(),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )
        self.js = self.nc.jetstream()

    async def _make_buckets(self) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.seaweedfs.storage_options())
        for tenant in TENANTS:
            if not await asyncio.to_thread(fs.exists, tenant):
                await asyncio.to_thread(fs.mkdir, tenant)

    def spawn(self, role: str, args: list[str], env: dict[str, str] | None = None) -> RunnerProcess:
        """Start ``python -m p8fs_runner ARGS`` with the scenario's environment (+ ``env``)."""
        self._spawned += 1
        name = f"{role}-{self._spawned}"
        process = RunnerProcess(name, args, {**self.env, **(env or {})}, self.work_dir)
        self.processes[name] = process
        return process

    async def _topology_exists(self) -> bool:
        try:
            await self.js.consumer_info(tiers.LARGE.stream, tiers.LARGE.durable)
        except Exception:
            return False
        return True

    async def _all_ready(self) -> bool:
        self._check_alive()
        checks = await asyncio.gather(
            *(asyncio.to_thread(_ready, p.metrics_port) for p in self.processes.values())
        )
        return all(checks)

    async def until(
        self, predicate: Callable[[], Awaitable[bool]], *, limit: float, what: str
    ) -> None:
        deadline = time.monotonic() + limit
        while not await predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")
            await asyncio.sleep(0.2)

    # -- the burst --------------------------------------------------------------------------
    async def upload(self, items: list[Planned]) -> None:
        """Objects straight to SeaweedFS (not through the proxy), 32 at a time."""
        import s3fs

        fs = s3fs.S3FileSystem(
            asynchronous=True, skip_instance_cache=True, **self.seaweedfs.storage_options()
        )
        session = await fs.set_session()
        try:
            limit = asyncio.Semaphore(32)

            async def put(item: Planned) -> None:
                async with limit:
                    await fs._pipe_file(f"{item.tenant}/{item.key}", item.template.data)

            await asyncio.gather(*(put(item) for item in items))
        finally:
            await session.close()

    async def publish(self, items: list[Planned]) -> None:
        """Every event stored on the main stream, as a producer does it: a publish the stream did
        not confirm (a NATS node killed mid-burst) is sent again under the same
        ``Nats-Msg-Id``, which the stream drops if the first copy landed after all."""
        from p8fs_runner.pubacks import await_pubacks

        call = uuid.uuid4().hex[:8]
        todo = list(items)
        for item in items:
            self.published_at[item.uri] = time.time()
        for _ in range(20):
            futures = []
            for item in todo:
                futures.append(
                    await self.js.publish_async(
                        tiers.EVENTS_SUBJECT,
                        item.event(),
                        headers={"Nats-Msg-Id": f"load:{call}:{item.uri}"},
                    )
                )
            results = await await_pubacks(futures)
            todo = [i for i, r in zip(todo, results, strict=True) if isinstance(r, BaseException)]
            if not todo:
                break
            await asyncio.sleep(0.5)
        assert not todo, f"{len(todo)} events could not be published"
        self.planned += items

    async def remaining(self) -> int | None:
        """Messages not yet settled (main stream + tiers), or None while NATS is away."""
        try:
            total = 0
            for spec in (tiers.ROUTER, *tiers.TIERS.values()):
                total += (await self.js.stream_info(spec.stream)).state.messages
            return total
        except Exception:
            return None

    async def progress(self, of: int) -> float:
        left = await self.remaining()
        return 0.0 if left is None else 1 - left / of

    async def settled_jobs(self) -> int:
        """``jobs`` rows of this scenario's tenants that are DONE or FAILED."""
        from sqlalchemy import func, select

        from p8fs.database import Database, schema

        jobs = schema.jobs
        async with Database(self.database.url) as db, db.engine.connect() as conn:
            query = (
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.tenant_id.in_(TENANTS), jobs.c.status.in_(("DONE", "FAILED")))
            )
            return int((await conn.execute(query)).scalar_one())

    # -- faults -----------------------------------------------------------------------------
    async def kill_busy_worker(self, prefer: str, *, of: int) -> str:
        """SIGKILL a worker whose ``/metrics`` reports a file in progress (``prefer``'s tier
        first), and start a replacement for its tier. Returns the killed process's name."""
        deadline = time.monotonic() + 30
        while True:
            workers = [p for p in self.processes.values() if p.alive() and p.args[0] == "worker"]
            workers.sort(key=lambda p: p.args[2] != prefer)
            loads = await asyncio.gather(*(asyncio.to_thread(p.in_flight) for p in workers))
            busy = [p for p, load in zip(workers, loads, strict=True) if load > 0]
            if busy:
                victim = busy[0]
                break
            if time.monotonic() > deadline:
                raise AssertionError("no worker had a file in progress for 30 s")
            await asyncio.sleep(0.02)
        progress = await self.progress(of)
        self.killed.add(victim.name)
        await asyncio.to_thread(victim.kill)
        tier = victim.args[2]
        self.faults.worker_kills += 1
        self.faults.note(f"SIGKILL {victim.name} ({tier}, mid-file)", progress)
        self.spawn(tier, ["worker", "--tier", tier, "--grace", "2"])
        return victim.name

    async def restart_nats(self, *, of: int) -> None:
        assert isinstance(self.nats, RestartableNats), "only the scenario's own NATS restarts"
        progress = await self.progress(of)
        await asyncio.to_thread(self.nats.restart, 1.0)
        self.faults.nats_restarts += 1
        self.faults.note("nats-server restart (1 s down, same port and store)", progress)

    async def stop_database(self, seconds: float, *, of: int) -> None:
        progress = await self.progress(of)
        await asyncio.to_thread(self.database.stop)
        await asyncio.sleep(seconds)  # the outage itself, not a wait for a result
        await asyncio.to_thread(self.database.start)
        self.faults.database_stops += 1
        self.faults.note(f"database stopped for {seconds:.0f} s", progress)

    async def cut_s3(self, seconds: float, *, of: int) -> None:
        assert self.proxy is not None
        progress = await self.progress(of)
        self.proxy.pause()
        await asyncio.sleep(seconds)  # the outage itself
        self.proxy.resume()
        self.faults.s3_outages += 1
        self.faults.note(f"S3 unreachable for {seconds:.0f} s", progress)

    async def inject_faults(
        self, of: int, *, database_outage: float = 10, s3_outage: float = 5
    ) -> None:
        """The fault schedule of one round, each fault when the round's progress passes a mark
        (so they land while work is left, whatever the machine's speed)."""
        schedule: list[tuple[float, Callable[[], Awaitable[Any]]]] = [
            (0.05, lambda: self.kill_busy_worker("small", of=of)),
            (0.15, lambda: self.restart_nats(of=of)),
            (0.25, lambda: self.stop_database(database_outage, of=of)),
            (0.40, lambda: self.cut_s3(s3_outage, of=of)),
            (0.50, lambda: self.kill_busy_worker("medium", of=of)),
            (0.60, lambda: self.kill_busy_worker("large", of=of)),
        ]
        for mark, fault in schedule:

            async def passed(mark: float = mark) -> bool:
                self._check_alive()
                return await self.progress(of) >= mark

            await self.until(passed, limit=120, what=f"{mark:.0%} of the round settled")
            left = await self.remaining()
            assert left, "the round finished before a fault could be injected"
            await fault()

    def _check_alive(self) -> None:
        """A runner process that died without being killed by us is a failure of its own."""
        for process in self.processes.values():
            if process.name not in self.killed and not process.alive():
                raise AssertionError(f"{process.name} exited:\n{process.log_tail()}")

    async def wait_settled(self, limit: float) -> None:
        """Until every stream is empty and no consumer has pending or unacked messages."""

        last: list[str] = []

        async def settled() -> bool:
            self._check_alive()
            last.clear()
            for spec in (tiers.ROUTER, *tiers.TIERS.values()):
                try:
                    info = await self.js.consumer_info(spec.stream, spec.durable)
                    messages = (await self.js.stream_info(spec.stream)).state.messages
                except Exception as exc:
                    last.append(f"{spec.stream}: {type(exc).__name__}: {exc}")
                    continue
                if info.num_pending or info.num_ack_pending or messages:
                    last.append(
                        f"{spec.stream}: {messages} messages, {info.num_pending} pending, "
                        f"{info.num_ack_pending} unacked"
                    )
            return not last

        try:
            await self.until(settled, limit=limit, what="every queue to drain")
        except AssertionError as exc:
            # Which queue, and how: a bare timeout leaves a failed CI run unexplained.
            raise AssertionError(f"{exc}; last seen: {'; '.join(last)}") from None

    # -- verification -----------------------------------------------------------------------
    async def verify(self, refs: dict[str, Reference]) -> Report:
        from sqlalchemy import func, select

        from p8fs import ids
        from p8fs.database import Database, schema
        from p8fs_runner.dlq import list_dead_letters

        planned = self.planned
        good = [p for p in planned if not p.template.poison]
        poison = [p for p in planned if p.template.poison]
        async with Database(self.database.url) as db:
            async with db.engine.connect() as conn:
                files = (
                    await conn.execute(
                        select(
                            schema.files.c.id,
                            schema.files.c.tenant_id,
                            schema.files.c.uri,
                            schema.files.c.chunk_count,
                            schema.files.c.provider,
                            schema.files.c.content_hash,
                        ).where(schema.files.c.tenant_id.in_(TENANTS))
                    )
                ).all()
                chunk_rows = (
                    await conn.execute(
                        select(
                            schema.resources.c.file_id,
                            schema.resources.c.ordinal,
                            schema.resources.c.content,
                        )
                        .where(schema.resources.c.tenant_id.in_(TENANTS))
                        .order_by(schema.resources.c.file_id, schema.resources.c.ordinal)
                    )
                ).all()
                errors = (
                    await conn.execute(
                        select(schema.errors.c.metadata).where(
                            schema.errors.c.tenant_id.in_(TENANTS)
                        )
                    )
                ).all()
                jobs = (
                    await conn.execute(
                        select(
                            schema.jobs.c.status,
                            schema.jobs.c.payload,
                            schema.jobs.c.created_at,
                            schema.jobs.c.updated_at,
                        ).where(schema.jobs.c.tenant_id.in_(TENANTS))
                    )
                ).all()
                resources_total = (
                    await conn.execute(
                        select(func.count())
                        .select_from(schema.resources)
                        .where(schema.resources.c.tenant_id.in_(TENANTS))
                    )
                ).scalar_one()
        letters = await list_dead_letters(self.js)
        pending = 0
        for spec in (tiers.ROUTER, *tiers.TIERS.values()):
            info = await self.js.consumer_info(spec.stream, spec.durable)
            pending += info.num_pending + info.num_ack_pending
            pending += (await self.js.stream_info(spec.stream)).state.messages

        by_uri = Counter(row.uri for row in files)
        files_by_id = {row.id: row for row in files}
        chunks: dict[str, list[str]] = defaultdict(list)
        for row in chunk_rows:
            chunks[row.file_id].append(row.content)
        lost, duplicated, wrong = [], [], []
        for item in good:
            n = by_uri.get(item.uri, 0)
            if n == 0:
                lost.append(item.uri)
                continue
            if n > 1:
                duplicated.append(item.uri)
            file_id = ids.file_id(item.tenant, item.uri)
            row = files_by_id.get(file_id)
            ref = refs[item.template.name]
            texts = chunks.get(file_id, [])
            expected_hash = hashlib.sha256(item.template.data).hexdigest()
            if (
                row is None
                or row.chunk_count != ref.chunks
                or row.provider != ref.provider
                or row.content_hash != expected_hash
                or len(texts) != ref.chunks
                or _digest(texts) != ref.digest
            ):
                wrong.append(item.uri)
        good_uris = {p.uri for p in good}
        poison_uris = {p.uri for p in poison}
        stray_files = [row.uri for row in files if row.uri not in good_uris]
        duplicated += stray_files  # a row nobody planned (or a poison file stored) is wrong too

        error_codes: dict[str, set[str]] = defaultdict(set)
        for (metadata,) in errors:
            meta = metadata if isinstance(metadata, dict) else json.loads(metadata or "{}")
            if meta.get("uri"):
                error_codes[meta["uri"]].add(str(meta.get("code")))
        missing_errors = [
            p.uri for p in poison if p.template.error_code not in error_codes.get(p.uri, set())
        ]
        letters_by_uri = Counter(letter.uri for letter in letters)
        missing_dead_letters = [p.uri for p in poison if letters_by_uri.get(p.uri, 0) != 1]
        unexpected = [uri for uri in letters_by_uri if uri not in poison_uris]

        redeliveries = 0
        end_to_end: list[float] = []
        processing: list[float] = []
        statuses: Counter[str] = Counter()
        unsettled: list[str] = []
        for status, payload, created_at, updated_at in jobs:
            payload = payload if isinstance(payload, dict) else json.loads(payload or "{}")
            redeliveries += max(0, int(payload.get("delivery", 1)) - 1)
            statuses[str(status)] += 1
            if str(status) not in ("DONE", "FAILED"):
                unsettled.append(
                    f"{payload.get('uri')} {status} delivery {payload.get('delivery')} "
                    f"{_utc(created_at).time()}..{_utc(updated_at).time()}"
                )
            if str(status) == "DONE":
                uri = payload.get("uri")
                done = _utc(updated_at)
                if uri in self.published_at:
                    end_to_end.append(done.timestamp() - self.published_at[uri])
                # The row is rewritten whole by each delivery: created_at is when the last
                # delivery started, updated_at when it was committed DONE.
                processing.append((done - _utc(created_at)).total_seconds())
        # One jobs row per event: good ones DONE, poison ones FAILED.
        if statuses != Counter({"DONE": len(good), "FAILED": len(poison)}):
            wrong.append(f"jobs statuses {dict(statuses)}: {unsettled[:5]}")

        return Report(
            events=len(planned),
            good=len(good),
            poison=len(poison),
            files_rows=len(files),
            resources_rows=int(resources_total),
            errors_rows=len(errors),
            dead_letters=len(letters),
            jobs_rows=len(jobs),
            redeliveries=redeliveries,
            pending=pending,
            faults=self.faults,
            lost=lost,
            duplicated=duplicated,
            wrong=wrong,
            missing_errors=missing_errors,
            missing_dead_letters=missing_dead_letters,
            unexpected_dead_letters=unexpected,
            end_to_end=end_to_end,
            processing=processing,
            seconds=time.monotonic() - self.started_at,
        )

    # -- tear-down --------------------------------------------------------------------------
    async def close(self) -> None:
        await asyncio.gather(
            *(asyncio.to_thread(p.terminate, 15) for p in self.processes.values()),
            return_exceptions=True,
        )
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception:
                pass
        if self.proxy is not None:
            self.proxy.close()
        if self.nats is not None and self.nats is not self._given_nats:
            self.nats.stop()

    def logs(self, chars: int = 1500) -> str:
        return "\n".join(
            f"--- {p.name} (exit {p.process.returncode}) ---\n{p.log_tail(chars)}"
            for p in self.processes.values()
        )


def _utc(moment: datetime) -> datetime:
    """Database timestamps come back naive on some dialects; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
