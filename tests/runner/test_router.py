"""The router against a real nats-server: routing by size, publish-then-ack with dedup,
replicas sharing one durable, invalid events dead-lettered with an errors row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from p8fs_runner import tiers
from p8fs_runner.dlq import H_CODE, H_QUEUE, H_REASON, list_dead_letters
from p8fs_runner.events import parse_event
from p8fs_runner.router import Router, route_msg_id
from p8fs_runner.tiers import GiB, MiB
from p8fs_runner.topology import ensure_topology

if TYPE_CHECKING:
    from p8fs.database import Database
    from p8fs_runner.embedded import EmbeddedNats

#: The router's queue with a 1 s ack wait, so a "crashed" router's message comes back fast.
FAST_ROUTER = tiers.ROUTER.with_overrides(backoff=(1.0, 1.0))
QUEUES = (FAST_ROUTER, tiers.SMALL, tiers.MEDIUM, tiers.LARGE, tiers.TEST)


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(**nats_server.connect_options())
    try:
        await ensure_topology(nc.jetstream(), QUEUES)
        yield nc.jetstream()
    finally:
        await nc.close()


async def stored(js: Any, stream: str, expected: int) -> int:
    """Messages in ``stream``, polled briefly: the server removes acked work-queue messages
    asynchronously, so the count right after an ack may still include them."""
    for _ in range(50):
        count = int((await js.stream_info(stream)).state.messages)
        if count == expected:
            return count
        await asyncio.sleep(0.05)
    return count


def event(key: str, size: int, tenant: str = "acme") -> bytes:
    """The seed's manual ``nats pub`` shape."""
    return json.dumps(
        {
            "event_type": "create",
            "path": f"/buckets/{tenant}/{key}",
            "size": size,
            "mime_type": "text/plain",
            "entry": {"Size": size, "Mime": "text/plain"},
        }
    ).encode()


async def router_sub(js: Any) -> Any:
    return await js.pull_subscribe_bind(durable=FAST_ROUTER.durable, stream=FAST_ROUTER.stream)


async def tier_events(js: Any, spec: tiers.QueueSpec) -> list[Any]:
    """Every event stored on a tier stream, parsed (read without consuming)."""
    info = await js.stream_info(spec.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        raw = await js.get_msg(spec.stream, seq)
        out.append(parse_event(raw.data))
    return out


async def test_routes_by_size_at_the_exact_thresholds(js: Any) -> None:
    sizes = {
        "a/just-under-100MiB.bin": 100 * MiB - 1,
        "a/exactly-100MiB.bin": 100 * MiB,
        "a/just-under-1GiB.bin": 1 * GiB - 1,
        "a/exactly-1GiB.bin": 1 * GiB,
        "a/tiny.txt": 1,
    }
    for key, size in sizes.items():
        await js.publish(tiers.EVENTS_SUBJECT, event(key, size))
    sub = await router_sub(js)
    msgs = await sub.fetch(10, timeout=2)
    stats = await Router(js, spec=FAST_ROUTER).route(msgs)

    assert stats.routed == {"small": 2, "medium": 2, "large": 1}
    small = {e.key for e in await tier_events(js, tiers.SMALL)}
    medium = {e.key for e in await tier_events(js, tiers.MEDIUM)}
    large = {e.key for e in await tier_events(js, tiers.LARGE)}
    assert small == {"a/just-under-100MiB.bin", "a/tiny.txt"}
    assert medium == {"a/exactly-100MiB.bin", "a/just-under-1GiB.bin"}
    assert large == {"a/exactly-1GiB.bin"}
    # Routed events carry the tenant (from the bucket) and the size, in the canonical shape.
    [big] = await tier_events(js, tiers.LARGE)
    assert (big.tenant_id, big.size, big.uri) == ("acme", GiB, "s3://acme/a/exactly-1GiB.bin")
    # Every source message was acked after its PubAck: the work-queue stream is empty.
    assert await stored(js, tiers.EVENTS_STREAM, 0) == 0
    # The test queue is never routed to.
    assert (await js.stream_info(tiers.TEST.stream)).state.messages == 0


async def test_a_crashed_publish_is_deduplicated_on_redelivery(js: Any) -> None:
    await js.publish(tiers.EVENTS_SUBJECT, event("docs/report.txt", 2048))
    sub = await router_sub(js)
    [first] = await sub.fetch(1, timeout=2)
    # A router publishes to the tier, then dies before acking the source.
    parsed = parse_event(first.data)
    assert parsed is not None
    ack = await js.publish(
        tiers.SMALL.subject, parsed.to_json(), headers={"Nats-Msg-Id": route_msg_id(first)}
    )
    assert not ack.duplicate

    # After the (1 s) ack wait the source comes back, to this or another replica.
    [again] = await sub.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    assert route_msg_id(again) == route_msg_id(first)
    stats = await Router(js, spec=FAST_ROUTER).route([again])
    assert stats.routed == {"small": 1}

    assert (await js.stream_info(tiers.SMALL.stream)).state.messages == 1  # not 2
    assert await stored(js, tiers.EVENTS_STREAM, 0) == 0


async def test_a_publish_never_answered_is_retried_not_waited_for_forever(
    js: Any, nats_server: EmbeddedNats
) -> None:
    """A NATS node that dies with a publish in flight never sends its PubAck, and nats-py's
    ``publish_async`` future has no deadline of its own: the router used to hang there for good,
    holding its whole batch unacked (seen in tests/runner/test_cluster.py). Here the tier
    subject is taken by a plain subscriber that swallows every message and never answers."""
    import nats

    silent = await nats.connect(**nats_server.connect_options())
    swallowed: list[Any] = []

    async def swallow(msg: Any) -> None:
        swallowed.append(msg)

    await silent.subscribe("p8fs.blackhole", cb=swallow)
    await silent.flush()
    blackhole = tiers.SMALL.with_overrides(subject="p8fs.blackhole")
    try:
        await js.publish(tiers.EVENTS_SUBJECT, event("docs/lost.txt", 10))
        sub = await router_sub(js)
        [msg] = await sub.fetch(1, timeout=2)
        router = Router(js, spec=FAST_ROUTER, tier_for=lambda _: blackhole, puback_within=0.5)
        # Generous: the deadline is 0.5 s; without one this never returns.
        stats = await asyncio.wait_for(router.route([msg]), timeout=30)
    finally:
        await silent.close()

    assert len(swallowed) == 1  # the publish went out; only its answer never came
    assert stats.retried == 1 and stats.routed == {}
    # Not acked: the event is still on the main stream and comes back for another try.
    assert (await js.stream_info(tiers.EVENTS_STREAM)).state.messages == 1
    [again] = await sub.fetch(1, timeout=10)
    assert again.metadata.num_delivered == 2
    assert route_msg_id(again) == route_msg_id(msg)


async def test_two_replicas_share_one_durable_and_route_each_event_once(js: Any) -> None:
    n = 300
    for i in range(n):
        await js.publish_async(tiers.EVENTS_SUBJECT, event(f"bulk/{i}.txt", 1000 + i))
    await js.publish_async_completed()
    stop = asyncio.Event()
    routers = [Router(js, spec=FAST_ROUTER), Router(js, spec=FAST_ROUTER)]
    subs = [await router_sub(js), await router_sub(js)]
    runs = [
        asyncio.create_task(r.run(s, stop, fetch_timeout=0.3))
        for r, s in zip(routers, subs, strict=True)
    ]
    for _ in range(100):
        if (await js.stream_info(tiers.SMALL.stream)).state.messages >= n:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*runs)

    keys = [e.key for e in await tier_events(js, tiers.SMALL)]
    assert sorted(keys) == sorted(f"bulk/{i}.txt" for i in range(n))  # each exactly once
    # Each event was published at least once. More than once only when a batch outlived the
    # test queue's 1 s ack wait on a loaded machine and the other replica got it again: the
    # tier stream's Nats-Msg-Id dedup then kept one copy, which is what the line above proves.
    assert sum(r.stats.routed.get("small", 0) for r in routers) >= n
    assert await stored(js, tiers.EVENTS_STREAM, 0) == 0


