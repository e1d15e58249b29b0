"""KEDA's ``nats-jetstream`` scaler, run against a real 3-node cluster with a backlog, gives
the replica counts ``deploy/k8s/keda-scalers.yaml`` intends.

What KEDA reads, and how, is copied here from its source rather than assumed:
``kedacore/keda`` ``pkg/scalers/nats_jetstream_scaler.go`` (read at commit
a2d45f0f021dffb43586d4c4142227f75aaef65f) and, for what happens when a scaler fails,
``pkg/scaling/cache/scalers_cache.go`` (commit 011208c769105c96115e6f94a81fedee49ecb4f6).
:class:`NatsJetStreamScaler` follows the Go function by function:

* the query is ``GET {scheme}://{natsServerMonitoringEndpoint}/jsz?acc={account}&config=true&
  consumers=true`` (``getNATSJetStreamMonitoringURL``; note ``acc=``, not ``accounts=true``);
* lag is ``num_pending + num_ack_pending`` of the consumer, or the stream's ``last_seq`` when
  the consumer is missing (``getMaxMsgLag``); the scaler is active when lag exceeds
  ``activationLagThreshold``;
* in a cluster (``meta_cluster.cluster_size > 1``) the numbers must come from the *consumer
  leader*: the scaler reads ``/varz`` of the endpoint, visits every ``connect_urls`` host on
  the endpoint's monitoring port, asks each ``/varz`` for its ``server_name`` and takes the
  ``/jsz`` of the node whose name is the consumer's ``cluster.leader``; it then keeps querying
  that node's URL while the leader does not change (``getNATSJetstreamMonitoringData``);
* when a query fails (the cached leader died), the scalers cache builds a new scaler and asks
  once more (``GetMetricsAndActivityForScaler`` -> ``refreshScaler``).

Because the scaler derives a node's monitoring URL from its client URL's host plus the
endpoint's port, the cluster here runs as pods do: each node on its own address (127.0.0.1-3),
all on the same ports (``start_cluster(distinct_hosts=True)``).

The replica count is KEDA's and the HPA's arithmetic for an ``AverageValue`` external metric
(KEDA's default metric type): inactive with ``minReplicaCount: 0`` -> 0; otherwise
``ceil(lag / lagThreshold)`` (kept at the current count within the HPA's 10 % tolerance),
clamped to ``[max(minReplicaCount, 1), maxReplicaCount]``. That is the count the HPA converges
to; its scale-up rate limits only decide how fast.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import yaml

from p8fs_runner import tiers
from p8fs_runner.topology import bind_consumer, ensure_topology
from tests.fixtures.nats_cluster import NatsCluster, start_cluster
from tests.fixtures.servers import REPO_ROOT

SCALERS = REPO_ROOT / "deploy" / "k8s" / "keda-scalers.yaml"
#: The HPA's default tolerance (kube-controller-manager --horizontal-pod-autoscaler-tolerance).
HPA_TOLERANCE = 0.1


# -- the scaler, after nats_jetstream_scaler.go ------------------------------------------------


class ScalerError(Exception):
    """What the Go scaler returns as ``err`` (an HTTP failure, no leader found...)."""


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise ScalerError(f"GET {url}: {exc}") from exc


@dataclass
class Trigger:
    """A ``nats-jetstream`` trigger's metadata as ``parseNATSJetStreamMetadata`` types it."""

    stream: str
    consumer: str
    endpoint: str
    account: str = ""
    account_id: str = ""
    lag_threshold: int = 10  # default=10
    activation_lag_threshold: int = 0  # default=0
    use_https: bool = False

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], *, endpoint: str | None = None) -> Trigger:
        account, account_id = metadata.get("account", ""), metadata.get("accountID", "")
        if not account and not account_id:
            raise ScalerError("no account name or id given")
        return cls(
            stream=metadata["stream"],
            consumer=metadata["consumer"],
            endpoint=endpoint or metadata["natsServerMonitoringEndpoint"],
            account=account,
            account_id=account_id or account,  # "if meta.AccountID == `` {...= meta.Account}"
            lag_threshold=int(metadata.get("lagThreshold", 10)),
            activation_lag_threshold=int(metadata.get("activationLagThreshold", 0)),
            use_https=metadata.get("useHttps", "false").lower() == "true",
        )

    @property
    def monitoring_url(self) -> str:
        """``getNATSJetStreamMonitoringURL``: Go's ``url.Values.Encode`` sorts the keys."""
        scheme = "https" if self.use_https else "http"
        query = urlencode(
            sorted({"acc": self.account_id, "consumers": "true", "config": "true"}.items())
        )
        return f"{scheme}://{self.endpoint}/jsz?{query}"

    def is_account(self, account: dict[str, Any]) -> bool:
        return account.get("id") == self.account_id or account.get("name") == self.account


