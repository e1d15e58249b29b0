"""The one table of queues: every stream, subject, durable and consumer setting the runner uses.

Consumers made with library defaults (a 30 s ack wait, unlimited deliveries, no backoff) hand a
500 MB video to a second worker while the first is still reading it. So every number lives in
this table, the router applies it (it is the only creator of streams and consumers), the worker
reads the same row to size its batches, its concurrency and its heartbeat, and ``p8fs-run
status`` reports against it. Names are the seed's.

``backoff`` is also what NATS uses as the ack wait: a consumer with a backoff list takes
``backoff[0]`` as the ack wait of the first delivery and ``backoff[n]`` as that of delivery
``n + 1`` (measured on nats-server 2.15). The worker naks a transient failure of delivery ``n``
with delay ``backoff[n - 1]``, so "how long until a failed file is retried" has one answer
whether the worker said so (nak) or died (ack timeout). The list never decreases, so the first
entry is the shortest ack wait and the heartbeat interval is derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

MiB = 1024**2
GiB = 1024**3

#: Files smaller than this go to the small tier.
SMALL_LIMIT = 100 * MiB
#: Files smaller than this (and not small) go to the medium tier; the rest to large.
MEDIUM_LIMIT = 1 * GiB

#: Where storage events arrive (the bridge, the API, ``nats pub``).
EVENTS_SUBJECT = "p8fs.storage.events"
EVENTS_STREAM = "P8FS_STORAGE_EVENTS"
#: Dead letters: ``p8fs.storage.dlq.<queue>``. Not under ``p8fs.storage.events.`` on purpose:
#: a wildcard there would overlap the tier streams' subjects, which JetStream refuses.
DLQ_SUBJECT_PREFIX = "p8fs.storage.dlq"
DLQ_STREAM = "P8FS_STORAGE_EVENTS_DLQ"

#: How long JetStream remembers a ``Nats-Msg-Id`` to drop a re-published duplicate.
DUPLICATE_WINDOW = 600.0
#: Dead letters are kept this long (an operator replays or lets them expire).
DLQ_MAX_AGE = 30 * 24 * 3600.0
#: JetStream keeps at most five copies of a stream.
MAX_REPLICAS = 5

TierName = Literal["small", "medium", "large", "test"]
TIER_NAMES: tuple[str, ...] = ("small", "medium", "large")


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One stream and its single durable pull consumer, with the consumer's settings.

    ``min_size``/``max_size`` bound the files routed here (``max_size`` exclusive, ``None``
    unbounded); the router's own queue has none.
    """

    name: str
    subject: str
    stream: str
    durable: str
    #: Redelivery schedule in seconds; ``backoff[0]`` is the ack wait (see module docstring).
    backoff: tuple[float, ...]
    #: Deliveries allowed before the message is dead-lettered (must exceed ``len(backoff)``).
    max_deliver: int
    #: Unacknowledged messages the consumer hands out across all replicas.
    max_ack_pending: int
    #: Messages one worker asks for per fetch.
    batch: int
    #: Files one worker processes at the same time.
    concurrency: int
    min_size: int = 0
    max_size: int | None = None
    description: str = ""
    #: The seed's memory limit of this tier's pods (documentation and manifests).
    memory: str = field(default="", compare=False)
    #: Copies of the stream (and its consumer) JetStream keeps: ``P8FS_NATS_REPLICAS``, the
    #: same for every queue (:meth:`RunnerSettings.queues` sets it); 3 on a 3-node cluster.
    #: ``None`` (the table's rows): not this spec's business -- a new stream gets the server's
    #: default (1) and an existing one keeps its copies, so a caller that sets up one queue on
    #: its own (the self-test) never changes what the router decided.
    replicas: int | None = None

    def __post_init__(self) -> None:
        if not self.backoff or any(b <= 0 for b in self.backoff):
            raise ValueError(f"queue {self.name}: backoff must be positive seconds")
        if list(self.backoff) != sorted(self.backoff):
            raise ValueError(f"queue {self.name}: backoff must not decrease")
        if self.max_deliver <= len(self.backoff):
            # nats-server refuses a consumer whose max_deliver does not exceed its backoff list.
            raise ValueError(f"queue {self.name}: max_deliver must exceed len(backoff)")
        if self.batch < 1 or self.concurrency < 1 or self.max_ack_pending < self.concurrency:
            raise ValueError(f"queue {self.name}: batch, concurrency, max_ack_pending inconsistent")
        if self.replicas is not None and not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"queue {self.name}: replicas must be 1 to {MAX_REPLICAS}")

    @property
    def ack_wait(self) -> float:
        """Seconds a delivery may go without an ack or a heartbeat before it is redelivered."""
        return self.backoff[0]

    @property
    def heartbeat_interval(self) -> float:
        """How often a worker sends ``in_progress()``: a third of the ack wait, so two may be lost."""
        return self.ack_wait / 3

    def retry_delay(self, num_delivered: int) -> float:
        """The nak delay after delivery number ``num_delivered`` (1-based) failed transiently."""
        index = max(0, min(num_delivered - 1, len(self.backoff) - 1))
        return self.backoff[index]

    def is_last_delivery(self, num_delivered: int) -> bool:
        """Whether no redelivery is left after this one: failing now means dead-lettering."""
        return num_delivered >= self.max_deliver

    @property
    def dlq_subject(self) -> str:
        return f"{DLQ_SUBJECT_PREFIX}.{self.name}"

    def accepts(self, size: int) -> bool:
        return size >= self.min_size and (self.max_size is None or size < self.max_size)

    def with_overrides(self, **changes: object) -> QueueSpec:
        """A copy with some settings changed (tests use a 2 s ack wait; operators may too)."""
        return replace(self, **changes)  # type: ignore[arg-type]


