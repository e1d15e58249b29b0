"""The event parser under structure-aware mutation of real captured SeaweedFS events.

``tests/runner/test_events.py`` already puts :func:`p8fs_runner.events.parse_event` under
hypothesis with arbitrary bytes, arbitrary JSON, near-valid canonical events and hostile paths.
What those strategies rarely reach is the *depth* of the filer shapes: a real
``filer.meta.tail`` or webhook event whose ``eventNotification.newEntry.attributes.fileSize`` is
suddenly a list, whose ``extended`` metadata holds numbers, whose entry name gained a ``..``.
Here hypothesis starts from every real captured event and rewrites, deletes or replaces one to
three nodes anywhere in its tree; the outcome must still be a valid event, ``None`` or
``InvalidEvent``, with the same invariants as there (reused from that module). It also feeds
pathologically deep and large JSON. Examples are derandomized (the same ones on every run, so
CI cannot flake); what other seeds found is pinned below as regression tests.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p8fs_runner.events import MAX_EVENT_BYTES, InvalidEvent, parse_event
from tests.runner.test_events import MULTIPART_RENAME, S3_OPS, WEBHOOK, _check_outcome, documents

CAPTURED: list[dict[str, Any]] = [
    *documents(S3_OPS),
    *documents(MULTIPART_RENAME),
    *(json.loads(line) for line in WEBHOOK.read_text().splitlines()),
]

HOSTILE_STRINGS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "/",
        "../t-b",
        "x/../../t-b",
        "%2e%2e",
        "%252e%252e%252f",
        "a\x00b",
        "a\nb",
        "\\",
        "/buckets/t-b",
        "/buckets/.system",
        ".uploads",
        "t-b",
        "T-A",
        "x" * 2000,
        "\udcff",
    ]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | HOSTILE_STRINGS
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _nodes(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of ``tree`` (dict keys and list indexes)."""
    found = [path]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _nodes(value, (*path, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += _nodes(value, (*path, index))
    return found


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    event = copy.deepcopy(draw(st.sampled_from(CAPTURED)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _nodes(event) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = event
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "hostile"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "hostile":
            parent[path[-1]] = draw(HOSTILE_STRINGS)
        else:
            parent[path[-1]] = draw(VALUES)
    return event


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(mutated_events())
def test_mutated_real_events_give_an_event_none_or_invalid_event(event: dict[str, Any]) -> None:
    _check_outcome(event)  # the parsed mapping, as a worker that decoded it itself would pass
    try:
        text = json.dumps(event)
    except (ValueError, UnicodeEncodeError):
        return
    _check_outcome(text)
    _check_outcome(text.encode("utf-8", "surrogatepass"))


def test_captured_events_all_parse() -> None:
    """The starting points are valid: mutations, not the corpus, produce the rejections."""
    outcomes = [parse_event(event) for event in CAPTURED]
    assert sum(o is not None for o in outcomes) >= 10


def test_deeply_nested_json_is_an_invalid_event_not_a_recursion_error() -> None:
    for depth in (1_000, 100_000):
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            data = opener * depth + "1" + closer * depth
            try:
                parse_event(data)
            except InvalidEvent:
                continue
            raise AssertionError(f"nesting {depth} deep was accepted")


def test_oversized_event_is_refused_without_parsing() -> None:
    padding = "x" * MAX_EVENT_BYTES
    for data in (
        json.dumps({"event_type": "create", "path": "/buckets/t-a/x", "pad": padding}),
        json.dumps({"event_type": "create", "path": "/buckets/t-a/x", "pad": padding}).encode(),
    ):
        try:
            parse_event(data)
        except InvalidEvent as exc:
            assert "exceeds" in str(exc)
        else:
            raise AssertionError("an event over MAX_EVENT_BYTES was accepted")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(min_value=-(2**200), max_value=2**200), st.sampled_from(["size", "ts_ns"]))
def test_any_integer_in_numeric_fields(number: int, name: str) -> None:
    _check_outcome(json.dumps({"event_type": "create", "path": "/buckets/t-a/x", name: number}))


LONE_SURROGATES = [
    # Valid JSON (an escaped lone surrogate) that decodes to a str no UTF-8 encoder accepts.
    rb'{"event_type":"create","path":"/buckets/t-a/x.pdf","mime_type":"\udcff"}',
    rb'{"event_type":"create","path":"/buckets/t-a/x.pdf","metadata":{"password":"\udcff"}}',
]


@pytest.mark.parametrize("raw", LONE_SURROGATES, ids=["mime_type", "metadata"])
def test_lone_surrogates_are_rejected_or_survive_to_json(raw: bytes) -> None:
    _check_outcome(raw)