@dataclass
class NatsJetStreamScaler:
    """One scaler instance with its cache (``consumerLeader``, ``monitoringLeaderURL``)."""

    trigger: Trigger
    stream: dict[str, Any] | None = field(default_factory=dict)  # &streamDetail{} at creation
    consumer_leader: str = ""
    monitoring_leader_url: str = ""
    cluster_size: int = 0
    #: Every URL this instance queried, in order (for the test's eyes only).
    queried: list[str] = field(default_factory=list)

    def _jsz(self, url: str) -> dict[str, Any]:
        self.queried.append(url)
        return dict(_get_json(url))

    def _varz(self, url: str) -> dict[str, Any]:
        self.queried.append(url)
        return dict(_get_json(url))

    def get_monitoring_data(self) -> None:
        """``getNATSJetstreamMonitoringData``."""
        cached_leader = self.consumer_leader
        url = self.monitoring_leader_url or self.trigger.monitoring_url
        response = self._jsz(url)
        found = self.set_monitoring_data(response, "")
        if cached_leader and not found:
            self.invalidate()
        if found and cached_leader and cached_leader == self.consumer_leader:
            return
        if self.cluster_size > 1:
            server = self._varz(self.monitoring_server_url(""))
            advertised = True
            cluster_urls = list(server.get("connect_urls") or [])
            if not cluster_urls:
                advertised = False
                cluster_urls = list((server.get("cluster") or {}).get("urls") or [])
            for cluster_url in cluster_urls:
                if advertised:
                    hostname = cluster_url.split(":")[0]
                    node = self._varz(self.monitoring_server_url(hostname)).get("server_name", "")
                    node_url = self.monitoring_node_url(hostname)
                else:
                    node = cluster_url.split(".")[0]
                    node_url = self.monitoring_node_url_by_node(node)
                response = self._jsz(node_url)
                for account in response.get("account_details") or []:
                    if not self.trigger.is_account(account):
                        continue
                    for stream in account.get("stream_detail") or []:
                        if stream.get("name") != self.trigger.stream:
                            continue
                        for consumer in stream.get("consumer_detail") or []:
                            if consumer.get("name") != self.trigger.consumer:
                                continue
                            if node == (consumer.get("cluster") or {}).get("leader"):
                                self.set_monitoring_data(response, node_url)
                                return
            raise ScalerError(f"leader node not found for consumer {self.trigger.consumer}")

    def set_monitoring_data(self, response: dict[str, Any], leader_url: str) -> bool:
        """``setNATSJetStreamMonitoringData``."""
        self.cluster_size = int((response.get("meta_cluster") or {}).get("cluster_size") or 0)
        for account in response.get("account_details") or []:
            if not self.trigger.is_account(account):
                continue
            for stream in account.get("stream_detail") or []:
                if stream.get("name") != self.trigger.stream:
                    continue
                self.stream = stream
                for consumer in stream.get("consumer_detail") or []:
                    if consumer.get("name") == self.trigger.consumer:
                        self.consumer_leader = (consumer.get("cluster") or {}).get("leader", "")
                        if leader_url:
                            self.monitoring_leader_url = leader_url
                        return True
        return False

    def invalidate(self) -> None:
        self.consumer_leader = ""
        self.monitoring_leader_url = ""
        self.stream = None

    def _base(self) -> Any:
        return urlsplit(self.trigger.monitoring_url)

    def monitoring_server_url(self, hostname: str) -> str:
        """``getNATSJetStreamMonitoringServerURL``: ``/varz`` on ``hostname`` and the
        endpoint's port (or on the endpoint itself)."""
        base = self._base()
        host = base.netloc
        if hostname:
            host = f"{hostname}:{base.port}" if base.port else hostname
        return f"{base.scheme}://{host}/varz"

    def monitoring_node_url(self, hostname: str) -> str:
        """``getNATSJetStreamMonitoringNodeURL``: the ``/jsz`` query on ``hostname``."""
        base = self._base()
        host = f"{hostname}:{base.port}" if base.port else hostname
        return f"{base.scheme}://{host}{base.path}?{base.query}"

    def monitoring_node_url_by_node(self, node: str) -> str:
        """``getNATSJetStreamMonitoringNodeURLByNode``: ``<node>.<endpoint host>``."""
        base = self._base()
        return f"{base.scheme}://{node}.{base.netloc}{base.path}?{base.query}"

    def max_msg_lag(self) -> int:
        """``getMaxMsgLag``."""
        assert self.stream is not None
        for consumer in self.stream.get("consumer_detail") or []:
            if consumer.get("name") == self.trigger.consumer:
                return int(consumer.get("num_pending", 0)) + int(consumer.get("num_ack_pending", 0))
        return int((self.stream.get("state") or {}).get("last_seq", 0))

    def metrics_and_activity(self) -> tuple[int, bool]:
        """``GetMetricsAndActivity``: (lag, active)."""
        self.get_monitoring_data()
        if self.stream is None:
            raise ScalerError("stream not found")
        lag = self.max_msg_lag()
        return lag, lag > self.trigger.activation_lag_threshold


