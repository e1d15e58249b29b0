"""The tier table and the topology the router creates, against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nats.js import api

from p8fs.errors import ConfigurationError
from p8fs_runner import tiers
from p8fs_runner.tiers import GiB, MiB, tier_for_size
from p8fs_runner.topology import (
    ConsumerNotFound,
    bind_consumer,
    consumer_config,
    ensure_topology,
)
from tests.fixtures.nats_cluster import (
    NatsCluster,
    start_cluster,
)

if TYPE_CHECKING:
    from p8fs_runner.embedded import EmbeddedNats
    from p8fs_runner.settings import RunnerSettings


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


# -- a cluster: replicas, nodes down, no JetStream (issue 11) -----------------------------------


def _cluster_settings(cluster: NatsCluster, **values: Any) -> RunnerSettings:
    from p8fs_runner.settings import RunnerSettings

    return RunnerSettings(
        _env_file=None,  # type: ignore[call-arg]
        nats_url=cluster.address,
        nats_user=cluster.user,
        nats_password=cluster.password,
        metrics_port=0,
        **values,
    )


async def test_the_router_creates_r3_streams_and_consumers_from_the_setting(
    nats_cluster: NatsCluster,
) -> None:
    """The deployed path: ``P8FS_NATS_REPLICAS=3`` -> ``settings.queues()`` -> ``serve_router``
    (as ``p8fs-run router --setup-only`` calls it) -> three copies of every stream, held by
    three different nodes, and consumers that inherit them."""
    import nats

    from p8fs_runner.service import serve_router

    configured = _cluster_settings(nats_cluster, nats_replicas=3)
    await serve_router(configured, asyncio.Event(), queues=configured.queues(), setup_only=True)
    nc = await nats.connect(**nats_cluster.connect_options())
    try:
        js = nc.jetstream()
        for name in [q.stream for q in tiers.ALL_QUEUES] + [tiers.DLQ_STREAM]:
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3, name
            assert sorted(nats_cluster.stream_replicas(name)) == ["n1", "n2", "n3"], name
        for q in tiers.ALL_QUEUES:
            consumer = await js.consumer_info(q.stream, q.durable)
            peers = {consumer.cluster.leader, *(p.name for p in consumer.cluster.replicas or [])}
            assert peers == {"n1", "n2", "n3"}, q.durable
    finally:
        await nc.close()


async def test_replicas_of_existing_streams_follow_the_setting_without_losing_messages(
    nats_cluster: NatsCluster,
) -> None:
    import nats

    nc = await nats.connect(**nats_cluster.connect_options())
    try:
        js = nc.jetstream()
        await ensure_topology(js, replicas=1)
        for i in range(20):
            await js.publish(tiers.SMALL.subject, f"event {i}".encode())
        assert len(nats_cluster.stream_replicas(tiers.SMALL.stream)) == 1

        report = await ensure_topology(js, replicas=3)
        streams = [q.stream for q in tiers.ALL_QUEUES] + [tiers.DLQ_STREAM]
        assert sorted(report.streams_updated) == sorted(streams)
        assert report.streams_created == [] and report.consumers_updated == []
        info = await js.stream_info(tiers.SMALL.stream)
        assert info.config.num_replicas == 3 and info.state.messages == 20
        # The same setting again changes nothing: no update request is sent at all.
        assert (await ensure_topology(js, replicas=3)).streams_updated == []
        # Nor does a caller that does not say (the table's rows, the self-test's TEST queue):
        # it never undoes what the router decided.
        assert (await ensure_topology(js)).streams_updated == []
        assert (await ensure_topology(js, (tiers.TEST,))).streams_updated == []
        assert (await js.stream_info(tiers.DLQ_STREAM)).config.num_replicas == 3

        async def copies() -> int:
            return len(nats_cluster.stream_replicas(tiers.SMALL.stream))

        await _eventually(lambda: copies(), 3, limit=30)
        # Back to one copy (an operator going back to one server): also in place.
        report = await ensure_topology(js, replicas=1)
        assert sorted(report.streams_updated) == sorted(streams)
        assert (await js.stream_info(tiers.SMALL.stream)).state.messages == 20
    finally:
        await nc.close()


async def _eventually(probe: Any, expected: Any, *, limit: float) -> None:
    """Poll ``await probe()`` until it returns ``expected`` (replica moves are asynchronous:
    an R1 -> R3 scale-up took ~10 s for the stream, ~20 s for its consumer, measured)."""
    deadline = asyncio.get_running_loop().time() + limit
    while (value := await probe()) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {value!r} after {limit:.0f} s, expected {expected!r}")
        await asyncio.sleep(0.25)


async def test_more_replicas_than_servers_is_an_error_naming_the_setting(
    js: Any, nats_cluster: NatsCluster
) -> None:
    # One server (the ``js`` fixture's): JetStream refuses any R > 1.
    with pytest.raises(
        ConfigurationError, match=r"P8FS_NATS_REPLICAS=3: stream P8FS_STORAGE_EVENTS"
    ):
        await ensure_topology(js, replicas=3)
    # Existing R1 streams with messages are left as they were when the update is refused.
    await ensure_topology(js, replicas=1)
    await js.publish(tiers.SMALL.subject, b"kept")
    with pytest.raises(ConfigurationError, match="non-clustered mode"):
        await ensure_topology(js, replicas=2)
    info = await js.stream_info(tiers.SMALL.stream)
    assert (info.config.num_replicas, info.state.messages) == (1, 1)

    # Three servers: five copies cannot be placed.
    import nats

    nc = await nats.connect(**nats_cluster.connect_options())
    try:
        with pytest.raises(ConfigurationError, match=r"P8FS_NATS_REPLICAS=5: .*at most the number"):
            await ensure_topology(nc.jetstream(), replicas=5)
    finally:
        await nc.close()


async def test_a_cluster_without_jetstream_is_an_error_naming_the_setting(
    tmp_path: Path,
) -> None:
    import nats

    cluster = start_cluster(tmp_path / "no-js", jetstream=False)
    try:
        nc = await nats.connect(**cluster.connect_options())
        try:
            js = nc.jetstream()
            with pytest.raises(ConfigurationError, match="has no JetStream") as caught:
                await ensure_topology(js)
            assert "P8FS_NATS_URL" in str(caught.value)
            assert "127.0.0.1:" in str(caught.value)  # which server
            with pytest.raises(ConfigurationError, match="has no JetStream"):
                await bind_consumer(js, tiers.SMALL)
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def test_a_node_down_at_start_is_skipped_and_none_up_is_a_clear_error(
    nats_cluster: NatsCluster,
) -> None:
    from p8fs_runner.connection import NatsUnavailable, connect_nats

    configured = _cluster_settings(nats_cluster, nats_replicas=3)
    nc = await connect_nats(configured)
    await ensure_topology(nc.jetstream(), configured.queues())
    await nc.close()

    # The first URL's node is down: the router and the workers start on the others.
    first = nats_cluster.nodes[0]
    nats_cluster.kill(first)
    for _ in range(3):
        nc = await connect_nats(configured, deadline=5)
        try:
            assert nc.connected_url is not None and nc.connected_url.port != first.port
            js = nc.jetstream()
            report = await ensure_topology(js, configured.queues())
            assert report.summary() == "topology already up to date"
            await bind_consumer(js, tiers.SMALL)
        finally:
            await nc.close()

    # None up: an error naming every URL tried, without the password.
    for node in nats_cluster.nodes[1:]:
        nats_cluster.kill(node)
    with pytest.raises(NatsUnavailable) as caught:
        await connect_nats(configured, deadline=2)
    message = str(caught.value)
    assert "any of the 3 NATS servers of P8FS_NATS_URL" in message
    assert all(node.address in message for node in nats_cluster.nodes)
    assert nats_cluster.password.get_secret_value() not in message


async def test_a_key_value_buckets_replicas_follow_the_setting(nats_cluster: NatsCluster) -> None:
    """``ensure_replicas`` for streams the router does not define (the bridge's checkpoint
    bucket): a bucket made with one copy gets three, keeps its keys, and is left alone after."""
    import nats

    from p8fs_runner.topology import ensure_replicas

    nc = await nats.connect(**nats_cluster.connect_options())
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="P8FS_BRIDGE", history=1)
        await kv.put("checkpoint", b"42")
        assert await ensure_replicas(js, "KV_P8FS_BRIDGE", 3) is True
        assert (await js.stream_info("KV_P8FS_BRIDGE")).config.num_replicas == 3
        assert (await kv.get("checkpoint")).value == b"42"
        assert await ensure_replicas(js, "KV_P8FS_BRIDGE", 3) is False
        with pytest.raises(ConfigurationError, match="P8FS_NATS_REPLICAS=5"):
            await ensure_replicas(js, "KV_P8FS_BRIDGE", 5)
    finally:
        await nc.close()


async def test_the_bridge_keeps_its_checkpoint_in_as_many_copies_as_the_queues(
    nats_cluster: NatsCluster,
) -> None:
    """A checkpoint bucket with one copy would be lost with its node (and the bridge would
    replay an hour of history): the bridge creates it with P8FS_NATS_REPLICAS copies, and
    raises the copies of one that a one-server deployment created earlier."""
    import nats

    from p8fs_runner.bridge import FilerBridge

    nc = await nats.connect(**nats_cluster.connect_options())
    try:
        js = nc.jetstream()
        settings = _cluster_settings(
            nats_cluster, nats_replicas=3, seaweedfs_filer="127.0.0.1:8888"  # not contacted here
        )
        fresh = FilerBridge(settings, nc)
        assert await fresh.open_checkpoint() is None
        assert (await js.stream_info("KV_P8FS_BRIDGE")).config.num_replicas == 3

        await js.delete_stream("KV_P8FS_BRIDGE")
        await js.create_key_value(bucket="P8FS_BRIDGE", history=1, replicas=1)
        await FilerBridge(settings, nc).open_checkpoint()
        assert (await js.stream_info("KV_P8FS_BRIDGE")).config.num_replicas == 3
    finally:
        await nc.close()
