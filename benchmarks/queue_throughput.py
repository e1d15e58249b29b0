"""Queue throughput end to end, side by side with the floor no worker can beat.

Everything runs on real servers started here (``nats-server`` and ``weed mini`` on loopback,
SQLite in a temporary folder unless ``--database-url`` is given), in one run:

* **bare loop** — the floor: one process that only does ``fetch`` + S3 GET + ``ack`` for every
  event, at the worker's concurrency (s3fs's asyncio API, no parsing, no database);
* **end to end** — ``p8fs-run router`` and one ``p8fs-run worker --tier small`` as processes:
  parse, route by size with ``Nats-Msg-Id``, fetch, S3 GET, extract, chunk, one transaction per
  file, ``jobs`` row, ack. Timed from the first publish until the small tier has acked all.

Target: end to end at least 50% of the bare loop's files/s. Also measured:

* the worker's time from process start to its first fetch (a pull request waiting on the
  server, read from ``consumer info``): target under 1 s;
* peak RSS (``VmHWM``) of a ``large`` worker processing one big text file (``--big-mib``,
  default 2048) and of a small worker on a 20 MiB file: target under 300 MB, flat in file size.

Run: ``uv run --all-packages --all-extras python benchmarks/queue_throughput.py
[--files 10000] [--big-mib 2048] [--database-url URL]``. The figures depend on the machine's
load: compare the two columns of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p8fs_runner import tiers
from p8fs_runner.embedded import start_nats, start_seaweedfs
from p8fs_runner.topology import ensure_topology

BUCKET = "bench"
LINE = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
BARE = tiers.QueueSpec(
    name="bare",
    subject="bench.bare",
    stream="BENCH_BARE",
    durable="bare",
    backoff=(60.0,),
    max_deliver=3,
    max_ack_pending=tiers.SMALL.max_ack_pending,
    batch=tiers.SMALL.batch,
    concurrency=tiers.SMALL.concurrency,
)


def one_kib(i: int) -> bytes:
    head = f"file {i}\n".encode()
    return (head + LINE * 12)[:1024]


def event(key: str, size: int) -> bytes:
    return json.dumps(
        {
            "event_type": "create",
            "path": f"/buckets/{BUCKET}/{key}",
            "size": size,
            "mime_type": "text/plain",
        }
    ).encode()


def runner_env(nats: Any, weed: Any, data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "P8FS_NATS_URL": nats.address,
        "P8FS_NATS_USER": nats.user,
        "P8FS_NATS_PASSWORD": nats.password.get_secret_value(),
        "P8FS_SEAWEEDFS_ENDPOINT": weed.endpoint,
        "P8FS_S3_ACCESS_KEY": weed.access_key,
        "P8FS_S3_SECRET_KEY": weed.secret_key,
        "P8FS_DATA_DIR": str(data_dir),
        "P8FS_METRICS_PORT": "0",
    }
    if database_url:
        env["P8FS_DATABASE_URL"] = database_url
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "p8fs_runner", *args],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def upload_small_files(weed: Any, n: int) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **weed.storage_options())
    session = await fs.set_session()
    try:
        if not await fs._exists(BUCKET):
            await fs._mkdir(BUCKET)
        sem = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with sem:
                await fs._pipe_file(f"{BUCKET}/small/{i:06d}.txt", one_kib(i))

        await asyncio.gather(*(put(i) for i in range(n)))
    finally:
        await session.close()


async def bare_loop(js: Any, weed: Any, n: int) -> float:
    """fetch + S3 GET + ack at the small tier's batch and concurrency: the floor."""
    import s3fs

    await ensure_topology(js, (BARE,))
    for i in range(n):
        await js.publish_async(BARE.subject, event(f"small/{i:06d}.txt", 1024))
    await js.publish_async_completed()
    fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **weed.storage_options())
    session = await fs.set_session()
    sub = await js.pull_subscribe_bind(durable=BARE.durable, stream=BARE.stream)
    sem = asyncio.Semaphore(BARE.concurrency)
    done = 0
    pending: set[asyncio.Task[None]] = set()

    async def handle(msg: Any) -> None:
        nonlocal done
        async with sem:
            path = json.loads(msg.data)["path"].removeprefix("/buckets/")
            data = await fs._cat_file(path)
            assert len(data) == 1024
            await msg.ack()
            done += 1

    started = time.perf_counter()
    while done < n:
        room = BARE.concurrency + BARE.batch - len(pending)
        if room <= 0:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            continue
        try:
            msgs = await sub.fetch(min(BARE.batch, room), timeout=1)
        except (TimeoutError, Exception):
            continue
        for msg in msgs:
            task = asyncio.create_task(handle(msg))
            pending.add(task)
            task.add_done_callback(pending.discard)
    elapsed = time.perf_counter() - started
    await session.close()
    return n / elapsed


async def wait_acked(js: Any, spec: tiers.QueueSpec, n: int, limit: float) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        info = await js.consumer_info(spec.stream, spec.durable)
        if info.ack_floor.stream_seq >= n and info.num_ack_pending == 0 and info.num_pending == 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{spec.durable} did not ack {n} messages within {limit:.0f}s")