@dataclass
class CachedScaler:
    """``ScalersCache`` for one trigger: on error, a new scaler is built and asked once more."""

    trigger: Trigger
    scaler: NatsJetStreamScaler = field(init=False)
    refreshes: int = 0

    def __post_init__(self) -> None:
        self.scaler = NatsJetStreamScaler(self.trigger)

    def metrics_and_activity(self) -> tuple[int, bool]:
        try:
            return self.scaler.metrics_and_activity()
        except ScalerError:
            self.scaler = NatsJetStreamScaler(self.trigger)  # refreshScaler
            self.refreshes += 1
            return self.scaler.metrics_and_activity()


# -- the ScaledObjects and the replica count -------------------------------------------------


@dataclass(frozen=True)
class ScaledObject:
    name: str
    deployment: str
    min_replicas: int
    max_replicas: int
    metadata: dict[str, str]

    @property
    def lag_threshold(self) -> int:
        return int(self.metadata.get("lagThreshold", 10))

    def replicas(self, lag: int, active: bool, current: int) -> int:
        """The count KEDA and the HPA settle on for this lag (module docstring)."""
        if not active and self.min_replicas == 0:
            return 0  # KEDA scales the target to zero (after cooldownPeriod)
        floor = max(self.min_replicas, 1)
        current = max(current, floor)  # KEDA activates a scaled-to-zero target first
        ratio = lag / (self.lag_threshold * current)
        desired = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(ratio * current)
        return min(max(desired, floor), self.max_replicas)


