"""Soak: the load-and-faults scenario of ``tests/reliability/test_load_faults.py``, for minutes.

Everything is real and started here: ``nats-server`` and ``weed mini`` on loopback, a throwaway
PostgreSQL (``initdb``) or MariaDB (``mariadb-install-db``) in a temporary folder, one
``p8fs-run router`` and ``--workers-per-tier`` ``p8fs-run worker --tier T`` processes per tier.
Rounds repeat until ``--minutes`` have passed (at least one round); each round uploads and
publishes ``--events`` new events (good files from corpus templates, one in 13 a poison file;
declared sizes on both sides of both tier thresholds over small real objects) and injects the
fault schedule while they are processed: three mid-file worker SIGKILLs (each replaced), one
nats-server restart, the database stopped for ``--database-outage`` seconds, S3 unreachable for
``--s3-outage`` seconds. At the end every file is checked against a reference ingest, and the
report printed:

    events, faults injected, lost, duplicated, dead-lettered, redeliveries,
    p50/p99 latency from publish to the DONE jobs row, p50/p99 pipeline time per file

Run: ``uv run --all-packages --all-extras python benchmarks/soak.py --minutes 5 --events 1500
--database pg``. Exit status 1 when anything was lost, duplicated or wrongly dead-lettered.
The latencies depend on the machine's load and on the faults (a file waiting out a database
outage counts its wait): compare runs of one machine, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p8fs_runner.embedded import start_seaweedfs
from tests.reliability.faults import ThrowawayMariaDB, ThrowawayPostgres
from tests.reliability.load_scenario import (
    LoadScenario,
    load_templates,
    plan,
    reference_ingest,
)


async def soak(args: argparse.Namespace, database: object, weed: object, work: Path) -> bool:
    good, poison = load_templates()
    refs = await reference_ingest(good, poison, work / "reference")
    scenario = LoadScenario(
        database=database,
        seaweedfs=weed,
        work_dir=work / "run",
        workers_per_tier=args.workers_per_tier,
    )
    deadline = time.monotonic() + args.minutes * 60
    rounds = 0
    try:
        items = plan(args.events, rounds, good, poison)
        await asyncio.gather(scenario.start(), scenario.upload(items))
        while rounds == 0 or time.monotonic() < deadline:
            started = time.monotonic()
            if rounds:
                items = plan(args.events, rounds, good, poison)
                await scenario.upload(items)
            await scenario.publish(items)
            if args.faults:
                await scenario.inject_faults(
                    len(items), database_outage=args.database_outage, s3_outage=args.s3_outage
                )
            await scenario.wait_settled(limit=max(300.0, args.events * 0.5))
            rounds += 1
            print(
                f"round {rounds}: {len(items):,} events settled in "
                f"{time.monotonic() - started:.1f}s ({scenario.faults.total} faults so far)",
                flush=True,
            )
        report = await scenario.verify(refs)
    except BaseException:
        print(scenario.logs(), file=sys.stderr)
        raise
    finally:
        await scenario.close()

    kind = "PostgreSQL" if isinstance(database, ThrowawayPostgres) else "MariaDB"
    print(
        f"\nsoak on {kind}: {rounds} round(s) of {args.events:,} events, "
        f"{args.workers_per_tier} worker(s) per tier"
    )
    for line in report.lines():
        print(f"  {line}")
    print("  faults:")
    for entry in report.faults.log:
        print(f"    {entry}")
    return report.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1500, help="events per round")
    parser.add_argument("--minutes", type=float, default=5.0, help="keep starting rounds until")
    parser.add_argument("--database", choices=("pg", "mysql"), default="pg")
    parser.add_argument("--workers-per-tier", type=int, default=2)
    parser.add_argument("--database-outage", type=float, default=10.0, help="seconds")
    parser.add_argument("--s3-outage", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--no-faults", dest="faults", action="store_false", help="the same load, no faults"
    )
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p8fs-soak-")))
        server = ThrowawayPostgres if args.database == "pg" else ThrowawayMariaDB
        database = stack.enter_context(server.started())
        weed = stack.enter_context(start_seaweedfs(work / "seaweedfs"))
        ok = asyncio.run(soak(args, database, weed, work))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
