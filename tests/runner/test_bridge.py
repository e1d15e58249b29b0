"""The SeaweedFS -> NATS bridge against a real ``weed mini`` and a real ``nats-server``: changes
made through S3 and the filer arrive on ``p8fs.storage.events`` typed correctly, and a restart
replays what was missed exactly once (by checkpoint, and by ``Nats-Msg-Id`` when the checkpoint
lagged behind what was sent). The bridge follows the filer's gRPC ``SubscribeMetadata`` stream;
a filer restart under load is in ``test_bridge_restart.py``, the stubs in ``test_bridge_stubs.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.js.client import JetStreamContext

from p8fs.errors import ConfigurationError
from p8fs_runner.bridge import (
    BridgeStats,
    FilerBridge,
    checkpoint_key,
    filer_grpc_address,
    raw_msg_id,
    since_ns,
)
from p8fs_runner.embedded import EmbeddedSeaweedFS
from p8fs_runner.events import parse_event
from p8fs_runner.settings import RunnerSettings
from p8fs_runner.tiers import EVENTS_STREAM, ROUTER
from p8fs_runner.topology import stream_config

# -- pure parts ------------------------------------------------------------------------------


def _settings(**values: Any) -> RunnerSettings:
    return RunnerSettings(_env_file=None, **values)


def test_since_replays_from_the_checkpoint_minus_the_margin() -> None:
    settings = _settings(bridge_replay_margin=5, bridge_start_ago=60)
    now = 1_800_000_000 * 10**9
    assert since_ns(None, settings, now_ns=now) == now - 60 * 10**9
    # Filer timestamps only: the local clock plays no part once there is a checkpoint.
    assert since_ns(now - 10**9, settings, now_ns=0) == now - 6 * 10**9
    assert since_ns(10**9, settings) == 0
    assert checkpoint_key("/buckets") != checkpoint_key("/buckets/t-a")


def test_filer_grpc_address_is_the_filer_port_plus_10000_unless_set() -> None:
    assert filer_grpc_address(_settings(seaweedfs_filer="10.0.0.5:8888"))[0] == "10.0.0.5:18888"
    assert filer_grpc_address(_settings(seaweedfs_filer="http://filer:8888"))[0] == "filer:18888"
    assert filer_grpc_address(_settings(seaweedfs_filer="[::1]:8888"))[0] == "[::1]:18888"
    explicit = _settings(seaweedfs_filer="filer:8888", bridge_filer_grpc="filer-grpc:9999")
    assert filer_grpc_address(explicit) == ("filer-grpc:9999", "P8FS_BRIDGE_FILER_GRPC")
    # The explicit gRPC address alone is enough.
    assert filer_grpc_address(_settings(bridge_filer_grpc="f:1"))[0] == "f:1"
    with pytest.raises(ConfigurationError, match=r"P8FS_SEAWEEDFS_FILER.*P8FS_BRIDGE_FILER_GRPC"):
        filer_grpc_address(_settings())
    with pytest.raises(ConfigurationError, match="P8FS_SEAWEEDFS_FILER='filer' is not host:port"):
        filer_grpc_address(_settings(seaweedfs_filer="filer"))
    with pytest.raises(ConfigurationError, match="P8FS_BRIDGE_FILER_GRPC"):
        filer_grpc_address(_settings(bridge_filer_grpc="f:notaport"))


def test_raw_ids_ignore_the_order_of_map_fields() -> None:
    """The filer re-marshals each change when sending it, and Go writes map fields in random
    order: a replayed refused change must still get the id it had the first time."""
    one = {"directory": "/b", "tsNs": "1", "extended": {"a": "1", "b": "2"}}
    two = {"tsNs": "1", "extended": {"b": "2", "a": "1"}, "directory": "/b"}
    assert raw_msg_id(one) == raw_msg_id(two)
    assert raw_msg_id(one) != raw_msg_id({**one, "tsNs": "2"})


# -- against the real servers --------------------------------------------------------------------


@pytest.fixture
def bridge_settings(runner_settings: RunnerSettings, s3_bucket: str) -> RunnerSettings:
    # Follow only this test's bucket: the session's weed mini is shared with other tests.
    return runner_settings.model_copy(
        update={"bridge_path_prefix": f"/buckets/{s3_bucket}", "bridge_start_ago": 600.0}
    )


async def _connect(settings: RunnerSettings) -> tuple[Any, JetStreamContext]:
    nc = await nats.connect(**settings.nats_connect_options())
    js = nc.jetstream()
    await js.add_stream(stream_config(ROUTER))
    return nc, js


async def stream_messages(js: JetStreamContext) -> list[tuple[str, dict[str, Any]]]:
    """Every message of the events stream: (Nats-Msg-Id, decoded body)."""
    info = await js.stream_info(EVENTS_STREAM)
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(EVENTS_STREAM, seq)
        headers = msg.headers or {}
        messages.append((headers.get("Nats-Msg-Id", ""), json.loads(msg.data or b"{}")))
    return messages


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


class RunningBridge:
    """A bridge task with its own NATS connection, stopped through its stop event."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.bridge: FilerBridge | None = None
        self.task: asyncio.Task[BridgeStats] | None = None

    async def __aenter__(self) -> RunningBridge:
        self.nc = await nats.connect(**self.settings.nats_connect_options())
        self.bridge = FilerBridge(self.settings, self.nc)
        self.task = asyncio.create_task(self.bridge.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        self.stats = await asyncio.wait_for(self.task, timeout=30)
        await self.nc.close()


def filer_rename(seaweedfs: EmbeddedSeaweedFS, old_path: str, new_path: str) -> None:
    """A filer-level move (S3 has none): ``POST new?mv.from=old``."""
    url = f"{seaweedfs.filer_url}{urllib.parse.quote(new_path)}?mv.from={urllib.parse.quote(old_path)}"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as r:
        assert r.status < 300


async def test_s3_changes_arrive_typed_with_their_tenant(
    bridge_settings: RunnerSettings,
    seaweedfs: EmbeddedSeaweedFS,
    s3fs_filesystem: Any,
    s3_bucket: str,
) -> None:
    nc, js = await _connect(bridge_settings)
    try:
        async with RunningBridge(bridge_settings) as running:
            fs = s3fs_filesystem
            await asyncio.to_thread(fs.pipe, f"{s3_bucket}/docs/a.txt", b"alpha")
            await asyncio.to_thread(fs.pipe, f"{s3_bucket}/b.pdf", b"%PDF-1.4 beta")
            await asyncio.to_thread(fs.pipe, f"{s3_bucket}/docs/a.txt", b"alpha, longer")
            await asyncio.to_thread(fs.rm, f"{s3_bucket}/b.pdf")
            await asyncio.to_thread(
                filer_rename,
                seaweedfs,
                f"/buckets/{s3_bucket}/docs/a.txt",
                f"/buckets/{s3_bucket}/moved/c.txt",
            )

            async def five() -> bool:
                return len(await stream_messages(js)) >= 5

            await wait_for(five)
        messages = await stream_messages(js)
    finally:
        await nc.close()
    events = [parse_event(body) for _, body in messages]
    assert [(e.event_type.value, e.key, e.size) for e in events if e] == [
        ("create", "docs/a.txt", 5),
        ("create", "b.pdf", 13),
        ("update", "docs/a.txt", 13),
        ("delete", "b.pdf", 13),
        ("rename", "moved/c.txt", 13),
    ]
    assert all(e is not None and e.tenant_id == s3_bucket for e in events)
    assert events[-1] is not None and events[-1].old_key == "docs/a.txt"
    ids = [msg_id for msg_id, _ in messages]
    assert all(ids) and len(set(ids)) == len(ids)
    # The bucket folder itself and the intermediate directories were not published.
    assert running.stats.ignored >= 2
    assert running.stats.published == 5


async def test_restart_replays_missed_changes_exactly_once(
    bridge_settings: RunnerSettings, s3fs_filesystem: Any, s3_bucket: str
) -> None:
    fs = s3fs_filesystem
    nc, js = await _connect(bridge_settings)

    async def count() -> int:
        return len(await stream_messages(js))

    try:
        async with RunningBridge(bridge_settings) as first:
            for i in range(2):
                await asyncio.to_thread(fs.pipe, f"{s3_bucket}/before-{i}.txt", b"x" * (i + 1))

            async def two() -> bool:
                return await count() == 2

            await wait_for(two)
        assert first.stats.published == 2
        first_checkpoint = first.stats.checkpoint_ns
        assert first_checkpoint is not None

        # Changes while the bridge is down.
        for i in range(3):
            await asyncio.to_thread(fs.pipe, f"{s3_bucket}/while-down-{i}.txt", b"y")

        async with RunningBridge(bridge_settings) as second:

            async def caught_up() -> bool:
                messages = await stream_messages(js)
                newest = max(int(body.get("ts_ns") or 0) for _, body in messages)
                assert second.bridge is not None
                checkpoint = second.bridge.stats.checkpoint_ns or 0
                return len(messages) >= 5 and checkpoint >= newest

            await wait_for(caught_up)
        assert await count() == 5
        assert second.stats.published == 3
        assert second.stats.duplicates == 0
        # The replay margin re-read the first run's changes; the checkpoint skipped them.
        assert second.stats.skipped_before_checkpoint >= 2
        assert second.stats.checkpoint_ns is not None
        assert second.stats.checkpoint_ns > first_checkpoint

        # A bridge that died after publishing but before checkpointing: rewind the checkpoint.
        kv = await js.key_value(bridge_settings.bridge_kv_bucket)
        await kv.put(
            checkpoint_key(bridge_settings.bridge_path_prefix),
            json.dumps({"ts_ns": first_checkpoint - 1}).encode(),
        )
        async with RunningBridge(bridge_settings) as third:

            async def resent() -> bool:
                assert third.bridge is not None
                return third.bridge.stats.duplicates + third.bridge.stats.published >= 4

            await wait_for(resent)
        # Every re-sent change was dropped by its Nats-Msg-Id: still five messages.
        assert third.stats.published == 0
        assert third.stats.duplicates >= 4
        messages = await stream_messages(js)
    finally:
        await nc.close()
    keys = sorted(body["key"] for _, body in messages)
    assert keys == [
        "before-0.txt",
        "before-1.txt",
        "while-down-0.txt",
        "while-down-1.txt",
        "while-down-2.txt",
    ]


async def test_bridge_needs_the_filer_address(runner_settings: RunnerSettings) -> None:
    settings = runner_settings.model_copy(update={"seaweedfs_filer": None})
    nc = await nats.connect(**settings.nats_connect_options())
    try:
        with pytest.raises(ConfigurationError, match="P8FS_SEAWEEDFS_FILER"):
            FilerBridge(settings, nc)
    finally:
        await nc.close()


async def test_unparseable_changes_are_published_for_dead_lettering(
    bridge_settings: RunnerSettings, s3fs_filesystem: Any, s3_bucket: str
) -> None:
    """A key with a newline is legal in S3 but refused by the parser: the bridge still
    publishes the raw filer change, so the router dead-letters it with an errors row."""
    from p8fs_runner.events import InvalidEvent

    nc, js = await _connect(bridge_settings)
    try:
        async with RunningBridge(bridge_settings) as running:
            await asyncio.to_thread(s3fs_filesystem.pipe, f"{s3_bucket}/bad\nname.txt", b"z")
            await asyncio.to_thread(s3fs_filesystem.pipe, f"{s3_bucket}/good.txt", b"z")

            async def two() -> bool:
                return len(await stream_messages(js)) >= 2

            await wait_for(two)
        messages = await stream_messages(js)
    finally:
        await nc.close()
    assert running.stats.invalid == 1 and running.stats.published == 2  # raw one included
    raw_id, raw = messages[0]
    assert raw_id.startswith("raw-")
    assert raw["eventNotification"]["newEntry"]["name"] == "bad\nname.txt"
    with pytest.raises(InvalidEvent, match="control character"):
        parse_event(json.dumps(raw))
    good = parse_event(messages[1][1])
    assert good is not None and good.key == "good.txt"


async def test_run_bridge_serves_probes_and_metrics(
    bridge_settings: RunnerSettings, s3fs_filesystem: Any, s3_bucket: str
) -> None:
    from p8fs_runner.bridge import run_bridge
    from p8fs_runner.embedded import free_port

    nc, js = await _connect(bridge_settings)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_bridge(bridge_settings, stop=stop, metrics_port=port))

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    try:

        async def ready() -> bool:
            return (await asyncio.to_thread(get, "/readyz"))[0] == 200

        await wait_for(ready)
        await asyncio.to_thread(s3fs_filesystem.pipe, f"{s3_bucket}/probe.txt", b"p")

        async def one() -> bool:
            return len(await stream_messages(js)) == 1

        await wait_for(one)
        status, _ = await asyncio.to_thread(get, "/healthz")
        assert status == 200
        status, metrics = await asyncio.to_thread(get, "/metrics")
        assert status == 200
        assert 'p8fs_bridge_events_total{outcome="published"}' in metrics
        assert "p8fs_bridge_checkpoint_timestamp_seconds" in metrics
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, timeout=30)
        await nc.close()
    assert stats.published == 1
    assert (await asyncio.to_thread(get, "/healthz"))[0] == 0  # the server is gone


