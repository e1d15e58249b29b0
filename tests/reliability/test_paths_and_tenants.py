"""Hostile paths and tenants are rejected before anything is read or written.

Two entry points take names from outside. The runner's event parser is one: its hostile keys
(``..``, absolute, ``%2e%2e%2f`` and double encoding, NUL, newlines), bad buckets and tenant
mismatches are covered in ``tests/runner/test_events.py`` (``test_hostile_keys_are_rejected_in_
every_shape``, ``test_tenant_mismatch_is_rejected``, ``test_hostile_paths_never_pass`` ...); here
only the seam between the two is checked: every tenant the parser accepts is one the pipeline
accepts too. The other is the pipeline (``aingest``/``adelete``/``arename``), called by workers,
the CLI and notebooks: a hostile tenant id must be refused with ``InvalidPath`` before the file is
opened (an audit hook sees every ``open``) and before any row of any tenant changes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from p8fs.database import Database
from p8fs.errors import InvalidPath
from p8fs.pipeline import adelete, aingest, arename
from p8fs.settings import Settings

HOSTILE_TENANTS = [
    "../x",
    "..",
    ".",
    "a/b",
    "/abs",
    "a\\b",
    "\x00",
    "t-a\x00",
    "",
    " ",
    "\t\n",
    "t-a\n",
    "t\rx",
]
GOOD_TENANT = "t-a"

#: Paths opened while the audit hook listens (``open`` events carry the path).
_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and args and isinstance(args[0], str | bytes):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Every file path ``open``ed by Python code while the test runs."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", chunk_tokens=64, chunk_overlap=8)


@pytest.fixture
def document(tmp_path: Path) -> Path:
    """A file every call below could read without trouble, were it allowed to."""
    path = tmp_path / "readable.md"
    path.write_text("# Notes\n\nAnything a hostile tenant must never get to read.\n")
    return path


async def _rows(database: Database) -> tuple[int, int]:
    return await database.count("files"), await database.count("resources")


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS, ids=repr)
async def test_aingest_refuses_hostile_tenants_before_reading(
    tenant: str,
    database: Database,
    settings: Settings,
    document: Path,
    opened: list[str],
) -> None:
    with pytest.raises(InvalidPath, match="tenant_id"):
        await aingest(str(document), tenant, database=database, settings=settings)
    assert not any(document.name in path for path in opened)
    assert await _rows(database) == (0, 0)


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS, ids=repr)
async def test_adelete_and_arename_refuse_hostile_tenants_and_touch_nothing(
    tenant: str, database: Database, settings: Settings, document: Path
) -> None:
    stored = await aingest(str(document), GOOD_TENANT, database=database, settings=settings)
    before = await _rows(database)
    assert before[0] == 1 and before[1] >= 1

    with pytest.raises(InvalidPath):
        await adelete(str(document), tenant, database=database)
    with pytest.raises(InvalidPath):
        await arename(str(document), str(document.with_name("moved.md")), tenant, database=database)

    assert await _rows(database) == before
    kept = await database.get_file(GOOD_TENANT, stored.file.id)
    assert kept is not None and kept.uri == stored.file.uri


@pytest.mark.parametrize("path", ["a\x00b.md", "sub/\x00", "\x00"], ids=repr)
async def test_nul_in_a_local_path_is_refused_before_reading(
    path: str, sqlite_database: Database, settings: Settings, tmp_path: Path, opened: list[str]
) -> None:
    with pytest.raises(InvalidPath, match="NUL"):
        await aingest(
            str(tmp_path / path), GOOD_TENANT, database=sqlite_database, settings=settings
        )
    assert not any(str(tmp_path) in p for p in opened)
    assert await sqlite_database.count("files") == 0


@pytest.mark.parametrize("tenant", ["../x", "a/b", ""], ids=repr)
async def test_a_hostile_tenant_leaves_no_row_at_all(
    tenant: str, sqlite_database: Database, settings: Settings, document: Path
) -> None:
    with pytest.raises(InvalidPath):
        await aingest(str(document), tenant, database=sqlite_database, settings=settings)
    assert await sqlite_database.count("errors") == 0


# -- remote URIs ----------------------------------------------------------------------------------

TRAVERSING_URIS = [
    "s3://{a}/../{b}/secret.txt",
    "s3://{a}/x/../../{b}/secret.txt",
    "s3://{a}/./secret.txt",
    "s3://{a}/%2e%2e/{b}/secret.txt",
    "s3://{a}/..%2f{b}%2fsecret.txt",
    "s3://{a}/%252e%252e/{b}/secret.txt",
    "s3://{a}/secret.txt\n",
    "s3://{a}/sec\rret.txt",
]


@pytest.mark.parametrize("template", TRAVERSING_URIS, ids=repr)
async def test_traversing_object_uris_are_refused_before_any_request(
    template: str,
    sqlite_database: Database,
    settings: Settings,
    s3fs_filesystem: Any,
    seaweedfs: Any,
) -> None:
    """The other tenant's object exists and is readable: only validation stands between them."""
    import uuid

    a, b = (f"t-{uuid.uuid4().hex[:12]}" for _ in range(2))
    s3fs_filesystem.mkdir(a)
    s3fs_filesystem.mkdir(b)
    s3fs_filesystem.pipe(f"{b}/secret.txt", b"tenant b only")
    s3fs_filesystem.pipe(f"{a}/secret.txt", b"tenant a")
    uri = template.format(a=a, b=b)
    with pytest.raises(InvalidPath):
        await aingest(
            uri,
            a,
            database=sqlite_database,
            settings=settings,
            storage_options=seaweedfs.storage_options(),
        )
    assert await sqlite_database.count("files") == 0


# -- the seam between the event parser and the pipeline ---------------------------------------


@hypothesis_settings(max_examples=300, deadline=None, derandomize=True)
@given(
    bucket=st.text(alphabet=st.sampled_from(list("abz09.-_/\\ \x00\n%")), min_size=0, max_size=12),
    shape=st.sampled_from(["path", "bucket_key", "uri", "tail"]),
)
def test_every_tenant_the_event_parser_accepts_the_pipeline_accepts(
    bucket: str, shape: str
) -> None:
    """A worker hands ``event.tenant_id`` to ``aingest``: if the parser let a tenant through
    that the pipeline refuses (or the other way round, for valid buckets), events would be
    dead-lettered as invalid paths instead of processed, or worse, processed under a name the
    pipeline was meant to refuse."""
    from p8fs.pipeline import _validate_tenant
    from p8fs_runner.events import InvalidEvent, parse_event

    documents = {
        "path": {"event_type": "create", "path": f"/buckets/{bucket}/doc.pdf"},
        "bucket_key": {"event_type": "create", "bucket": bucket, "key": "doc.pdf"},
        "uri": {"event_type": "create", "uri": f"s3://{bucket}/doc.pdf"},
        "tail": {
            "directory": f"/buckets/{bucket}",
            "eventNotification": {"newEntry": {"name": "doc.pdf", "attributes": {"fileSize": 3}}},
        },
    }
    try:
        event = parse_event(documents[shape])
    except InvalidEvent:
        return
    if event is None:
        return
    _validate_tenant(event.tenant_id)  # must not raise
    assert event.tenant_id == event.bucket
