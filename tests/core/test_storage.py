"""Opening sources: local files and objects on a real SeaweedFS over S3 (``weed mini``)."""

from __future__ import annotations

import hashlib
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
