"""Dead letters: the router service dead-letters messages whose deliveries ran out with nobody
alive to settle them; operators list and replay them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from p8fs_runner import tiers
from p8fs_runner.dlq import list_dead_letters, publish_dead_letter, replay
from p8fs_runner.service import serve_router
from p8fs_runner.topology import ensure_topology

if TYPE_CHECKING:
    from p8fs_runner.settings import RunnerSettings

#: Deliveries run out fast: 0.5 s ack wait, three deliveries.
FAST_SMALL = tiers.SMALL.with_overrides(backoff=(0.5, 0.5), max_deliver=3)
QUEUES = (tiers.ROUTER, FAST_SMALL, tiers.MEDIUM, tiers.LARGE, tiers.TEST)


@pytest.fixture
async def js(runner_settings: RunnerSettings) -> AsyncIterator[Any]:
    from p8fs_runner.connection import connect_nats

    nc = await connect_nats(runner_settings)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def event(key: str, size: int) -> bytes:
    return json.dumps(
        {"event_type": "create", "path": f"/buckets/acme/{key}", "size": size}
    ).encode()


async def wait_for(predicate: Any, limit: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def test_router_service_routes_and_dead_letters_exhausted_messages(
    js: Any, runner_settings: RunnerSettings
) -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()
    service = asyncio.create_task(
        serve_router(runner_settings, stop, queues=QUEUES, metrics_port=0, on_ready=ready.set)
    )
    await asyncio.wait_for(ready.wait(), 15)
    try:
        await js.publish(tiers.EVENTS_SUBJECT, event("crash/me.bin", 1234))

        async def routed() -> bool:
            return (await js.stream_info(FAST_SMALL.stream)).state.messages == 1

        await wait_for(routed)
        # Three workers in a row take the message and die without a word (no ack, no nak).
        sub = await js.pull_subscribe_bind(durable=FAST_SMALL.durable, stream=FAST_SMALL.stream)
        for delivery in range(1, FAST_SMALL.max_deliver + 1):
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == delivery
        # A worker still pulling: the server finds the message exhausted when it would hand it
        # out again (that is when it announces the advisory) and gives it to nobody.
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await sub.fetch(1, timeout=2)

        async def dead_lettered() -> bool:
            return len(await list_dead_letters(js)) == 1

        await wait_for(dead_lettered)
    finally:
        stop.set()
        run = await service
    assert run.stats.routed == {"small": 1}

    [letter] = await list_dead_letters(js)
    assert letter.queue == "small" and letter.code == "max_deliveries"
    assert letter.deliveries == FAST_SMALL.max_deliver
    assert (letter.tenant_id, letter.uri) == ("acme", "s3://acme/crash/me.bin")
    # The stuck message left the work-queue stream (JetStream alone would keep it forever).
    assert (await js.stream_info(FAST_SMALL.stream)).state.messages == 0

    from p8fs.database import Database

    db = Database.from_settings(runner_settings)
    try:
        [error] = await db.list_errors("acme")
    finally:
        await db.dispose()
    assert error.process == "router" and error.metadata["code"] == "max_deliveries"
    assert error.metadata["uri"] == "s3://acme/crash/me.bin"


async def test_replay_republishes_the_original_and_removes_the_letter(js: Any) -> None:
    await ensure_topology(js, QUEUES)
    original = event("again/doc.txt", 99)
    for spec, seq in ((FAST_SMALL, 7), (tiers.TEST, 8)):
        await publish_dead_letter(
            js,
            spec,
            original,
            source_stream=spec.stream,
            source_seq=seq,
            deliveries=3,
            reason="database down",
            code="transient",
        )
    # Dead-lettering the same source message twice stores it once.
    await publish_dead_letter(
        js,
        FAST_SMALL,
        original,
        source_stream=FAST_SMALL.stream,
        source_seq=7,
        deliveries=3,
        reason="database down",
        code="transient",
    )
    letters = await list_dead_letters(js)
    assert [(x.queue, x.source_seq) for x in letters] == [("small", 7), ("test", 8)]

    done = await replay(js, [letters[0].seq])
    assert [x.seq for x in done] == [letters[0].seq]
    main = await js.stream_info(tiers.EVENTS_STREAM)
    assert main.state.messages == 1
    raw = await js.get_msg(tiers.EVENTS_STREAM, main.state.last_seq)
    assert raw.data == original  # byte for byte

    # Self-test letters go back to the test queue, never to production.
    await replay(js, None)
    assert (await js.stream_info(tiers.TEST.stream)).state.messages == 1
    assert (await js.stream_info(tiers.EVENTS_STREAM)).state.messages == 1
    assert await list_dead_letters(js) == []

    with pytest.raises(LookupError, match="no dead letter with sequence 999"):
        await replay(js, [999])