async def test_directories_and_multipart_parts_are_acked_not_routed(js: Any) -> None:
    await js.publish(tiers.EVENTS_SUBJECT, event("folder/", 0))
    await js.publish(tiers.EVENTS_SUBJECT, event(".uploads/abc/0001.part", 5 * MiB))
    sub = await router_sub(js)
    stats = await Router(js, spec=FAST_ROUTER).route(await sub.fetch(2, timeout=2))
    assert (stats.ignored, stats.routed) == (2, {})
    assert await stored(js, tiers.EVENTS_STREAM, 0) == 0
    assert (await js.stream_info(tiers.SMALL.stream)).state.messages == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        json.dumps(
            {"event_type": "create", "path": "/buckets/acme/../etc/passwd", "size": 3}
        ).encode(),
        json.dumps({"path": "/buckets/acme/a.txt", "size": 3}).encode(),
    ],
    ids=["malformed-json", "path-traversal", "no-event-type"],
)
async def test_an_invalid_event_is_dead_lettered_with_an_errors_row(
    js: Any, sqlite_database: Database, payload: bytes
) -> None:
    await js.publish(tiers.EVENTS_SUBJECT, payload)
    sub = await router_sub(js)
    router = Router(js, spec=FAST_ROUTER, errors=sqlite_database.record_error)
    stats = await router.route(await sub.fetch(1, timeout=2))
    assert stats.invalid == 1 and stats.routed == {}

    [letter] = await list_dead_letters(js)
    assert letter.data == payload  # the original, byte for byte, for replay
    assert letter.queue == "router" and letter.code == "invalid_event"
    assert letter.reason
    raw = await js.get_msg(tiers.DLQ_STREAM, letter.seq)
    assert raw.headers[H_QUEUE] == "router" and raw.headers[H_CODE] == "invalid_event"
    assert raw.headers[H_REASON] == letter.reason

    [error] = await sqlite_database.list_errors()
    assert error.process == "router"
    assert error.metadata["code"] == "invalid_event"
    assert "invalid storage event" in error.message
    # Terminated: neither waiting on the main stream nor routed anywhere.
    assert await stored(js, tiers.EVENTS_STREAM, 0) == 0
    assert (await js.stream_info(tiers.SMALL.stream)).state.messages == 0
