"""The one event parser: every shape (from real captured SeaweedFS output), every type, what is
ignored, and every malformed or hostile input rejected with ``InvalidEvent`` and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p8fs.errors import P8fsError, is_permanent
from p8fs_runner.events import EventType, InvalidEvent, StorageEvent, parse_event

DATA = Path(__file__).parent / "data"
#: ``weed filer.meta.tail`` (SeaweedFS 4.48) while s3fs did: create bucket, put, overwrite,
#: move (= copy + delete in S3), delete, put with x-amz-meta-password, folder marker put/delete.
S3_OPS = DATA / "filer_meta_tail_s3_put_overwrite_move_delete_metadata.json"
#: The same tail during a multipart upload, a Unicode key, an empty file and two filer renames.
MULTIPART_RENAME = DATA / "filer_meta_tail_multipart_unicode_rename.json"
#: Bodies the filer's ``[notification.webhook]`` POSTed for put, overwrite, delete, rename.
WEBHOOK = DATA / "filer_webhook_bodies.jsonl"

SEED_EVENT = {
    "event_type": "create",
    "path": "/test/file.txt",
    "size": 1024,
    "mime_type": "text/plain",
    "entry": {"Size": 1024, "Mime": "text/plain"},
}


def documents(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON documents of a capture: meta.tail prints indented JSON objects back to back."""
    decoder = json.JSONDecoder()
    text = path.read_text()
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return
        document, index = decoder.raw_decode(text, index)
        yield document


def parsed(path: Path) -> list[StorageEvent]:
    events = [parse_event(json.dumps(doc)) for doc in documents(path)]
    return [event for event in events if event is not None]


def summary(events: list[StorageEvent]) -> list[tuple[str, str, int | None, str | None]]:
    return [(e.event_type.value, e.key, e.size, e.old_key) for e in events]


# -- shapes ---------------------------------------------------------------------------------


def test_meta_tail_s3_operations() -> None:
    raw = list(documents(S3_OPS))
    events = parsed(S3_OPS)
    # Bucket creation, SeaweedFS's /buckets/.system bookkeeping and folders are ignored.
    assert len(raw) > len(events)
    assert summary(events) == [
        ("create", "docs/x.txt", 5, None),
        ("update", "docs/x.txt", 11, None),
        ("create", "docs/y.txt", 11, None),  # an S3 move is a copy ...
        ("delete", "docs/x.txt", 11, None),  # ... and a delete
        ("delete", "docs/y.txt", 11, None),
        ("create", "secret.pdf", 12, None),
    ]
    assert {e.tenant_id for e in events} == {e.bucket for e in events} == {"tenant-a"}
    assert events[0].path == "/buckets/tenant-a/docs/x.txt"
    assert events[0].uri == "s3://tenant-a/docs/x.txt"
    assert events[0].mime_type == "text/plain; charset=utf-8"
    assert events[-1].mime_type == "application/pdf"
    # x-amz-meta-password travels with the event (base64 in the filer entry).
    assert events[-1].metadata == {"password": "open-sesame"}
    timestamps = [e.ts_ns for e in events]
    assert all(isinstance(t, int) for t in timestamps)
    assert timestamps == sorted(timestamps)


def test_meta_tail_multipart_unicode_empty_and_renames() -> None:
    events = parsed(MULTIPART_RENAME)
    assert summary(events) == [
        ("create", "mp/multi.bin", 15 * 1024 * 1024, None),  # parts under /.uploads/ ignored
        ("create", "Über dir/naïve file.pdf", 13, None),
        ("create", "empty.txt", 0, None),  # proto3 omits zero sizes: still 0, not None
        ("rename", "renamed/moved.pdf", 13, "Über dir/naïve file.pdf"),
        ("rename", "empty2.txt", 0, "empty.txt"),
    ]
    moved = events[3]
    assert moved.old_path == "/buckets/tenant-a/Über dir/naïve file.pdf"
    assert moved.path == "/buckets/tenant-a/renamed/moved.pdf"
    assert moved.old_uri == "s3://tenant-a/Über dir/naïve file.pdf"


def test_webhook_bodies() -> None:
    events = [parse_event(line) for line in WEBHOOK.read_text().splitlines()]
    real = [e for e in events if e is not None]
    assert summary(real) == [
        ("create", "docs/x.txt", 5, None),
        ("update", "docs/x.txt", 11, None),
        ("delete", "docs/x.txt", 11, None),
        ("create", "a.txt", 3, None),
        ("rename", "sub/b.txt", 3, "a.txt"),
    ]
    assert {e.tenant_id for e in real} == {"tenant-b"}
    assert real[-1].old_path == "/buckets/tenant-b/a.txt"