async def test_an_unreachable_filer_is_retried_until_stopped(
    runner_settings: RunnerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the filer's gRPC port: the bridge keeps resubscribing with backoff,
    reports itself not ready, logs the outage once (naming the setting the address came
    from), not once per attempt, and still stops when asked."""
    from p8fs_runner.embedded import free_weed_port

    settings = runner_settings.model_copy(
        update={"seaweedfs_filer": f"127.0.0.1:{free_weed_port()}"}
    )
    caplog.set_level(logging.DEBUG, logger="p8fs_runner.bridge")
    async with RunningBridge(settings) as running:

        async def retried() -> bool:
            assert running.bridge is not None
            return running.bridge.stats.subscribe_attempts >= 4

        await wait_for(retried, within=20)
        assert running.bridge is not None and not running.bridge.following()
    # Leaving the block stopped it (within RunningBridge's 30 s bound, backoff included).
    assert running.task is not None and running.task.done()
    assert running.stats.published == 0 and running.stats.subscriptions == 0
    assert running.stats.outages == 1
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING and "bridge" in r.name]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "cannot subscribe" in message and "UNAVAILABLE" in message
    assert "P8FS_SEAWEEDFS_FILER port + 10000" in message
    assert "P8FS_BRIDGE_FILER_GRPC" in message


async def test_a_wrong_grpc_address_names_its_setting(
    runner_settings: RunnerSettings, seaweedfs: EmbeddedSeaweedFS, caplog: pytest.LogCaptureFixture
) -> None:
    """P8FS_BRIDGE_FILER_GRPC pointed at the filer's HTTP port (a common slip): no stream, and
    the error says which setting to fix."""
    settings = runner_settings.model_copy(
        update={"bridge_filer_grpc": seaweedfs.filer_address}  # HTTP, not gRPC
    )
    caplog.set_level(logging.WARNING, logger="p8fs_runner.bridge")
    async with RunningBridge(settings) as running:

        async def retried() -> bool:
            assert running.bridge is not None
            return running.bridge.stats.subscribe_attempts >= 2

        await wait_for(retried, within=20)
        assert running.bridge is not None and not running.bridge.following()
    assert running.stats.subscriptions == 0
    errors = [r.getMessage() for r in caplog.records if "cannot subscribe" in r.getMessage()]
    assert (
        len(errors) == 1 and f"at {seaweedfs.filer_address} (P8FS_BRIDGE_FILER_GRPC)" in errors[0]
    )


async def test_changes_wait_for_the_stream_when_the_router_has_not_run(
    bridge_settings: RunnerSettings, s3fs_filesystem: Any, s3_bucket: str
) -> None:
    """Before the router creates P8FS_STORAGE_EVENTS nothing can be published: the bridge keeps
    the change (and its checkpoint) until the stream exists, then publishes it once."""
    nc = await nats.connect(**bridge_settings.nats_connect_options())
    js = nc.jetstream()
    try:
        async with RunningBridge(bridge_settings) as running:
            await asyncio.to_thread(s3fs_filesystem.pipe, f"{s3_bucket}/early.txt", b"early")

            async def attempted() -> bool:
                assert running.bridge is not None
                return running.bridge.stats.publish_retries >= 2

            await wait_for(attempted)
            assert running.bridge is not None and running.bridge.stats.published == 0
            checkpoint_before = running.bridge.stats.checkpoint_ns
            await js.add_stream(stream_config(ROUTER))

            async def arrived() -> bool:
                return len(await stream_messages(js)) == 1

            await wait_for(arrived)
        messages = await stream_messages(js)
    finally:
        await nc.close()
    assert [body["key"] for _, body in messages] == ["early.txt"]
    assert running.stats.published == 1
    # The checkpoint never moved past the change while it could not be published.
    early_ts = int(messages[0][1]["ts_ns"])
    assert checkpoint_before is None or checkpoint_before < early_ts
    assert running.stats.checkpoint_ns is not None and running.stats.checkpoint_ns >= early_ts


async def test_readyz_says_why_the_bridge_is_not_ready(runner_settings: RunnerSettings) -> None:
    """With the filer unreachable, /readyz answers 503 naming the address and its setting."""
    from p8fs_runner.bridge import run_bridge
    from p8fs_runner.embedded import free_port, free_weed_port

    settings = runner_settings.model_copy(
        update={"seaweedfs_filer": f"127.0.0.1:{free_weed_port()}"}
    )
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_bridge(settings, stop=stop, metrics_port=port))

    def readyz() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    try:

        async def answered() -> bool:
            return (await asyncio.to_thread(readyz))[0] != 0

        await wait_for(answered)
        status, body = await asyncio.to_thread(readyz)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert status == 503
    assert "no live SubscribeMetadata stream" in body
    assert "P8FS_SEAWEEDFS_FILER port + 10000" in body
