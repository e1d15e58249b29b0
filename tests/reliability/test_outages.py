"""Outages longer than the retry budget cost no good file: workers pause, hold, and resume.

A small-tier message is dead-lettered after 5 deliveries, 60 + 120 + 300 + 600 s apart: about
18 minutes. Spending deliveries on a dependency outage would send every good file in flight to
the dead-letter queue during a 30-minute database outage. The workers instead ask their probes
when a failure may not be the file's, stop pulling while the database or S3 is down (or refuses
their credentials), keep what they hold, and carry on when the dependency answers.

The scenario runs real ``p8fs-run`` processes (router, one worker per tier) against a private
PostgreSQL, the session's SeaweedFS and nats-server, with every tier's backoff divided by
:data:`SCALE` through ``P8FS_TIER_OVERRIDES``, and the outage divided by the same: the ratio of
outage to retry budget is the production one (30 min against 18 min on the small tier).

1. The workers start with S3 credentials that SeaweedFS does not know (403 on every read) while
   a burst arrives: they pause, say why on ``/readyz``, and stay paused for longer than the
   small tier's whole retry budget; then the operator grants the credentials (``weed shell
   s3.configure -apply``, no restart of anything) and processing resumes.
2. Mid-burst, PostgreSQL stops for the scaled 30 minutes, then starts again.

Afterwards: every good file stored once with the reference's chunks, no good file
dead-lettered, each poison file dead-lettered once, nothing left in the queues.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from p8fs_runner import tiers
from tests.reliability.faults import RunnerProcess, ThrowawayPostgres, grant_s3_identity
from tests.reliability.load_scenario import LoadScenario, load_templates, plan, reference_ingest

#: Every backoff, and the outages, divided by this (the ratio between them is kept).
SCALE = 40
#: The small tier's retry budget in production: the sum of its backoff (18 min).
SMALL_BUDGET = sum(tiers.SMALL.backoff)
#: The database outage of the issue: 30 minutes.
DATABASE_OUTAGE = 30 * 60
#: "Resumes within seconds": from the dependency answering to the next file settled.
RESUME_LIMIT = 15.0


def scaled_overrides() -> dict[str, dict[str, Any]]:
    return {
        spec.name: {
            "backoff": [round(b / SCALE, 3) for b in spec.backoff],
            "max_deliver": spec.max_deliver,
        }
        for spec in (tiers.ROUTER, *tiers.TIERS.values())
    }


def readyz(process: RunnerProcess) -> tuple[int, str]:
    try:
        url = f"http://127.0.0.1:{process.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def workers(scenario: LoadScenario) -> list[RunnerProcess]:
    return [p for p in scenario.processes.values() if p.args[0] == "worker"]


async def good_files_dead_lettered(scenario: LoadScenario, poison: set[str]) -> list[str]:
    """URIs of dead letters that are not poison files (must stay empty)."""
    from p8fs_runner.dlq import list_dead_letters

    return [letter.uri for letter in await list_dead_letters(scenario.js) if letter.uri not in poison]


async def resumed_after(scenario: LoadScenario, since: float, of: int) -> float:
    """Seconds from ``since`` until the queues shrink again (a file settled)."""
    before = await scenario.remaining()
    assert before, "nothing left to process: the outage came too late"

    async def moved() -> bool:
        left = await scenario.remaining()
        return left is not None and left < before

    await scenario.until(moved, limit=120, what="processing to resume")
    return time.monotonic() - since


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.timeout(420)
async def test_outages_longer_than_the_retry_budget_dead_letter_no_good_file(
    seaweedfs: Any, tmp_path: Path
) -> None:
    good, poison = load_templates()
    refs = await reference_ingest(good, poison, tmp_path / "reference")
    items = plan(400, 0, good, poison)
    poisoned = {item.uri for item in items if item.template.poison}
    access_key, secret_key = "outage" + secrets.token_hex(6), secrets.token_urlsafe(24)
    budget, outage = SMALL_BUDGET / SCALE, DATABASE_OUTAGE / SCALE
    with ThrowawayPostgres.started() as database:
        scenario = LoadScenario(
            database=database,
            seaweedfs=seaweedfs,
            work_dir=tmp_path / "run",
            workers_per_tier=1,
            env={
                "P8FS_TIER_OVERRIDES": json.dumps(scaled_overrides()),
                # Credentials SeaweedFS does not know yet: every read is refused (403).
                "P8FS_S3_ACCESS_KEY": access_key,
                "P8FS_S3_SECRET_KEY": secret_key,
            },
        )
        notes: list[str] = []
        try:
            await asyncio.gather(scenario.start(), scenario.upload(items))
            await scenario.publish(items)

            # 1. S3 refuses the workers' credentials: each worker pauses and says why.
            async def all_paused_on_s3() -> bool:
                answers = await asyncio.gather(
                    *(asyncio.to_thread(readyz, w) for w in workers(scenario))
                )
                return all(code == 503 and "paused: S3" in body for code, body in answers)

            await scenario.until(all_paused_on_s3, limit=60, what="every worker to pause on S3")
            held_since = time.monotonic()
            await asyncio.sleep(outage)  # longer than the small tier's whole retry budget
            assert not await good_files_dead_lettered(scenario, poisoned)
            status, body = await asyncio.to_thread(readyz, workers(scenario)[0])
            assert status == 503 and "P8FS_S3_ACCESS_KEY" in body, body
            fixed = time.monotonic()
            await asyncio.to_thread(grant_s3_identity, seaweedfs, "p8fs-worker", access_key, secret_key)
            s3_resume = await resumed_after(scenario, fixed, len(items))
            notes.append(
                f"S3 refused the credentials for {fixed - held_since:.0f}s (budget {budget:.0f}s); "
                f"resumed {s3_resume:.1f}s after they were granted"
            )

            # 2. The database stops mid-burst for the (scaled) 30 minutes.
            async def a_third_done() -> bool:
                return await scenario.progress(len(items)) >= 0.3

            await scenario.until(a_third_done, limit=120, what="30% of the burst settled")
            await asyncio.to_thread(database.stop)
            stopped = time.monotonic()

            async def a_worker_paused_on_the_database() -> bool:
                answers = await asyncio.gather(
                    *(asyncio.to_thread(readyz, w) for w in workers(scenario))
                )
                return any("paused: database unavailable" in body for _, body in answers)

            await scenario.until(
                a_worker_paused_on_the_database, limit=30, what="a worker to pause on the database"
            )
            await asyncio.sleep(max(0.0, outage - (time.monotonic() - stopped)))
            assert not await good_files_dead_lettered(scenario, poisoned)
            await asyncio.to_thread(database.start)
            restarted = time.monotonic()
            db_resume = await resumed_after(scenario, restarted, len(items))
            notes.append(
                f"PostgreSQL down {restarted - stopped:.0f}s (budget {budget:.0f}s); "
                f"resumed {db_resume:.1f}s after it answered"
            )

            await scenario.wait_settled(limit=240)
            report = await scenario.verify(refs)
        except BaseException:
            print(scenario.logs())
            raise
        finally:
            await scenario.close()
    print("\n  " + "\n  ".join([*notes, *report.lines()]))
    assert s3_resume < RESUME_LIMIT and db_resume < RESUME_LIMIT, notes
    # Each good file stored once with the reference's chunks (none dead-lettered), each poison
    # file with its errors row and one dead letter, one jobs row per event, nothing queued.
    assert not report.failures(), report.failures()
