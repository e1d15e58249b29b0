"""The settlement table (:func:`p8fs_runner.settlement.decide`), exhaustively and without NATS.

Every outcome kind × dependency up/down × every delivery number of every queue (with its real
backoff and ``max_deliver``) is checked against the table in the module's docstring, written
out again here as plain rules, so that a change to either is seen.
"""

from __future__ import annotations

import itertools

import pytest

from p8fs.errors import (
    ConfigurationError,
    CorruptDocument,
    EncryptedDocument,
    InvalidPath,
    SourceNotFound,
    TransientError,
)
from p8fs_runner import tiers
from p8fs_runner.settlement import (
    Ack,
    DeadLetter,
    Failed,
    Ignored,
    Interrupted,
    Invalid,
    Nak,
    Outcome,
    Processed,
    Wait,
    decide,
    may_be_outage,
)

PERMANENT = CorruptDocument("page 3 is truncated")
TRANSIENT = TransientError("database unreachable")
OUTCOMES: dict[str, Outcome] = {
    "processed": Processed("ingest", {"action": "ingest"}, file_id="f", chunks=2),
    "ignored": Ignored(),
    "invalid": Invalid(ValueError("not JSON")),
    "interrupted": Interrupted(),
    "permanent": Failed(PERMANENT),
    "permanent, recorded": Failed(PERMANENT, error_recorded=True),
    "transient": Failed(TRANSIENT),
    "transient, recorded": Failed(TRANSIENT, error_recorded=True),
    "unknown exception": Failed(RuntimeError("bug")),
}
QUEUES = [q for q in tiers.ALL_QUEUES if q.name != "router"]


def expected(name: str, outcome: Outcome, delivery: int, spec: tiers.QueueSpec, down: bool):
    """The table, as rules."""
    if name in ("processed", "ignored"):
        return Ack()
    if name == "interrupted":
        return Nak(0.0, "interrupted by worker shutdown; handed back to the queue")
    if name == "invalid":
        return DeadLetter("not JSON", "ValueError", record_error=True)
    assert isinstance(outcome, Failed)
    if down:
        return Wait("database down")
    recorded = outcome.error_recorded
    reason = str(outcome.error)
    if name.startswith("permanent") or name == "unknown exception":
        return DeadLetter(reason, outcome.code, record_error=not recorded)
    if delivery >= spec.max_deliver:
        suffix = "" if recorded else f" (after {delivery} deliveries)"
        return DeadLetter(reason + suffix, "transient", record_error=not recorded, last_delivery=True)
    return Nak(spec.backoff[min(delivery - 1, len(spec.backoff) - 1)], reason)


@pytest.mark.parametrize("spec", QUEUES, ids=lambda q: q.name)
def test_every_outcome_at_every_delivery_with_dependencies_up_and_down(spec: tiers.QueueSpec) -> None:
    checked = 0
    for (name, outcome), delivery, down in itertools.product(
        OUTCOMES.items(), range(1, spec.max_deliver + 1), (False, True)
    ):
        got = decide(
            outcome, delivery=delivery, policy=spec, outage="database down" if down else None
        )
        assert got == expected(name, outcome, delivery, spec, down), (name, delivery, down)
        checked += 1
    assert checked == len(OUTCOMES) * spec.max_deliver * 2


def test_the_small_tier_backs_off_60_120_300_600_then_dead_letters_on_delivery_5() -> None:
    failed = Failed(TRANSIENT)
    delays = [decide(failed, delivery=n, policy=tiers.SMALL) for n in range(1, 6)]
    assert delays[:4] == [Nak(d, str(TRANSIENT)) for d in (60.0, 120.0, 300.0, 600.0)]
    assert isinstance(delays[4], DeadLetter) and delays[4].last_delivery


def test_an_outage_spends_no_delivery_even_on_the_last_one() -> None:
    for error in (TRANSIENT, ConfigurationError("the database refused the password"), PERMANENT):
        last = tiers.SMALL.max_deliver
        assert decide(Failed(error), delivery=last, policy=tiers.SMALL, outage="S3 403") == Wait(
            "S3 403"
        )


def test_only_failures_that_are_not_the_files_own_ask_the_probes() -> None:
    assert may_be_outage(TRANSIENT)
    assert may_be_outage(ConfigurationError("P8FS_DATABASE_URL refused"))
    assert may_be_outage(RuntimeError("unknown"))
    for own in (PERMANENT, EncryptedDocument("x"), SourceNotFound("gone"), InvalidPath("../")):
        assert not may_be_outage(own)
