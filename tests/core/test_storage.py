"""Opening sources: local files and objects on a real SeaweedFS over S3 (``weed mini``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from p8fs.database import Database
from p8fs.errors import InvalidPath, LimitExceeded, SourceNotFound, TransientError
from p8fs.pipeline import aingest
from p8fs.settings import Settings
from p8fs.storage import fetch, fetched, normalize_uri
from tests.fixtures.servers import corpus_path


def test_local_file_is_hashed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello world" * 1000)
    with fetched(str(path)) as source:
        assert source.local_path == path.resolve() and not source.temporary
        assert source.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
        assert source.size == 11000 and source.head.startswith(b"hello world")
    assert path.exists()  # never deleted: it is the user's file


def test_local_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        fetch(str(tmp_path / "missing.pdf"))
    with pytest.raises(InvalidPath):
        fetch(str(tmp_path))
    with pytest.raises(InvalidPath):
        normalize_uri("bad\x00name.txt")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(LimitExceeded, match="P8FS_MAX_FILE_BYTES"):
        fetch(str(big), max_bytes=1024)


def test_s3_object_is_streamed_to_a_temporary_copy(seaweedfs: Any, s3fs_filesystem: Any, s3_bucket: str) -> None:
    data = corpus_path("pdf/spf_minimal-document.pdf").read_bytes()
    s3fs_filesystem.pipe(f"{s3_bucket}/docs/min.pdf", data)
    uri = f"s3://{s3_bucket}/docs/min.pdf"
    with fetched(uri, storage_options=seaweedfs.storage_options()) as source:
        assert source.uri == uri and source.name == "min.pdf"
        assert source.temporary and source.local_path.read_bytes() == data
        assert source.content_hash == hashlib.sha256(data).hexdigest()
        copy = source.local_path
    assert not copy.exists(), "the temporary copy must be removed"

    with pytest.raises(SourceNotFound):
        fetch(f"s3://{s3_bucket}/docs/nope.pdf", storage_options=seaweedfs.storage_options())
    with pytest.raises(LimitExceeded):
        fetch(uri, storage_options=seaweedfs.storage_options(), max_bytes=100)


def test_unreachable_object_store_is_transient(s3_bucket: str) -> None:
    from tests.fixtures.servers import free_port

    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(TransientError, match="could not read"):
        fetch(f"s3://{s3_bucket}/x.txt", storage_options=options)


async def test_ingest_from_s3(seaweedfs: Any, s3fs_filesystem: Any, s3_bucket: str, sqlite_database: Database,
                              tmp_path: Path) -> None:
    data = corpus_path("p8fs_sample_data/p8fs_node/documents/sample.pdf").read_bytes()
    s3fs_filesystem.pipe(f"{s3_bucket}/in/sample.pdf", data)
    settings = Settings(data_dir=tmp_path, seaweedfs_endpoint=seaweedfs.endpoint,
                        s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key)
    result = await aingest(f"s3://{s3_bucket}/in/sample.pdf", s3_bucket, database=sqlite_database, settings=settings)
    assert result.provider == "pdf" and result.file.metadata["pages"] == 2
    resources = await sqlite_database.list_resources(s3_bucket, file_id=result.file.id)
    assert resources[0].uri == f"s3://{s3_bucket}/in/sample.pdf#chunk_0"
    assert "Sample PDF Document" in resources[0].content


async def test_errors_name_the_object_not_its_temporary_copy(
    seaweedfs: Any, s3fs_filesystem: Any, s3_bucket: str, sqlite_database: Database, tmp_path: Path
) -> None:
    from p8fs.errors import EncryptedDocument

    s3fs_filesystem.pipe(f"{s3_bucket}/locked.pdf", corpus_path("pdf/spf_libreoffice-writer-password.pdf").read_bytes())
    settings = Settings(data_dir=tmp_path, seaweedfs_endpoint=seaweedfs.endpoint,
                        s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key)
    uri = f"s3://{s3_bucket}/locked.pdf"
    with pytest.raises(EncryptedDocument) as caught:
        await aingest(uri, s3_bucket, database=sqlite_database, settings=settings)
    assert uri in str(caught.value) and "p8fs-" not in str(caught.value)
    (row,) = await sqlite_database.list_errors(s3_bucket)
    assert uri in row.message and "/tmp" not in row.message


async def test_afetch_reads_an_object_with_one_streamed_get(
    seaweedfs: Any, s3fs_filesystem: Any, s3_bucket: str
) -> None:
    from p8fs.storage import aclose_filesystems, afetch, async_s3_filesystem

    data = corpus_path("pdf/spf_minimal-document.pdf").read_bytes()
    s3fs_filesystem.pipe(f"{s3_bucket}/docs/min.pdf", data)
    uri = f"s3://{s3_bucket}/docs/min.pdf"
    options = seaweedfs.storage_options()
    fs = await async_s3_filesystem(options)
    calls: list[str] = []
    original = fs._call_s3

    async def counting(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await original(method, *args, **kwargs)

    fs._call_s3 = counting
    try:
        source = await afetch(uri, storage_options=options)
        # Small enough to be held: no temporary copy, and providers read it as a named stream.
        assert source.uri == uri and source.name == "min.pdf" and not source.temporary
        assert source.local_path is None and source.data == data and source.size == len(data)
        assert source.content_hash == hashlib.sha256(data).hexdigest()
        assert source.head == data[: len(source.head)] and source.head
        stream = source.open()
        assert stream.read() == data and stream.name == uri  # type: ignore[union-attr]
        source.release()
        assert calls == ["get_object"], "one GET per object: no HEAD before it"
        assert await async_s3_filesystem(options) is fs, "the client is reused on the loop"

        with pytest.raises(SourceNotFound):
            await afetch(f"s3://{s3_bucket}/docs/nope.pdf", storage_options=options)
        with pytest.raises(LimitExceeded, match="P8FS_MAX_FILE_BYTES"):
            await afetch(uri, storage_options=options, max_bytes=100)
        with pytest.raises(InvalidPath, match="directory"):
            await afetch(f"s3://{s3_bucket}/docs", storage_options=options)
        with pytest.raises(InvalidPath, match=r"'\.\.'"):
            await afetch(f"s3://{s3_bucket}/docs/../x.pdf", storage_options=options)
    finally:
        await aclose_filesystems()
    assert await async_s3_filesystem(options) is not fs, "closed filesystems are forgotten"
    await aclose_filesystems()


async def test_afetch_over_the_limit_reads_no_body(
    seaweedfs: Any, s3fs_filesystem: Any, s3_bucket: str, tmp_path: Path
) -> None:
    """The size check happens on the response headers: nothing is written for a refused object;
    an object larger than one read buffer is streamed to a temporary copy."""
    from p8fs.storage import aclose_filesystems, afetch

    data = os.urandom(3 << 20)  # several read blocks
    s3fs_filesystem.pipe(f"{s3_bucket}/big.bin", data)
    spool = tmp_path / "spool"
    spool.mkdir()
    uri = f"s3://{s3_bucket}/big.bin"
    try:
        with pytest.raises(LimitExceeded):
            await afetch(uri, storage_options=seaweedfs.storage_options(), max_bytes=1 << 20, tmp_dir=spool)
        assert list(spool.iterdir()) == []
        # Larger than one read buffer: streamed to a temporary copy, removed on release.
        source = await afetch(uri, storage_options=seaweedfs.storage_options(), tmp_dir=spool)
        assert source.size == len(data) and source.content_hash == hashlib.sha256(data).hexdigest()
        assert source.temporary and source.data is None and source.local_path is not None
        assert source.local_path.parent == spool and source.local_path.read_bytes() == data
        source.release()
    finally:
        await aclose_filesystems()
    assert list(spool.iterdir()) == []


async def test_afetch_local_files_and_a_dead_endpoint(tmp_path: Path, s3_bucket: str) -> None:
    from p8fs.storage import aclose_filesystems, afetch
    from tests.fixtures.servers import free_port

    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    source = await afetch(str(path))
    assert source.local_path == path.resolve() and not source.temporary and source.size == 5
    with pytest.raises(SourceNotFound):
        await afetch(str(tmp_path / "missing.txt"))

    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    try:
        with pytest.raises(TransientError, match="could not read"):
            await afetch(f"s3://{s3_bucket}/x.txt", storage_options=options)
    finally:
        await aclose_filesystems()


def test_a_closed_loop_leaves_no_filesystem_behind(
    seaweedfs: Any, s3fs_filesystem: Any, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``asyncio.run(aingest(...))`` again and again must not keep one S3 client per loop, nor
    leave open connections for the garbage collector to complain about."""
    import asyncio
    import gc
    import logging

    from p8fs import storage

    s3fs_filesystem.pipe(f"{s3_bucket}/a.txt", b"hello")

    async def one() -> bytes:
        source = await storage.afetch(f"s3://{s3_bucket}/a.txt", storage_options=seaweedfs.storage_options())
        return source.data or b""

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(3):
            assert asyncio.run(one()) == b"hello"
            gc.collect()
        live = [loop for loop, _ in storage._async_filesystems.values() if not loop.is_closed()]
        assert live == [] and len(storage._async_filesystems) <= 1
        storage._forget_closed_loops()  # what the next use, or the interpreter's exit, does
        gc.collect()
    assert storage._async_filesystems == {}
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
