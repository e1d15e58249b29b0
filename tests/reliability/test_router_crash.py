"""The router SIGKILLed while it routes a burst loses and duplicates nothing.

The router publishes each event to its tier with a ``Nats-Msg-Id`` derived from the source
message, waits for the PubAcks, and only then acks the source. Killed in between, the source is
redelivered to the next router, published again with the same id, and dropped by the tier
stream as a duplicate. This test kills ``p8fs-run router`` processes (real subprocesses, real
nats-server) three times in the middle of a burst and then checks every tier stream message by
message: every source event is there exactly once, in the tier its declared size selects.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from p8fs_runner import dlq, tiers
from tests.fixtures.servers import free_port
from tests.reliability.faults import DropJetStreamAcks, PausableProxy, RunnerProcess, runner_env

#: Declared sizes on both sides of both thresholds (the router reads only the event).
SIZES = (
    1234,
    tiers.SMALL_LIMIT - 1,
    tiers.SMALL_LIMIT,
    tiers.MEDIUM_LIMIT - 1,
    tiers.MEDIUM_LIMIT,
    5 * tiers.GiB,
)
EVENTS = 12_000
KILLS = 3
BUCKET = "router-crash"
#: A 2 s ack wait on the router's durable, so a killed router's batch comes back in seconds, and
#: room for the whole burst to be unacked at once (the ack-less router below holds all of it).
OVERRIDES = {
    "router": {"backoff": [2.0, 2.0, 4.0], "max_deliver": 10, "max_ack_pending": 2 * EVENTS}
}


def _event(i: int) -> bytes:
    size = SIZES[i % len(SIZES)]
    return json.dumps(
        {"event_type": "create", "path": f"/buckets/{BUCKET}/burst/{i:06d}.txt", "size": size}
    ).encode()


async def _routed(js: Any) -> int:
    """Messages stored in the three tier streams so far."""
    total = 0
    for spec in tiers.TIERS.values():
        total += (await js.stream_info(spec.stream)).state.messages
    return total


async def _wait(predicate: Any, *, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _stored(js: Any, spec: tiers.QueueSpec) -> list[tuple[str, str, int]]:
    """Every message of a tier stream as (event key, Nats-Msg-Id, declared size).

    Read by sequence (direct get), not through the tier's consumer, whose ``max_ack_pending``
    (4 on the large tier) would make reading thousands of messages slow.
    """
    state = (await js.stream_info(spec.stream)).state
    out: list[tuple[str, str, int]] = []
    if not state.messages:
        return out
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await js.get_msg(spec.stream, seq)
        event = json.loads(msg.data)
        out.append((event["key"], (msg.headers or {}).get("Nats-Msg-Id", ""), event["size"]))
    assert len(out) == state.messages, f"{spec.stream} has gaps: a message was removed"
    return out


def _routed_by(router: RunnerProcess) -> int:
    """Events a stopped router says it routed (its last log line: ``routed {'small': n}``)."""
    match = re.search(r"router stopped: routed (\{.*?\})", router.log_tail())
    assert match, router.log_tail()
    return sum(ast.literal_eval(match.group(1)).values())


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_router_killed_mid_routing_loses_and_duplicates_nothing(
    nats_server: Any, tmp_path: Path
) -> None:
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.settings import RunnerSettings

    env = runner_env(
        nats_server,
        data_dir=tmp_path / "data",
        # The router never reads objects; nothing listens here, and embedding is off.
        s3_endpoint=f"http://127.0.0.1:{free_port()}",
        tier_overrides=OVERRIDES,
    )
    settings = RunnerSettings(
        _env_file=None,  # type: ignore[call-arg]
        nats_url=nats_server.address,
        nats_user=nats_server.user,
        nats_password=nats_server.password,
    )
    nc = await connect_nats(settings)
    js = nc.jetstream()
    routers: list[RunnerProcess] = []
    proxies: list[PausableProxy] = []
    try:
        setup = RunnerProcess("router-setup", ["router", "--setup-only"], env, tmp_path)
        assert await asyncio.to_thread(setup.process.wait, 60) == 0, setup.log_tail()
        consumer = await js.consumer_info(tiers.EVENTS_STREAM, tiers.ROUTER.durable)
        assert consumer.config.ack_wait == 2.0, "P8FS_TIER_OVERRIDES did not reach the router"

        for i in range(EVENTS):
            await js.publish_async(tiers.EVENTS_SUBJECT, _event(i))
        await js.publish_async_completed()
        assert (await js.stream_info(tiers.EVENTS_STREAM)).state.messages == EVENTS

        caught_mid_batch = 0
        for kill in range(KILLS):
            before = await _routed(js)
            router = RunnerProcess(f"router-{kill}", ["router"], env, tmp_path)
            routers.append(router)
            # Let it route a part of the burst (at least one batch more than before), then kill.
            target = before + tiers.ROUTER.batch + 1

            async def progressed(target: int = target, router: RunnerProcess = router) -> bool:
                assert router.alive(), router.log_tail()
                return await _routed(js) >= target

            await _wait(progressed, limit=60, what=f"router {kill} to route a batch")
            router.kill()
            info = await js.consumer_info(tiers.EVENTS_STREAM, tiers.ROUTER.durable)
            routed = await _routed(js)
            assert routed < EVENTS, "the burst was routed before the kill: raise EVENTS"
            # Delivered to the dead router and never acked: these come back to the next one.
            caught_mid_batch += info.num_ack_pending > 0

        # At least one kill landed between a batch's delivery and its acks (usually all do).
        assert caught_mid_batch >= 1

        # The narrowest window, made certain: a router whose acks never reach the server
        # (a proxy drops them) publishes the rest of the burst, then dies. Every source event
        # it handled is then confirmed in a tier stream but still unacked on the main one.
        proxy = PausableProxy("127.0.0.1", nats_server.port, upstream_filter=DropJetStreamAcks)
        proxies.append(proxy)
        lossy_env = {**env, "P8FS_NATS_URL": f"nats://127.0.0.1:{proxy.port}"}
        lossy = RunnerProcess("router-acks-lost", ["router"], lossy_env, tmp_path)
        routers.append(lossy)

        async def all_published() -> bool:
            assert lossy.alive(), lossy.log_tail()
            return await _routed(js) == EVENTS

        await _wait(all_published, limit=60, what="the ack-less router to publish the burst")
        lossy.kill()
        unacked = (
            await js.consumer_info(tiers.EVENTS_STREAM, tiers.ROUTER.durable)
        ).num_ack_pending
        acks_dropped = sum(f.dropped for f in proxy.filters)
        assert unacked > 0 and acks_dropped > 0

        last = RunnerProcess("router-final", ["router"], env, tmp_path)
        routers.append(last)

        async def drained() -> bool:
            assert last.alive(), last.log_tail()
            info = await js.consumer_info(tiers.EVENTS_STREAM, tiers.ROUTER.durable)
            main = await js.stream_info(tiers.EVENTS_STREAM)
            return info.num_pending == 0 and info.num_ack_pending == 0 and main.state.messages == 0

        await _wait(drained, limit=90, what="the main stream to be fully routed")
        assert last.terminate() == 0, last.log_tail()
        # Everything the last router published was already in a tier stream: all duplicates.
        republished = _routed_by(last)
        assert republished >= unacked
        assert await _routed(js) == EVENTS
        assert await dlq.count(js) == 0, "an event was dead-lettered"

        seen: list[tuple[str, str, int]] = []
        for spec in tiers.TIERS.values():
            messages = await _stored(js, spec)
            for _key, _msg_id, size in messages:
                assert tiers.tier_for_size(size) is spec, f"size {size} routed to {spec.name}"
            seen += messages
    finally:
        for router in routers:
            router.terminate(timeout=10)
        for proxy in proxies:
            proxy.close()
        await nc.close()

    keys = Counter(key for key, _, _ in seen)
    duplicated = sorted(k for k, n in keys.items() if n > 1)
    lost = sorted({f"burst/{i:06d}.txt" for i in range(EVENTS)} - set(keys))
    msg_ids = Counter(msg_id for _, msg_id, _ in seen)
    print(
        f"\nrouter crash: {EVENTS} events, {KILLS} SIGKILLs ({caught_mid_batch} mid-batch), "
        f"{unacked} published but unacked at the last kill, {republished} re-published and "
        f"dropped as duplicates; {len(seen)} in the tier streams, {len(lost)} lost, "
        f"{len(duplicated)} duplicated"
    )
    assert not lost, f"{len(lost)} events lost, e.g. {lost[:5]}"
    assert not duplicated, f"{len(duplicated)} events routed twice, e.g. {duplicated[:5]}"
    assert len(seen) == EVENTS
    assert all(msg_id.startswith("route:") for msg_id in msg_ids)
    assert max(msg_ids.values()) == 1, "two tier messages share a Nats-Msg-Id"
