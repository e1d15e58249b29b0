"""Throughput on a 3-node JetStream cluster with R3 streams, side by side with one server (R1).

Production runs ``P8FS_NATS_REPLICAS=3`` on three nodes: every publish (the router's to a tier,
the dead letters) and every ack is agreed by a majority before it is confirmed. This measures
what that costs, in one run, with the same input for every setup:

* **one server, R1** -- ``nats-server -js`` alone (the development and single-node setup);
* **cluster, R3** -- three clustered ``nats-server`` processes on loopback (the test fixture
  :mod:`tests.fixtures.nats_cluster`), ``P8FS_NATS_URL`` listing all three;
* **cluster, R1** (``--cluster-r1``) -- the same cluster with one copy per stream: separates the
  cost of clustering from the cost of replication.

For each: the publish rate into the events stream (``publish_async``, every PubAck awaited),
then end to end -- ``p8fs-run router`` and one ``p8fs-run worker --tier small`` processing the
same ``--files`` 1 KiB objects from SeaweedFS into a SQLite database of their own (the end-to-end
phase of ``benchmarks/queue_throughput.py``, reused). The last column is R3 / R1.

Run: ``uv run --all-packages --all-extras python benchmarks/cluster_throughput.py [--files 2000]
[--rounds 1] [--cluster-r1]``. Everything shares the machine's cores (three servers on two
cores cost more than on three machines): compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.queue_throughput import end_to_end, event, runner_env, upload_small_files
from p8fs_runner import tiers
from p8fs_runner.embedded import start_nats, start_seaweedfs
from p8fs_runner.topology import ensure_topology
from tests.fixtures.nats_cluster import start_cluster


@dataclass
class Setup:
    """One way of running NATS, and what was measured on it."""

    name: str
    replicas: int
    start: Callable[[Path], Any]
    publish: list[float] = field(default_factory=list)
    files: list[float] = field(default_factory=list)


class _Running(AbstractContextManager[Any]):
    """Start a NATS (single server or cluster) and stop it on exit."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def __enter__(self) -> Any:
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


async def publish_rate(js: Any, n: int) -> float:
    """Events/s into ``P8FS_STORAGE_EVENTS`` with every PubAck awaited (the bridge's path)."""
    started = time.perf_counter()
    for i in range(n):
        await js.publish_async(tiers.EVENTS_SUBJECT, event(f"small/{i:06d}.txt", 1024))
    await js.publish_async_completed()
    return n / (time.perf_counter() - started)


async def measure(setup: Setup, root: Path, weed: Any, n: int) -> None:
    import nats

    with _Running(setup.start(root / "nats")) as server:
        nc = await nats.connect(**server.connect_options())
        try:
            js = nc.jetstream()
            # The publish phase needs the events stream; its messages are then removed so the
            # end-to-end phase starts from the same empty queues as before.
            await ensure_topology(js, (tiers.ROUTER,), replicas=setup.replicas)
            setup.publish.append(await publish_rate(js, n))
            await js.purge_stream(tiers.ROUTER.stream)
            env = runner_env(server, weed, root / "data", None)
            env["P8FS_NATS_REPLICAS"] = str(setup.replicas)
            logs = root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            setup.files.append(await end_to_end(js, env, n, logs))
        finally:
            await nc.close()


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="p8fs-cluster-bench-"))
    weed = start_seaweedfs(root / "weed")
    setups = [
        Setup("one server, R1", 1, lambda d: start_nats(d)),
        Setup("3-node cluster, R3", 3, lambda d: start_cluster(d)),
    ]
    if args.cluster_r1:
        setups.append(Setup("3-node cluster, R1", 1, lambda d: start_cluster(d)))
    try:
        await upload_small_files(weed, args.files)
        for round_no in range(args.rounds):
            for setup in setups:
                where = root / f"round{round_no}" / setup.name.replace(" ", "-").replace(",", "")
                await measure(setup, where, weed, args.files)
                print(
                    f"round {round_no + 1}: {setup.name}: publish {setup.publish[-1]:,.0f} "
                    f"events/s, end to end {setup.files[-1]:,.0f} files/s",
                    flush=True,
                )
    finally:
        weed.stop()

    base = setups[0]
    print(f"\n{args.files:,} x 1 KiB files, median of {args.rounds} round(s)")
    print(
        f"{'setup':<22} {'publish events/s':>17} {'end to end files/s':>19} {'vs one server':>14}"
    )
    for setup in setups:
        pub, e2e = statistics.median(setup.publish), statistics.median(setup.files)
        ratio = e2e / statistics.median(base.files)
        print(f"{setup.name:<22} {pub:>17,.0f} {e2e:>19,.1f} {ratio:>13.2f}x")
    print(f"\n(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; logs in {root})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000, help="1 KiB files per setup")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (setups alternate)")
    parser.add_argument(
        "--cluster-r1", action="store_true", help="also the cluster with one copy per stream"
    )
    asyncio.run(main(parser.parse_args()))
