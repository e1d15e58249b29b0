"""``p8fs-run status``: the queues at a glance, what ``nats stream info`` and ``nats consumer
info`` tell the seed's operators, for every queue of the tier table in one table.

Columns: messages stored in the stream, messages the consumer has not delivered yet (pending,
the lag KEDA scales on), delivered but unacknowledged (ack pending: being processed),
redelivered (delivered more than once and still unacknowledged), pull requests waiting (idle
workers), and the dead letters per queue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nats.js.errors import NotFoundError

from p8fs_runner import tiers
from p8fs_runner.dlq import list_dead_letters

if TYPE_CHECKING:  # pragma: no cover
    from nats.js.client import JetStreamContext
    from rich.console import Console


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One row of the table (``None``: the stream or consumer does not exist)."""

    queue: str
    stream: str
    durable: str
    stream_exists: bool
    consumer_exists: bool
    messages: int | None
    bytes: int | None
    pending: int | None
    ack_pending: int | None
    redelivered: int | None
    waiting: int | None
    delivered: int | None
    dead_letters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Status:
    queues: list[QueueStatus]
    dead_letters: int

    def to_dict(self) -> dict[str, Any]:
        return {"queues": [q.to_dict() for q in self.queues], "dead_letters": self.dead_letters}

    def queue(self, name: str) -> QueueStatus:
        return next(q for q in self.queues if q.queue == name)


async def collect_status(
    js: JetStreamContext, queues: tuple[tiers.QueueSpec, ...] = tiers.ALL_QUEUES
) -> Status:
    """Read stream and consumer info for every queue and count dead letters per queue."""
    letters = await list_dead_letters(js)
    per_queue: dict[str, int] = {}
    for letter in letters:
        per_queue[letter.queue] = per_queue.get(letter.queue, 0) + 1
    rows: list[QueueStatus] = []
    for spec in queues:
        try:
            stream = await js.stream_info(spec.stream)
        except NotFoundError:
            stream = None
        consumer = None
        if stream is not None:
            try:
                consumer = await js.consumer_info(spec.stream, spec.durable)
            except NotFoundError:
                consumer = None
        rows.append(
            QueueStatus(
                queue=spec.name,
                stream=spec.stream,
                durable=spec.durable,
                stream_exists=stream is not None,
                consumer_exists=consumer is not None,
                messages=stream.state.messages if stream else None,
                bytes=stream.state.bytes if stream else None,
                pending=consumer.num_pending if consumer else None,
                ack_pending=consumer.num_ack_pending if consumer else None,
                redelivered=consumer.num_redelivered if consumer else None,
                waiting=consumer.num_waiting if consumer else None,
                delivered=consumer.delivered.consumer_seq if consumer else None,
                dead_letters=per_queue.get(spec.name, 0),
            )
        )
    return Status(queues=rows, dead_letters=len(letters))


def _cell(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def render_status(status: Status, console: Console) -> None:
    """Print the status as a rich table, with a hint when the router has not run."""
    from rich.table import Table

    table = Table(title="p8fs queues", title_justify="left")
    for column, justify in (
        ("queue", "left"),
        ("stream", "left"),
        ("consumer", "left"),
        ("messages", "right"),
        ("pending", "right"),
        ("ack pending", "right"),
        ("redelivered", "right"),
        ("waiting", "right"),
        ("dead letters", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for q in status.queues:
        consumer = q.durable if q.consumer_exists else f"[red]{q.durable} (missing)[/red]"
        stream = q.stream if q.stream_exists else f"[red]{q.stream} (missing)[/red]"
        table.add_row(
            q.queue,
            stream,
            consumer,
            _cell(q.messages),
            _cell(q.pending),
            _cell(q.ack_pending),
            _cell(q.redelivered),
            _cell(q.waiting),
            _cell(q.dead_letters),
        )
    console.print(table)
    console.print(f"dead-letter stream {tiers.DLQ_STREAM}: {status.dead_letters:,} message(s)")
    if not all(q.consumer_exists for q in status.queues):
        console.print(
            "[yellow]some streams or consumers are missing: run `p8fs-run router`[/yellow]"
        )