def test_webhook_type_comes_from_the_entries_not_the_label() -> None:
    body = json.loads(WEBHOOK.read_text().splitlines()[-1])  # a rename
    body["event_type"] = "update"  # the original's mistake: every event labelled update
    event = parse_event(body)
    assert event is not None and event.event_type is EventType.RENAME


def test_seed_manual_shape() -> None:
    event = parse_event(json.dumps(SEED_EVENT))
    assert event == StorageEvent(
        event_type=EventType.CREATE,
        tenant_id="test",
        bucket="test",
        key="file.txt",
        path="/buckets/test/file.txt",
        size=1024,
        mime_type="text/plain",
    )


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"event_type": "create", "path": "/buckets/tenant-a/a.pdf"}, ("tenant-a", "a.pdf")),
        ({"event_type": "CREATE", "path": "tenant-a/x/a.pdf"}, ("tenant-a", "x/a.pdf")),
        ({"event_type": "update", "uri": "s3://tenant-a/a.pdf"}, ("tenant-a", "a.pdf")),
        ({"event_type": "delete", "bucket": "tenant-a", "key": "d/a.pdf"}, ("tenant-a", "d/a.pdf")),
        (
            {"event_type": "create", "path": "/tenant-a/a.pdf", "tenant_id": "tenant-a"},
            ("tenant-a", "a.pdf"),
        ),
    ],
)
def test_manual_locations(document: dict[str, Any], expected: tuple[str, str]) -> None:
    event = parse_event(document)
    assert event is not None
    assert (event.tenant_id, event.key) == expected
    assert event.size is None and event.mime_type is None


def test_size_and_mime_fall_back_to_entry() -> None:
    event = parse_event(
        {"event_type": "create", "path": "/t-a/x.bin", "entry": {"Size": "42", "Mime": "a/b"}}
    )
    assert event is not None and (event.size, event.mime_type) == (42, "a/b")


def test_manual_rename_and_degenerate_rename() -> None:
    event = parse_event(
        {"event_type": "rename", "path": "/buckets/t-a/new.txt", "old_path": "/buckets/t-a/old.txt"}
    )
    assert event is not None and event.event_type is EventType.RENAME
    assert (event.old_key, event.key, event.old_path) == (
        "old.txt",
        "new.txt",
        "/buckets/t-a/old.txt",
    )
    same = parse_event({"event_type": "rename", "path": "/t-a/x.txt", "old_key": "x.txt"})
    assert same is not None and same.event_type is EventType.UPDATE and same.old_key is None


def test_every_parsed_event_round_trips_through_to_json() -> None:
    events = parsed(S3_OPS) + parsed(MULTIPART_RENAME)
    events += [e for e in map(parse_event, WEBHOOK.read_text().splitlines()) if e is not None]
    events.append(parse_event(SEED_EVENT))  # type: ignore[arg-type]
    assert len(events) == 17
    for event in events:
        data = event.to_json()
        assert isinstance(data, bytes)
        assert parse_event(data) == event
        assert json.loads(data)["entry"] == {"Size": event.size, "Mime": event.mime_type}


def test_dedupe_id_is_stable_per_change_and_distinct_between_changes() -> None:
    first = [parse_event(json.dumps(doc)) for doc in documents(S3_OPS)]
    second = [parse_event(json.dumps(doc)) for doc in documents(S3_OPS)]
    ids = [e.dedupe_id() for e in first if e is not None]
    assert ids == [e.dedupe_id() for e in second if e is not None]
    assert len(set(ids)) == len(ids)  # create and update of docs/x.txt differ


# -- ignorable ------------------------------------------------------------------------------


def _tail(directory: str, new: dict[str, Any] | None, old: dict[str, Any] | None = None) -> dict:
    return {
        "directory": directory,
        "eventNotification": {
            "oldEntry": old,
            "newEntry": new,
            "newParentPath": directory if new else "",
        },
        "tsNs": "1700000000000000000",
    }


def _file(name: str, size: int = 10) -> dict[str, Any]:
    return {"name": name, "isDirectory": False, "attributes": {"fileSize": str(size), "mime": ""}}


@pytest.mark.parametrize(
    "document",
    [
        _tail("/buckets/t-a", {"name": "docs", "isDirectory": True}),
        _tail("/buckets/t-a/.uploads/abc", _file("0001_x.part")),
        _tail("/buckets/t-a", {"name": ".uploads", "isDirectory": True}),
        _tail("/buckets/.system/owners/p8fs", _file("t-a")),
        _tail("/buckets", _file("loose-file-without-bucket.txt")),
        _tail("/etc", _file("passwd")),
        _tail("/buckets/t-a", {"name": "link", "attributes": {"symlinkTarget": "/x"}}),
        {"event_type": "create", "path": "/buckets/t-a/folder/"},
        {"event_type": "create", "path": "/buckets/t-a/.uploads/p/0001.part"},
    ],
)
def test_ignorable_events_are_none(document: dict[str, Any]) -> None:
    assert parse_event(json.dumps(document)) is None