async def end_to_end(js: Any, env: dict[str, str], n: int, logs: Path) -> float:
    router = spawn(["router"], env, logs / "router.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(300):  # a worker started before the router exits: "run the router first"
            try:
                await js.consumer_info(tiers.SMALL.stream, tiers.SMALL.durable)
                break
            except Exception:
                await asyncio.sleep(0.1)
        worker = spawn(["worker", "--tier", "small"], env, logs / "worker.log")
        for _ in range(300):  # both bound: the router's topology exists, the worker is pulling
            try:
                info = await js.consumer_info(tiers.SMALL.stream, tiers.SMALL.durable)
                if info.num_waiting >= 1:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        started = time.perf_counter()
        for i in range(n):
            await js.publish_async(tiers.EVENTS_SUBJECT, event(f"small/{i:06d}.txt", 1024))
        await js.publish_async_completed()
        await wait_acked(js, tiers.SMALL, n, limit=max(600.0, n * 0.5))
        return n / (time.perf_counter() - started)
    finally:
        if worker is not None:
            stop(worker)
        stop(router)


async def start_to_first_fetch(
    js: Any, env: dict[str, str], logs: Path, repeat: int = 3
) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        worker = spawn(["worker", "--tier", "medium"], env, logs / "first-fetch.log")
        try:
            while True:
                info = await js.consumer_info(tiers.MEDIUM.stream, tiers.MEDIUM.durable)
                if info.num_waiting >= 1:
                    times.append(time.perf_counter() - started)
                    break
                await asyncio.sleep(0.005)
        finally:
            stop(worker)
        await asyncio.sleep(1.5)  # let the server expire the dead worker's pull request
    return times


async def peak_memory(
    js: Any, weed: Any, env: dict[str, str], mib: int, tier: str, logs: Path
) -> float:
    """Upload one ``mib`` MiB text file, process it with a ``tier`` worker, return its VmHWM."""
    import s3fs

    key = f"big/{mib}MiB.txt"
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **weed.storage_options())
    block = (LINE * ((1 << 20) // len(LINE) + 1))[: 1 << 20]
    with fs.open(f"{BUCKET}/{key}", "wb", block_size=64 << 20) as out:
        for _ in range(mib):
            out.write(block)
    spec = tiers.queue(tier)
    before = (await js.consumer_info(spec.stream, spec.durable)).ack_floor.stream_seq
    worker = spawn(["worker", "--tier", tier], env, logs / f"memory-{mib}.log")
    try:
        # Straight to the tier (no router runs in this phase; routing is measured above).
        await js.publish(spec.subject, event(key, mib << 20))
        peak = 0.0
        end = time.monotonic() + 3600
        while time.monotonic() < end:
            peak = max(peak, peak_rss_mb(worker.pid))
            info = await js.consumer_info(spec.stream, spec.durable)
            if info.ack_floor.stream_seq > before and info.num_ack_pending == 0:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the {tier} worker exited ({worker.returncode}); see {logs}")
            await asyncio.sleep(0.5)
        size = fs.info(f"{BUCKET}/{key}")["size"]
        if size != mib << 20:
            raise RuntimeError(f"uploaded {size} bytes instead of {mib} MiB")
        return max(peak, peak_rss_mb(worker.pid))
    finally:
        stop(worker)


class Rows(list[tuple[str, str, str]]):
    """Result rows, each also printed as soon as it is measured (a long run shows progress)."""

    def append(self, row: tuple[str, str, str]) -> None:
        super().append(row)
        print(" | ".join(row), flush=True)


async def main(args: argparse.Namespace) -> None:
    import nats

    root = Path(tempfile.mkdtemp(prefix="p8fs-queue-bench-"))
    logs = root / "logs"
    logs.mkdir()
    nats_server = start_nats(root / "nats")
    weed = start_seaweedfs(root / "weed")
    try:
        nc = await nats.connect(**nats_server.connect_options())
        js = nc.jetstream()
        env = runner_env(nats_server, weed, root / "data", args.database_url)
        rows = Rows()

        await upload_small_files(weed, args.files)
        bare = await bare_loop(js, weed, args.files)
        rows.append(
            (
                f"bare loop: fetch + S3 GET + ack ({args.files:,} x 1 KiB)",
                f"{bare:,.0f} files/s",
                "",
            )
        )
        e2e = await end_to_end(js, env, args.files, logs)
        rows.append(
            (
                "end to end: router + 1 small worker + SeaweedFS + database",
                f"{e2e:,.0f} files/s",
                f"{e2e / bare:.0%} of the bare loop (target >= 50%)",
            )
        )
        firsts = await start_to_first_fetch(js, env, logs)
        rows.append(
            (
                "worker start to first fetch (median of 3)",
                f"{statistics.median(firsts):.2f} s",
                "target < 1 s; all: " + ", ".join(f"{t:.2f}" for t in firsts),
            )
        )
        if args.small_mib:
            rss = await peak_memory(js, weed, env, args.small_mib, "small", logs)
            rows.append(
                (
                    f"peak RSS, small worker, {args.small_mib} MiB text file",
                    f"{rss:,.0f} MB",
                    "target < 300 MB",
                )
            )
        if args.big_mib:
            tier = tiers.tier_for_size(args.big_mib << 20).name
            rss = await peak_memory(js, weed, env, args.big_mib, tier, logs)
            rows.append(
                (
                    f"peak RSS, {tier} worker, {args.big_mib:,} MiB text file",
                    f"{rss:,.0f} MB",
                    "target < 300 MB",
                )
            )
        await nc.close()
    finally:
        weed.stop()
        nats_server.stop()

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  {'result':>14}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")
    print(f"\n(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; logs in {logs})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--files", type=int, default=10_000, help="1 KiB files for the throughput runs"
    )
    parser.add_argument("--big-mib", type=int, default=2048, help="size of the big file (0: skip)")
    parser.add_argument(
        "--small-mib", type=int, default=20, help="size of the small file (0: skip)"
    )
    parser.add_argument("--database-url", default=None, help="P8FS_DATABASE_URL for the workers")
    asyncio.run(main(parser.parse_args()))
