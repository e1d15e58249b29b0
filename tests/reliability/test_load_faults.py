"""Nothing is lost or processed twice under load while workers, the broker, the database and
the object store fail: a burst over the three tiers, processed by real ``p8fs-run`` processes
(one router, two workers per tier) against real servers, with faults injected mid-burst.

The scenario, its fault schedule and the file-by-file verification live in
:mod:`tests.reliability.load_scenario` (``benchmarks/soak.py`` runs the same for longer). Large-
and medium-tier events carry *declared* sizes (100 MiB, 1 GiB - 1, 3 GiB, ...) over real small
objects: the router routes by the declared size, and the test stays fast. Each database test has
a server of its own (``initdb``/``mariadb-install-db`` in a temporary folder) because it is
stopped for ten seconds in the middle of the run.

A third test makes the worker's narrowest window certain instead of hoping a SIGKILL hits it:
a worker whose acks never reach the broker (a proxy drops them) commits every file, is killed,
and another one redoes every event.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from p8fs_runner import tiers
from tests.reliability.faults import (
    DropJetStreamAcks,
    PausableProxy,
    ThrowawayMariaDB,
    ThrowawayPostgres,
)
from tests.reliability.load_scenario import LoadScenario, load_templates, plan, reference_ingest


async def _run(database: Any, seaweedfs: Any, tmp_path: Path, events: int) -> None:
    good, poison = load_templates()
    refs = await reference_ingest(good, poison, tmp_path / "reference")
    items = plan(events, 0, good, poison)
    scenario = LoadScenario(database=database, seaweedfs=seaweedfs, work_dir=tmp_path / "run")
    try:
        # The processes start while the objects upload: neither needs the other.
        await asyncio.gather(scenario.start(), scenario.upload(items))
        await scenario.publish(items)
        await scenario.inject_faults(len(items))
        await scenario.wait_settled(limit=120)
        report = await scenario.verify(refs)
    except BaseException:
        print(scenario.logs())
        raise
    finally:
        await scenario.close()
    print(f"\n{type(database).__name__}: " + "\n  ".join(["", *report.lines(), *report.faults.log]))
    assert report.faults.worker_kills == 3
    assert (
        report.faults.nats_restarts == report.faults.database_stops == report.faults.s3_outages == 1
    )
    assert not report.lost, f"{len(report.lost)} good files lost, e.g. {report.lost[:5]}"
    assert not report.duplicated, f"duplicated or stray files: {report.duplicated[:5]}"
    assert not report.wrong, f"files whose rows differ from the reference: {report.wrong[:5]}"
    assert not report.missing_errors, f"poison without errors row: {report.missing_errors[:5]}"
    assert not report.missing_dead_letters, (
        f"poison without exactly one dead letter: {report.missing_dead_letters[:5]}"
    )
    assert not report.unexpected_dead_letters, (
        f"good files dead-lettered: {report.unexpected_dead_letters[:5]}"
    )
    assert report.pending == 0, "messages left in a stream or waiting for an ack"
    assert report.files_rows == report.good
    assert report.dead_letters == report.poison
    assert report.jobs_rows == report.events
    # The faults really hit messages in flight: some were delivered more than once.
    assert report.redeliveries > 0


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.timeout(300)
async def test_a_burst_survives_kills_and_outages_on_postgresql(
    seaweedfs: Any, tmp_path: Path
) -> None:
    with ThrowawayPostgres.started() as database:
        await _run(database, seaweedfs, tmp_path, events=3000)


@pytest.mark.slow
@pytest.mark.mariadb
@pytest.mark.timeout(200)
async def test_a_smaller_burst_survives_kills_and_outages_on_mariadb(
    seaweedfs: Any, tmp_path: Path
) -> None:
    with ThrowawayMariaDB.started() as database:
        await _run(database, seaweedfs, tmp_path, events=800)


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.timeout(120)
async def test_a_worker_whose_acks_are_lost_after_the_commit_stores_each_file_once(
    seaweedfs: Any, pg_url: str, tmp_path: Path
) -> None:
    """The worker's narrowest window, made certain: every file committed (rows and DONE job)
    but its ack never reaching the broker, as if the worker died right after each commit.

    A proxy in front of NATS drops the worker's acks, naks, terms and heartbeats and passes
    everything else; once all the files are settled in the database the worker is SIGKILLed
    and a normal one takes over the redeliveries. Every event is then processed at least
    twice, and each file must still be stored exactly once, each poison file dead-lettered
    exactly once.
    """
    good, poison = load_templates()
    refs = await reference_ingest(good, poison, tmp_path / "reference")
    items = [item for item in plan(200, 0, good, poison) if item.tier == "small"]
    scenario = LoadScenario(
        database=SimpleNamespace(url=pg_url),
        seaweedfs=seaweedfs,
        work_dir=tmp_path / "run",
        workers_per_tier=0,
    )
    proxy: PausableProxy | None = None
    try:
        await asyncio.gather(scenario.start(), scenario.upload(items))
        assert scenario.nats is not None
        proxy = PausableProxy(
            "127.0.0.1", scenario.nats.server.port, upstream_filter=DropJetStreamAcks
        )
        lossy = scenario.spawn(
            "small-acks-lost",
            ["worker", "--tier", "small"],
            env={"P8FS_NATS_URL": f"nats://127.0.0.1:{proxy.port}"},
        )
        await scenario.publish(items)

        async def all_settled_in_database() -> bool:
            assert lossy.alive(), lossy.log_tail()
            return await scenario.settled_jobs() == len(items)

        await scenario.until(all_settled_in_database, limit=60, what="every job DONE or FAILED")
        scenario.killed.add(lossy.name)
        lossy.kill()
        info = await scenario.js.consumer_info(tiers.SMALL.stream, tiers.SMALL.durable)
        unacked = info.num_ack_pending + info.num_pending
        acks_dropped = sum(f.dropped for f in proxy.filters)
        assert unacked == len(items), "an ack got through: the test proves nothing"

        scenario.spawn("small", ["worker", "--tier", "small"])
        await scenario.wait_settled(limit=60)
        report = await scenario.verify(refs)
    except BaseException:
        print(scenario.logs())
        raise
    finally:
        await scenario.close()
        if proxy is not None:
            proxy.close()
    print(
        f"\nacks lost: {len(items)} events, {acks_dropped} acks/heartbeats dropped, "
        f"{unacked} unacked at the kill; " + "; ".join(report.lines()[:7])
    )
    assert not report.lost and not report.duplicated and not report.wrong, report.lines()
    assert not report.missing_errors and not report.missing_dead_letters
    assert not report.unexpected_dead_letters
    assert report.pending == 0
    assert report.files_rows == report.good and report.dead_letters == report.poison
    assert report.redeliveries >= len(items)  # every event was delivered at least twice
