"""The tier table and the topology the router creates, against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from nats.js import api

from p8fs_runner import tiers
from p8fs_runner.tiers import GiB, MiB, tier_for_size
from p8fs_runner.topology import (
    ConsumerNotFound,
    bind_consumer,
    consumer_config,
    ensure_topology,
)

if TYPE_CHECKING:
    from p8fs_runner.embedded import EmbeddedNats


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(**nats_server.connect_options())
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("size", "tier"),
    [
        (0, "small"),
        (1024, "small"),
        (100 * MiB - 1, "small"),
        (100 * MiB, "medium"),
        (1 * GiB - 1, "medium"),
        (1 * GiB, "large"),
        (50 * GiB, "large"),
        (-1, "small"),
    ],
)
def test_tier_for_size_at_the_exact_thresholds(size: int, tier: str) -> None:
    assert tier_for_size(size).name == tier


def test_the_table_keeps_the_seed_names() -> None:
    assert [(q.subject, q.stream, q.durable) for q in tiers.ALL_QUEUES] == [
        ("p8fs.storage.events", "P8FS_STORAGE_EVENTS", "router"),
        ("p8fs.storage.events.small", "P8FS_STORAGE_EVENTS_SMALL", "small-workers"),
        ("p8fs.storage.events.medium", "P8FS_STORAGE_EVENTS_MEDIUM", "medium-workers"),
        ("p8fs.storage.events.large", "P8FS_STORAGE_EVENTS_LARGE", "large-workers"),
        ("p8fs.storage.events.test", "P8FS_STORAGE_EVENTS_TEST", "test-workers"),
    ]


def test_retry_delay_grows_and_heartbeat_beats_twice_per_ack_wait() -> None:
    for q in tiers.ALL_QUEUES:
        delays = [q.retry_delay(n) for n in range(1, q.max_deliver + 1)]
        assert delays == sorted(delays) and delays[0] == q.ack_wait
        assert q.heartbeat_interval < q.ack_wait / 2


def test_an_inconsistent_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="max_deliver"):
        tiers.SMALL.with_overrides(max_deliver=2)
    with pytest.raises(ValueError, match="decrease"):
        tiers.SMALL.with_overrides(backoff=(10.0, 5.0))


async def test_router_topology_creates_every_stream_and_tier_consumer(js: Any) -> None:
    report = await ensure_topology(js)
    assert set(report.streams_created) == {
        "P8FS_STORAGE_EVENTS",
        "P8FS_STORAGE_EVENTS_SMALL",
        "P8FS_STORAGE_EVENTS_MEDIUM",
        "P8FS_STORAGE_EVENTS_LARGE",
        "P8FS_STORAGE_EVENTS_TEST",
        "P8FS_STORAGE_EVENTS_DLQ",
    }
    for q in tiers.ALL_QUEUES:
        stream = await js.stream_info(q.stream)
        assert stream.config.subjects == [q.subject]
        assert stream.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert stream.config.duplicate_window == tiers.DUPLICATE_WINDOW
        info = await js.consumer_info(q.stream, q.durable)
        c = info.config
        assert (c.ack_wait, c.max_deliver, c.max_ack_pending) == (
            q.ack_wait,
            q.max_deliver,
            q.max_ack_pending,
        )
        assert c.backoff == list(q.backoff)
        assert c.ack_policy == api.AckPolicy.EXPLICIT
        assert c.filter_subject == q.subject
    # The tiers really differ (not one default applied everywhere).
    waits = {
        q.name: (await js.consumer_info(q.stream, q.durable)).config.ack_wait
        for q in tiers.ALL_QUEUES
    }
    assert waits["small"] < waits["medium"] < waits["large"]
    dlq = await js.stream_info(tiers.DLQ_STREAM)
    assert dlq.config.subjects == ["p8fs.storage.dlq.>"]
    assert dlq.config.retention == api.RetentionPolicy.LIMITS


async def test_topology_is_idempotent_and_updates_changed_settings(js: Any) -> None:
    await ensure_topology(js)
    again = await ensure_topology(js)
    assert again.streams_created == [] and again.consumers_created == []
    assert again.consumers_updated == []

    changed = tiers.SMALL.with_overrides(max_ack_pending=9, backoff=(5.0, 10.0))
    report = await ensure_topology(js, (tiers.ROUTER, changed))
    assert report.consumers_updated == ["P8FS_STORAGE_EVENTS_SMALL/small-workers"]
    c = (await js.consumer_info(changed.stream, changed.durable)).config
    assert (c.max_ack_pending, c.ack_wait, c.backoff) == (9, 5.0, [5.0, 10.0])


async def test_router_deletes_stale_consumers(js: Any) -> None:
    await ensure_topology(js)
    # A consumer left over from an older deployment, e.g. the original's defaults.
    await js.delete_consumer("P8FS_STORAGE_EVENTS_MEDIUM", "medium-workers")
    await js.add_consumer(
        "P8FS_STORAGE_EVENTS_MEDIUM",
        api.ConsumerConfig(
            durable_name="storage-workers", filter_subject="p8fs.storage.events.medium"
        ),
    )
    report = await ensure_topology(js)
    assert report.consumers_deleted == ["P8FS_STORAGE_EVENTS_MEDIUM/storage-workers"]
    assert report.consumers_created == ["P8FS_STORAGE_EVENTS_MEDIUM/medium-workers"]
    names = [c.name for c in await js.consumers_info("P8FS_STORAGE_EVENTS_MEDIUM")]
    assert names == ["medium-workers"]


async def test_a_worker_binds_only_to_a_consumer_the_router_created(js: Any) -> None:
    with pytest.raises(ConsumerNotFound) as caught:
        await bind_consumer(js, tiers.SMALL)
    assert str(caught.value) == (
        "consumer small-workers on stream P8FS_STORAGE_EVENTS_SMALL not found: "
        "run `p8fs-run router` first"
    )
    # Binding never created anything behind the router's back.
    with pytest.raises(Exception, match="not found"):
        await js.stream_info("P8FS_STORAGE_EVENTS_SMALL")

    await ensure_topology(js)
    sub = await bind_consumer(js, tiers.SMALL)
    await js.publish("p8fs.storage.events.small", b"{}")
    [msg] = await sub.fetch(1, timeout=2)
    assert msg.metadata.stream == "P8FS_STORAGE_EVENTS_SMALL"
    assert msg.metadata.consumer == "small-workers"


def test_consumer_config_is_the_table_row() -> None:
    c = consumer_config(tiers.LARGE)
    assert c.durable_name == "large-workers"
    assert c.max_ack_pending == tiers.LARGE.max_ack_pending
    assert c.ack_wait == tiers.LARGE.backoff[0]