def test_moves_into_and_out_of_buckets() -> None:
    into = _tail("/staging", _file("a.txt"), old=_file("a.txt"))
    into["eventNotification"]["newParentPath"] = "/buckets/t-a"
    event = parse_event(into)
    assert event is not None and event.event_type is EventType.CREATE and event.key == "a.txt"
    out = _tail("/buckets/t-a", _file("a.txt"), old=_file("a.txt"))
    out["eventNotification"]["newParentPath"] = "/trash"
    event = parse_event(out)
    assert event is not None and event.event_type is EventType.DELETE
    upload_done = _tail("/buckets/t-a/.uploads/u", _file("x.bin"), old=_file("x.bin"))
    upload_done["eventNotification"]["newParentPath"] = "/buckets/t-a/final"
    event = parse_event(upload_done)
    assert event is not None and event.event_type is EventType.CREATE
    assert event.key == "final/x.bin"


# -- malformed and hostile ------------------------------------------------------------------

MALFORMED: list[Any] = [
    b"",
    b"   ",
    b"\xff\xfe",
    "{",
    "[]",
    "null",
    "42",
    '"create"',
    b"{" * 100_000 + b"}" * 100_000,  # nesting deep enough to blow the recursion limit
    {},
    {"path": "/t-a/x"},  # no event_type
    {"event_type": "explode", "path": "/t-a/x"},
    {"event_type": 7, "path": "/t-a/x"},
    {"event_type": "create"},  # nothing named
    {"event_type": "create", "path": 12},
    {"event_type": "create", "path": "/t-a"},  # a bucket, not an object
    {"event_type": "create", "key": "x.txt"},  # key without bucket
    {"event_type": "create", "path": "/t-a/x", "size": -1},
    {"event_type": "create", "path": "/t-a/x", "size": "ten"},
    {"event_type": "create", "path": "/t-a/x", "size": True},
    {"event_type": "create", "path": "/t-a/x", "size": 1.5},
    {"event_type": "create", "path": "/t-a/x", "entry": []},
    {"event_type": "create", "path": "/t-a/x", "mime_type": ["a"]},
    {"event_type": "create", "path": "/t-a/x", "metadata": ["a"]},
    {"event_type": "create", "path": "/t-a/x", "uri": "http://evil/x"},
    {"event_type": "create", "path": "/t-a/x", "uri": "s3://t-a/y"},  # disagree
    {"event_type": "create", "path": "/t-a/x", "bucket": "t-b"},
    {"event_type": "rename", "path": "/t-a/x"},  # no old location
    {"event_type": "create", "path": "/t-a/x", "ts_ns": "yesterday"},
    {"directory": "/buckets/t-a", "eventNotification": {}},
    {"directory": "/buckets/t-a", "eventNotification": {"newEntry": {"isDirectory": False}}},
    {"directory": "/buckets/t-a", "eventNotification": "create"},
    {"eventNotification": {"newEntry": _file("x")}},  # no directory
    {"directory": "buckets/t-a", "eventNotification": {"newEntry": _file("x")}},
    {"directory": "/buckets/t-a", "eventNotification": {"newEntry": _file("x")}, "tsNs": "-5"},
    {"key": "relative/x", "message": {"new_entry": _file("x")}, "event_type": "create"},
    {"key": "/buckets/t-a/x", "message": [], "event_type": "create"},
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_events_raise_invalid_event(data: Any) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data)
    assert isinstance(caught.value, P8fsError)
    assert caught.value.code == "invalid_event"
    assert is_permanent(caught.value)


