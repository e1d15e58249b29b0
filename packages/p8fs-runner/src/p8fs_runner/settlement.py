"""How one delivery of a storage event is settled: what processing returns, and the decision.

Processing a delivery ends in an :data:`Outcome` (the event was :class:`Invalid`, :class:`Ignored`,
:class:`Processed`, :class:`Failed` or :class:`Interrupted`); :func:`decide` turns it, with the
delivery number, the queue's retry policy and the state of the worker's dependencies, into a
:data:`Decision`. The decision is pure (no I/O, no clock) so that the rules below are one table,
tested exhaustively without a broker; :mod:`p8fs_runner.worker` carries it out.

===============================  ===========  ==============  ========================================
outcome                          dependency   delivery        decision
===============================  ===========  ==============  ========================================
Processed, Ignored               any          any             Ack (after the commit)
Invalid (unparsable event)       any          any             DeadLetter, errors row written here
Interrupted (worker stopping)    any          any             Nak(0): another worker takes it now
Failed                           down         any             Wait: keep the message, spend nothing
Failed, permanent                up           any             DeadLetter
Failed, transient                up           not the last    Nak(the tier's backoff for delivery n)
Failed, transient                up           the last        DeadLetter ("after n deliveries")
===============================  ===========  ==============  ========================================

"Dependency down" is decided by the worker's probes (database, S3), asked only when the error is
not a fault of the file itself (see :func:`may_be_outage`): an outage of the database, of S3 or
of their credentials is not a property of the file, and must not spend its deliveries or send a
good file to the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from p8fs.errors import InvalidPath, ProviderError, SourceNotFound, error_code, is_permanent

# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    """The event's work is done: its rows are committed.

    ``summary`` is what the ``jobs`` row's ``result`` holds (for an ingest, built by
    :func:`p8fs.pipeline.ingest_summary`, the same function that commits a job DONE together with
    the file's rows). ``job_committed`` says whether that DONE row was part of the file's own
    transaction; if not, the worker writes it before acknowledging.
    """

    action: Literal["ingest", "delete", "rename"]
    summary: Mapping[str, Any]
    file_id: str | None = None
    chunks: int = 0
    job_committed: bool = False


@dataclass(frozen=True)
class Failed:
    """Processing raised ``error``; ``error_recorded`` says its ``errors`` row is committed."""

    error: BaseException
    error_recorded: bool = False

    @property
    def permanent(self) -> bool:
        return is_permanent(self.error)

    @property
    def code(self) -> str:
        return error_code(self.error)


@dataclass(frozen=True)
class Invalid:
    """The message is not a storage event at all (unparsable or malformed)."""

    error: BaseException


@dataclass(frozen=True)
class Ignored:
    """A valid event that asks for nothing (a directory, a multipart part)."""


@dataclass(frozen=True)
class Interrupted:
    """The worker is stopping and did not finish this delivery."""


Outcome = Processed | Failed | Invalid | Ignored | Interrupted


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """Acknowledge: the work is committed."""


@dataclass(frozen=True)
class Nak:
    """Hand the message back, to be delivered again after ``delay`` seconds."""

    delay: float
    reason: str = ""


@dataclass(frozen=True)
class DeadLetter:
    """Record the failure, publish a dead letter, then ``term`` the message.

    ``record_error`` is false when the ``errors`` row already exists (the pipeline wrote it).
    """

    reason: str
    code: str
    record_error: bool
    last_delivery: bool = False


@dataclass(frozen=True)
class Wait:
    """A dependency is down: keep the message (heartbeats keep it ours), stop pulling, and
    process it again once the dependency answers. No delivery is spent."""

    reason: str


Decision = Ack | Nak | DeadLetter | Wait


class RetryPolicy(Protocol):
    """What :func:`decide` needs of a queue (a :class:`p8fs_runner.tiers.QueueSpec`)."""

    @property
    def max_deliver(self) -> int: ...

    def retry_delay(self, num_delivered: int) -> float: ...

    def is_last_delivery(self, num_delivered: int) -> bool: ...


def may_be_outage(error: BaseException) -> bool:
    """Whether ``error`` could come from a dependency rather than from the file.

    A provider's refusal (corrupt, encrypted, too large, unsupported), a missing object and a
    hostile path are the file's own; everything else (a transient error, a configuration error
    such as refused database credentials, an unknown exception) is worth asking the probes about.
    """
    return not isinstance(error, ProviderError | SourceNotFound | InvalidPath)


def decide(
    outcome: Outcome, *, delivery: int, policy: RetryPolicy, outage: str | None = None
) -> Decision:
    """The settlement of one delivery (the module's table, and nothing else).

    ``delivery`` is the message's ``num_delivered`` (1-based); ``outage`` the reason a
    dependency is down, if the worker's probes found one.
    """
    if isinstance(outcome, Processed | Ignored):
        return Ack()
    if isinstance(outcome, Interrupted):
        return Nak(0.0, "interrupted by worker shutdown; handed back to the queue")
    if isinstance(outcome, Invalid):
        return DeadLetter(_reason(outcome.error), error_code(outcome.error), record_error=True)
    if outage is not None:
        return Wait(outage)
    reason = _reason(outcome.error)
    if outcome.permanent:
        return DeadLetter(reason, outcome.code, record_error=not outcome.error_recorded)
    if policy.is_last_delivery(delivery):
        if not outcome.error_recorded:
            reason = f"{reason} (after {delivery} deliveries)"
        return DeadLetter(
            reason, outcome.code, record_error=not outcome.error_recorded, last_delivery=True
        )
    return Nak(policy.retry_delay(delivery), reason)


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__

