"""Nothing is lost or processed twice under load while workers, the broker, the database and
the object store fail: a burst over the three tiers, processed by real ``p8fs-run`` processes
(one router, two workers per tier) against real servers, with faults injected mid-burst.

The scenario, its fault schedule and the file-by-file verification live in
:mod:`tests.reliability.load_scenario` (``benchmarks/soak.py`` runs the same for longer). Large-
and medium-tier events carry *declared* sizes (100 MiB, 1 GiB - 1, 3 GiB, ...) over real small
objects: the router routes by the declared size, and the test stays fast. Each database test has
a server of its own (``initdb``/``mariadb-install-db`` in a temporary folder) because it is
stopped for ten seconds in the middle of the run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.faults import ThrowawayMariaDB, ThrowawayPostgres
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


@pytest.mark.timeout(300)
async def test_a_burst_survives_kills_and_outages_on_postgresql(
    seaweedfs: Any, tmp_path: Path
) -> None:
    with ThrowawayPostgres.started() as database:
        await _run(database, seaweedfs, tmp_path, events=3000)


@pytest.mark.timeout(200)
async def test_a_smaller_burst_survives_kills_and_outages_on_mariadb(
    seaweedfs: Any, tmp_path: Path
) -> None:
    with ThrowawayMariaDB.started() as database:
        await _run(database, seaweedfs, tmp_path, events=800)