def scaled_objects() -> dict[str, ScaledObject]:
    """The ScaledObjects of the manifest, by the tier their trigger's consumer serves."""
    by_durable = {q.durable: q.name for q in tiers.TIERS.values()}
    out = {}
    for doc in yaml.safe_load_all(SCALERS.read_text()):
        if not doc or doc.get("kind") != "ScaledObject":
            continue
        spec = doc["spec"]
        [trigger] = [t for t in spec["triggers"] if t["type"] == "nats-jetstream"]
        metadata = {k: str(v) for k, v in trigger["metadata"].items()}
        tier = by_durable[metadata["consumer"]]
        assert metadata["stream"] == tiers.TIERS[tier].stream, doc["metadata"]["name"]
        out[tier] = ScaledObject(
            name=doc["metadata"]["name"],
            deployment=spec["scaleTargetRef"]["name"],
            min_replicas=int(spec.get("minReplicaCount", 0)),  # KEDA's default is 0
            max_replicas=int(spec.get("maxReplicaCount", 100)),  # and 100
            metadata=metadata,
        )
    return out


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def pod_like_cluster(tmp_path: Path) -> Any:
    """Three nodes on 127.0.0.1-3 with the same ports, R3 topology created by the router code."""
    cluster = start_cluster(tmp_path / "cluster", distinct_hosts=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def _endpoint(node: Any) -> str:
    """A node's monitoring ``host:port``: what ``nats.p8fs.svc.cluster.local:8222`` resolves
    to when the Service hands KEDA's request to that pod."""
    return f"{node.host}:{node.monitor_port}"


def _replica_counts(
    objects: dict[str, ScaledObject], scalers: dict[str, CachedScaler], current: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    lags, counts = {}, {}
    for tier, so in objects.items():
        lag, active = scalers[tier].metrics_and_activity()
        lags[tier] = lag
        counts[tier] = so.replicas(lag, active, current.get(tier, so.min_replicas))
    return lags, counts


def test_the_manifests_scaled_objects_are_what_this_test_reads() -> None:
    objects = scaled_objects()
    assert set(objects) == {"small", "medium", "large"}
    for so in objects.values():
        assert so.metadata["account"] == "$G"  # user/password auth: the global account
        assert 1 <= so.lag_threshold and so.min_replicas <= so.max_replicas


async def test_keda_reads_the_consumer_leaders_lag_and_scales_as_the_manifests_intend(
    pod_like_cluster: NatsCluster,
) -> None:
    import nats

    cluster = pod_like_cluster
    objects = scaled_objects()
    nc = await nats.connect(**cluster.connect_options())
    try:
        js = nc.jetstream()
        await ensure_topology(js, replicas=3)
        service = cluster.nodes[0]
        scalers = {
            tier: CachedScaler(Trigger.from_metadata(so.metadata, endpoint=_endpoint(service)))
            for tier, so in objects.items()
        }

        # Idle: nothing queued. Small keeps its floor, medium and large go to zero.
        lags, idle = _replica_counts(objects, scalers, {})
        assert lags == {"small": 0, "medium": 0, "large": 0}
        assert idle == {
            tier: (so.min_replicas if so.min_replicas else 0) for tier, so in objects.items()
        }
        assert idle["medium"] == idle["large"] == 0

        # The query is KEDA's, byte for byte.
        assert scalers["small"].scaler.queried[0] == (
            f"http://{_endpoint(service)}/jsz?acc=%24G&config=true&consumers=true"
        )
        # The numbers came from each consumer's leader, found the way the Go code finds it.
        for tier, cached in scalers.items():
            q = tiers.TIERS[tier]
            info = await js.consumer_info(q.stream, q.durable)
            leader = cluster.node(info.cluster.leader)
            assert cached.scaler.consumer_leader == leader.name
            assert cached.scaler.monitoring_leader_url.startswith(f"http://{_endpoint(leader)}/jsz")
            assert cached.scaler.cluster_size == 3

        # A modest backlog: replicas in proportion (ceil(lag / lagThreshold)).
        modest = {"small": 23, "medium": 3, "large": 1}
        await _publish(js, modest)
        lags, counts = await _settled_counts(objects, scalers, idle, modest)
        assert counts == {
            tier: min(
                max(math.ceil(modest[tier] / so.lag_threshold), so.min_replicas, 1), so.max_replicas
            )
            for tier, so in objects.items()
        }

        # A burst: every tier at its maximum.
        burst = {"small": 400, "medium": 40, "large": 10}
        await _publish(js, {t: burst[t] - modest[t] for t in burst})
        lags, counts = await _settled_counts(objects, scalers, counts, burst)
        assert counts == {tier: so.max_replicas for tier, so in objects.items()}

        # Files being processed count too (num_ack_pending): a worker holding files is not
        # scaled away under them.
        sub = await bind_consumer(js, tiers.SMALL)
        held = await sub.fetch(30, timeout=5)
        assert len(held) == 30
        lags, _ = _replica_counts(objects, scalers, counts)
        assert lags["small"] == burst["small"]
        print("\nsmall-workers as each node reports it (pending, ack pending) with 30 held:")
        follower_lags = []
        for node in cluster.nodes:
            report = node.monitor("/jsz?acc=%24G&config=true&consumers=true")
            for account in report.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    for c in stream.get("consumer_detail") or []:
                        if c["name"] == tiers.SMALL.durable:
                            leader = c.get("cluster", {}).get("leader")
                            if leader != node.name:
                                follower_lags.append(c["num_pending"] + c["num_ack_pending"])
                            print(
                                f"  {node.name}: {c['num_pending']}, {c['num_ack_pending']}"
                                f"{'  (leader)' if leader == node.name else ''}"
                            )
        # Followers do not count pending messages (nats-server 2.15): a scaler reading any
        # node but the consumer leader would see almost no lag under a burst.
        assert follower_lags and all(lag < burst["small"] for lag in follower_lags)
        for msg in held:
            await msg.ack()
        await nc.flush()
        await _eventually_lag(scalers["small"], burst["small"] - 30)  # acks apply asynchronously

        # Every node as the Service's pick gives the same answer (it is the leader's).
        for node in cluster.nodes[1:]:
            other = CachedScaler(
                Trigger.from_metadata(objects["medium"].metadata, endpoint=_endpoint(node))
            )
            assert other.metrics_and_activity() == (burst["medium"], True)

        # The medium consumer's leader node dies: the cached leader URL fails, KEDA rebuilds
        # the scaler, which finds the new leader through a live node and reads the same lag.
        q = tiers.MEDIUM
        old = cluster.node((await js.consumer_info(q.stream, q.durable)).cluster.leader)
        cluster.kill(old)
        live = next(n for n in cluster.nodes if n.running())
        medium = CachedScaler(
            Trigger.from_metadata(objects["medium"].metadata, endpoint=_endpoint(live))
        )
        medium.scaler.consumer_leader = old.name  # the cache of the previous polls
        medium.scaler.monitoring_leader_url = medium.scaler.monitoring_node_url(old.host)
        lag = await _eventually_lag(medium, burst["medium"])
        assert medium.refreshes >= 1
        assert medium.scaler.consumer_leader not in ("", old.name)
        assert objects["medium"].replicas(lag, True, objects["medium"].max_replicas) == (
            objects["medium"].max_replicas
        )
    finally:
        await nc.close()


async def _settled_counts(
    objects: dict[str, ScaledObject],
    scalers: dict[str, CachedScaler],
    current: dict[str, int],
    expected: dict[str, int],
    limit: float = 15.0,
) -> tuple[dict[str, int], dict[str, int]]:
    """Poll like KEDA until the lags read are ``expected``: a consumer leader that is not the
    stream's leader counts a message once its copy of the stream has it (measured: a read right
    after the PubAck can still miss the last few), so one poll may lag behind."""
    import asyncio
    import time

    deadline = time.monotonic() + limit
    while True:
        lags, counts = _replica_counts(objects, scalers, current)
        if lags == expected:
            return lags, counts
        if time.monotonic() > deadline:
            raise AssertionError(f"KEDA would read {lags}, expected {expected}")
        await asyncio.sleep(0.2)


async def _publish(js: Any, counts: dict[str, int]) -> None:
    for tier, n in counts.items():
        for i in range(n):
            await js.publish(tiers.TIERS[tier].subject, f'{{"n": {i}}}'.encode())


async def _eventually_lag(cached: CachedScaler, expected: int, limit: float = 30.0) -> int:
    """Poll like KEDA (each poll may fail while the cluster elects a new consumer leader)."""
    import asyncio
    import time

    deadline = time.monotonic() + limit
    while True:
        try:
            lag, _ = cached.metrics_and_activity()
            if lag == expected:
                return lag
        except ScalerError:
            lag = -1
        if time.monotonic() > deadline:
            raise AssertionError(f"KEDA would read lag {lag}, expected {expected}")
        await asyncio.sleep(0.5)