HOSTILE_KEYS = [
    "../t-b/secret.pdf",
    "docs/../../t-b/x",
    "./x",
    "%2e%2e/t-b/x",
    "%2E%2E/x",
    "%252e%252e/x",  # double encoding
    "docs%2f..%2fx",
    "a%00b",
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\\..\\b",
    "a//b",
    "",
    "x" * 1025,
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_hostile_keys_are_rejected_in_every_shape(key: str) -> None:
    for document in (
        {"event_type": "create", "path": f"/buckets/t-a/{key}"},
        {"event_type": "create", "bucket": "t-a", "key": key},
        {"event_type": "delete", "uri": f"s3://t-a/{key}"},
        {"event_type": "rename", "path": "/t-a/ok.txt", "old_key": key},
    ):
        with pytest.raises(InvalidEvent):
            parse_event(json.dumps(document))
    directory, _, name = f"/buckets/t-a/{key}".rpartition("/")
    if name:
        with pytest.raises(InvalidEvent):
            parse_event(json.dumps(_tail(directory, _file(name))))


@pytest.mark.parametrize(
    "document",
    [
        {"event_type": "create", "bucket": "t-a", "key": "/etc/passwd"},
        {"event_type": "create", "path": "/buckets/UPPER/x"},
        {"event_type": "create", "path": "/buckets/a/x"},  # bucket name too short
        {"event_type": "create", "path": "/buckets/t..a/x"},
        _tail("/buckets/t-a/../t-b", _file("x")),
        _tail("/buckets/t-a", _file("a\nb")),
        _tail("/buckets/t-a", {"name": "../x", "attributes": {}}),
    ],
)
def test_hostile_buckets_and_filer_paths_are_rejected(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        parse_event(json.dumps(document))


def test_tenant_mismatch_is_rejected() -> None:
    with pytest.raises(InvalidEvent, match="tenant mismatch") as caught:
        parse_event({"event_type": "create", "path": "/buckets/t-a/x", "tenant_id": "t-b"})
    assert caught.value.details["reason"] == "tenant_mismatch"
    with pytest.raises(InvalidEvent, match="tenant mismatch"):
        parse_event({"event_type": "create", "path": "/t-a/x", "tenant": "t-b"})
    with pytest.raises(InvalidEvent, match="tenant mismatch"):
        parse_event({**_tail("/buckets/t-a", _file("x")), "tenant_id": "t-b"})
    webhook = json.loads(WEBHOOK.read_text().splitlines()[-1])
    with pytest.raises(InvalidEvent, match="tenant mismatch"):
        parse_event({**webhook, "tenant_id": "someone-else"})


def test_rename_across_buckets_is_rejected() -> None:
    across = _tail("/buckets/t-a", _file("x"), old=_file("x"))
    across["eventNotification"]["newParentPath"] = "/buckets/t-b"
    with pytest.raises(InvalidEvent, match="across buckets"):
        parse_event(across)
    with pytest.raises(InvalidEvent):
        parse_event({"event_type": "rename", "path": "/t-a/x", "old_path": "/t-b/x"})


# -- property: any input -> StorageEvent, None or InvalidEvent --------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)

_FIELD_NAMES = [
    "event_type",
    "path",
    "key",
    "bucket",
    "uri",
    "size",
    "mime_type",
    "entry",
    "tenant_id",
    "old_path",
    "old_key",
    "metadata",
    "ts_ns",
    "directory",
    "eventNotification",
    "message",
    "tsNs",
]
near_valid = st.fixed_dictionaries(
    {"event_type": st.sampled_from(["create", "update", "delete", "rename", "x"])},
    optional={name: json_values | st.text() for name in _FIELD_NAMES[1:]},
)
path_like = st.text(alphabet=st.sampled_from(list("ab./%2e\\\x00\n-_ ")), max_size=24)
path_events = st.fixed_dictionaries(
    {
        "event_type": st.sampled_from(["create", "update", "delete", "rename"]),
        "path": st.builds(
            lambda b, k: f"/buckets/{b}/{k}", st.sampled_from(["t-a", "t-b"]), path_like
        ),
    },
    optional={"old_key": path_like, "tenant_id": st.sampled_from(["t-a", "t-b"])},
)


def _check_outcome(data: Any) -> None:
    try:
        event = parse_event(data)
    except InvalidEvent:
        return
    if event is None:
        return
    assert isinstance(event, StorageEvent)
    # Invariants every accepted event satisfies, whatever it came from:
    assert event.tenant_id == event.bucket
    assert event.path == f"/buckets/{event.bucket}/{event.key}"
    for key in (event.key, event.old_key or "ok"):
        segments = key.split("/")
        assert key and not key.startswith("/")
        assert ".." not in segments and "." not in segments and "" not in segments
        assert not any(ch in key for ch in "\x00\n\r\\")
    assert event.size is None or event.size >= 0
    assert parse_event(event.to_json()) == event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    _check_outcome(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json(value: Any) -> None:
    _check_outcome(json.dumps(value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid)
def test_near_valid_events(document: dict[str, Any]) -> None:
    _check_outcome(json.dumps(document))
    _check_outcome(document)


@settings(max_examples=400, deadline=None)
@given(path_events)
def test_hostile_paths_never_pass(document: dict[str, Any]) -> None:
    _check_outcome(json.dumps(document))
