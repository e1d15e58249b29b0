"""The filer's log is not strictly in time order, and the bridge must not lose what it meets late.

SeaweedFS stamps a change's ``ts_ns`` before taking its log lock, so concurrent writers log
changes slightly out of time order (measured here: dozens in a few thousand, by up to ~80 ms).
A bridge that skipped "anything at or before the checkpoint" lost such changes: within a live
stream (a change stamped before the last checkpoint arrives after it), and on a replay (a change
the crashed bridge never sent, stamped just before the checkpoint it saved).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from p8fs_runner.bridge import FilerBridge, change_document
from p8fs_runner.embedded import EmbeddedSeaweedFS
from p8fs_runner.events import parse_event
from p8fs_runner.settings import RunnerSettings
from tests.runner.test_bridge import RunningBridge, _connect, stream_messages, wait_for

#: Files created at once through the filer's gRPC API in the live test.
CONCURRENT_CREATES = 1500


def _created(bucket: str, name: str, ts_ns: int, size: int = 5) -> dict[str, Any]:
    """A real filer change (protobuf, converted as the bridge converts what it receives)."""
    from p8fs_runner.filer_pb import filer_pb2

    entry = filer_pb2.Entry(
        name=name, attributes=filer_pb2.FuseAttributes(file_size=size, mime="text/plain")
    )
    response = filer_pb2.SubscribeMetadataResponse(
        directory=f"/buckets/{bucket}",
        event_notification=filer_pb2.EventNotification(
            new_entry=entry, new_parent_path=f"/buckets/{bucket}"
        ),
        ts_ns=ts_ns,
    )
    return change_document(response)


async def test_a_replay_sends_a_change_stamped_before_the_checkpoint_it_never_sent(
    runner_settings: RunnerSettings,
) -> None:
    """The filer logged C, A, B with B stamped 50 ms before A. A bridge published C and A,
    checkpointed A's time and died before B. The next one replays C, A, B: it must skip C and
    A (the checkpoint covers them) and publish B, which is older than the checkpoint."""
    bucket = "t-order"
    nc, js = await _connect(runner_settings)
    stop = asyncio.Event()
    now = time.time_ns()
    a = _created(bucket, "a.txt", now)
    b = _created(bucket, "b.txt", now - 50_000_000)
    c = _created(bucket, "c.txt", now - 3_000_000_000)
    try:
        first = FilerBridge(runner_settings, nc)
        first.start_replay(await first.open_checkpoint())
        newest = await first.publish_batch([c, a], stop)
        assert newest == now
        await first.save_checkpoint(newest)

        second = FilerBridge(runner_settings, nc)
        checkpoint = await second.open_checkpoint()
        assert checkpoint == now
        second.start_replay(checkpoint)
        await second.publish_batch([c, a, b], stop)
        messages = await stream_messages(js)
    finally:
        await nc.close()
    assert [body["key"] for _, body in messages] == ["c.txt", "a.txt", "b.txt"]
    # Skipped by the checkpoint (C by time, A by its id in the checkpoint's recent window),
    # not merely dropped by the stream's duplicate window.
    assert second.stats.published == 1 and second.stats.duplicates == 0
    assert second.stats.skipped_before_checkpoint == 2


async def test_concurrent_writes_are_all_published_once(
    runner_settings: RunnerSettings, seaweedfs: EmbeddedSeaweedFS, s3_bucket: str
) -> None:
    """Many files created at once through the filer's gRPC API while the bridge follows:
    every one is published exactly once, however the filer ordered their timestamps."""
    import grpc

    from p8fs_runner.filer_pb import filer_pb2, filer_pb2_grpc

    settings = runner_settings.model_copy(
        update={"bridge_path_prefix": f"/buckets/{s3_bucket}", "bridge_start_ago": 600.0}
    )
    nc, js = await _connect(settings)
    names = [f"f{i:05d}.txt" for i in range(CONCURRENT_CREATES)]
    channel = grpc.aio.insecure_channel(f"{seaweedfs.host}:{seaweedfs.filer_port + 10000}")
    stub = filer_pb2_grpc.SeaweedFilerStub(channel)
    slots = asyncio.Semaphore(32)

    async def create(name: str) -> None:
        entry = filer_pb2.Entry(
            name=name, attributes=filer_pb2.FuseAttributes(file_size=7, mime="text/plain")
        )
        async with slots:
            await stub.CreateEntry(
                filer_pb2.CreateEntryRequest(directory=f"/buckets/{s3_bucket}", entry=entry)
            )

    try:
        async with RunningBridge(settings) as running:
            started = time.perf_counter()
            await asyncio.gather(*(create(name) for name in names))

            async def all_published() -> bool:
                assert running.bridge is not None
                return running.bridge.stats.published >= CONCURRENT_CREATES

            await wait_for(all_published, within=120)
            elapsed = time.perf_counter() - started
            await asyncio.sleep(1.0)
        messages = await stream_messages(js)
    finally:
        await channel.close()
        await nc.close()
    events = [parse_event(body) for _, body in messages]
    assert sorted(e.key for e in events if e is not None) == names
    assert running.stats.skipped_before_checkpoint == 0 and running.stats.duplicates == 0
    stamps = [e.ts_ns or 0 for e in events if e is not None]
    late, newest = 0, 0
    for stamp in stamps:
        late += stamp < newest
        newest = max(newest, stamp)
    print(
        f"\n{CONCURRENT_CREATES} concurrent creates published in {elapsed:.2f} s "
        f"({CONCURRENT_CREATES / elapsed:.0f}/s); {late} logged out of time order"
    )