#: The router's own durable on the main stream (shared by every router replica).
ROUTER = QueueSpec(
    name="router",
    subject=EVENTS_SUBJECT,
    stream=EVENTS_STREAM,
    durable="router",
    backoff=(30.0, 30.0, 60.0, 120.0, 300.0),
    max_deliver=10,
    max_ack_pending=2000,
    batch=200,
    concurrency=1,
    description="storage events waiting to be routed to a tier by size",
)

SMALL = QueueSpec(
    name="small",
    subject=f"{EVENTS_SUBJECT}.small",
    stream=f"{EVENTS_STREAM}_SMALL",
    durable="small-workers",
    backoff=(60.0, 120.0, 300.0, 600.0),
    max_deliver=5,
    max_ack_pending=256,
    batch=16,
    concurrency=8,
    min_size=0,
    max_size=SMALL_LIMIT,
    description="files under 100 MiB",
    memory="1400Mi",
)

MEDIUM = QueueSpec(
    name="medium",
    subject=f"{EVENTS_SUBJECT}.medium",
    stream=f"{EVENTS_STREAM}_MEDIUM",
    durable="medium-workers",
    backoff=(180.0, 300.0, 900.0),
    max_deliver=4,
    max_ack_pending=16,
    batch=2,
    concurrency=2,
    min_size=SMALL_LIMIT,
    max_size=MEDIUM_LIMIT,
    description="files from 100 MiB to 1 GiB",
    memory="4Gi",
)

LARGE = QueueSpec(
    name="large",
    subject=f"{EVENTS_SUBJECT}.large",
    stream=f"{EVENTS_STREAM}_LARGE",
    durable="large-workers",
    backoff=(600.0, 900.0, 1800.0),
    max_deliver=4,
    max_ack_pending=4,
    batch=1,
    concurrency=1,
    min_size=MEDIUM_LIMIT,
    max_size=None,
    description="files of 1 GiB and more",
    memory="12Gi",
)

#: The self-test's queue: same shape as small, never routed to, isolated from production.
TEST = QueueSpec(
    name="test",
    subject=f"{EVENTS_SUBJECT}.test",
    stream=f"{EVENTS_STREAM}_TEST",
    durable="test-workers",
    backoff=(60.0, 60.0),
    max_deliver=3,
    max_ack_pending=16,
    batch=1,
    concurrency=1,
    description="self-test events (p8fs-run --send-sample)",
    memory="1400Mi",
)

#: Tier queues in routing order.
TIERS: dict[str, QueueSpec] = {q.name: q for q in (SMALL, MEDIUM, LARGE)}
#: Every queue a worker can bind to (``--tier``).
WORKER_QUEUES: dict[str, QueueSpec] = {**TIERS, "test": TEST}
#: Every queue the router creates, the router's own first.
ALL_QUEUES: tuple[QueueSpec, ...] = (ROUTER, SMALL, MEDIUM, LARGE, TEST)


def tier_for_size(size: int) -> QueueSpec:
    """The tier a file of ``size`` bytes is routed to (< 100 MiB small, < 1 GiB medium, else large).

    A negative or unknown size is routed as small: its real size is learned when it is read, and
    the small tier is the one that is always running.
    """
    for tier in TIERS.values():
        if tier.accepts(max(size, 0)):
            return tier
    raise AssertionError("the tier table does not cover every size")  # pragma: no cover


#: Consumer settings ``P8FS_TIER_OVERRIDES`` may change. Names, subjects and size bounds are the
#: contract between the router and the workers, so they are not among them.
OVERRIDABLE: tuple[str, ...] = ("backoff", "max_deliver", "max_ack_pending", "batch", "concurrency")


def apply_overrides(
    queues: tuple[QueueSpec, ...], overrides: Mapping[str, Mapping[str, Any]]
) -> tuple[QueueSpec, ...]:
    """``queues`` with per-queue settings replaced, e.g. ``{"small": {"backoff": [2, 4]}}``.

    Why: the table's waits are sized for production (a 60 s ack wait on small files); a test
    that kills workers, or an operator with unusual files, needs others, and the router (which
    creates the consumers) and every worker (which heartbeats and naks by the same numbers) must
    agree, so both read them from one setting. Raises ``ValueError`` naming the bad entry.
    """
    known = {q.name: q for q in queues}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}: expected some of {sorted(known)}")
    out = []
    for spec in queues:
        changes = dict(overrides.get(spec.name) or {})
        bad = sorted(set(changes) - set(OVERRIDABLE))
        if bad:
            raise ValueError(
                f"queue {spec.name}: {bad} cannot be overridden (only {', '.join(OVERRIDABLE)})"
            )
        if "backoff" in changes:
            changes["backoff"] = tuple(float(b) for b in changes["backoff"])
        out.append(spec.with_overrides(**changes) if changes else spec)
    return tuple(out)


def queue(name: str) -> QueueSpec:
    """The queue spec for a worker tier name, with a clear error for a wrong one."""
    try:
        return WORKER_QUEUES[name]
    except KeyError:
        raise ValueError(
            f"unknown tier {name!r}: expected one of {', '.join(WORKER_QUEUES)}"
        ) from None
