"""Opening a source for processing: a local path, or any fsspec URL (``s3://`` on SeaweedFS).

Providers need random access (a PDF's cross-reference table is at its end; PyAV seeks), and a
file must never sit in memory whole. So a remote object is streamed once to a temporary file
while its sha256 is computed, and the provider reads that file; a local file is hashed in place.
Either way memory stays at one read buffer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from p8fs.errors import InvalidPath, LimitExceeded, P8fsError, SourceNotFound, TransientError
from p8fs.sniff import SNIFF_BYTES

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.settings import Settings

COPY_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A source ready to be read: where it is locally, and what we learned reading it once."""

    uri: str
    name: str
    local_path: Path
    size: int
    content_hash: str
    head: bytes
    #: ``local_path`` is our temporary copy of a remote object (removed by :meth:`release`).
    temporary: bool = False

    def release(self) -> None:
        """Remove the temporary copy, if any."""
        if self.temporary:
            self.local_path.unlink(missing_ok=True)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalize_uri(uri: str | os.PathLike[str]) -> str:
    """The URI stored for a source: absolute local paths, remote URLs unchanged (but checked)."""
    text = os.fspath(uri)
    if "\x00" in text:
        raise InvalidPath("a path must not contain NUL bytes")
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_remote(text):
        _check_object_uri(text)
        return text
    return str(Path(text).expanduser().resolve())


def _check_object_uri(uri: str) -> None:
    """Refuse object URIs that could name another place than they seem to: ``.``/``..``
    segments (also URL-encoded, once or twice) and control characters. The object store may
    or may not normalise them; we never ask it."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
        raise InvalidPath(f"object URI {uri!r} contains control characters")
    path = uri.split("://", 1)[1]
    for _ in range(3):  # decode until stable: %252e%252e → %2e%2e → ..
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    segments = path.replace("\\", "/").split("/")
    if any(segment in (".", "..") for segment in segments):
        raise InvalidPath(f"object URI {uri!r} contains '.' or '..' path segments")


def storage_options_from_settings(settings: Settings) -> dict[str, Any]:
    """fsspec/s3fs options for the configured SeaweedFS S3 endpoint and credentials."""
    options: dict[str, Any] = {}
    if settings.s3_access_key is not None:
        options["key"] = settings.s3_access_key.get_secret_value()
    if settings.s3_secret_key is not None:
        options["secret"] = settings.s3_secret_key.get_secret_value()
    client_kwargs: dict[str, Any] = {"region_name": settings.s3_region}
    if settings.seaweedfs_endpoint:
        client_kwargs["endpoint_url"] = settings.seaweedfs_endpoint
    options["client_kwargs"] = client_kwargs
    return options


def _hash_and_head(stream: Any, sink: Any | None = None) -> tuple[str, bytes, int]:
    digest = hashlib.sha256()
    head = b""
    size = 0
    while True:
        block = stream.read(COPY_BUFFER)
        if not block:
            break
        if len(head) < SNIFF_BYTES:
            head += block[: SNIFF_BYTES - len(head)]
        digest.update(block)
        size += len(block)
        if sink is not None:
            sink.write(block)
    return digest.hexdigest(), head, size


def _classify(exc: BaseException, uri: str) -> P8fsError:
    if isinstance(exc, P8fsError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return SourceNotFound(f"{uri} does not exist", uri=uri)
    if isinstance(exc, IsADirectoryError):
        return InvalidPath(f"{uri} is a directory, not a file", uri=uri)
    # Network, credentials being rotated, endpoint restarting: worth a retry.
    return TransientError(f"could not read {uri}: {type(exc).__name__}: {exc}", uri=uri)


def fetch(
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> SourceFile:
    """Make ``uri`` readable as a local file (blocking: run it in a thread from async code).

    The caller must :meth:`SourceFile.release` the result (or use :func:`fetched`). Raises
    :class:`SourceNotFound`, :class:`LimitExceeded` (larger than ``max_bytes``, checked before
    anything is downloaded) or :class:`TransientError` (I/O that may heal).
    """
    normalized = normalize_uri(uri)
    name = normalized.rstrip("/").rsplit("/", 1)[-1]
    if not is_remote(normalized):
        path = Path(normalized)
        try:
            if path.is_dir():
                raise IsADirectoryError(normalized)
            _check_size(path.stat().st_size, max_bytes, normalized)
            with open(path, "rb") as stream:
                digest, head, size = _hash_and_head(stream)
        except Exception as exc:
            raise _classify(exc, normalized) from exc
        return SourceFile(normalized, name, path, size, digest, head)

    import fsspec

    tmp: Path | None = None
    try:
        fs, path_in_fs = fsspec.core.url_to_fs(normalized, **(storage_options or {}))
        info = fs.info(path_in_fs)
        if info.get("type") == "directory":
            raise IsADirectoryError(normalized)
        _check_size(info.get("size"), max_bytes, normalized)
        fd, tmp_name = tempfile.mkstemp(prefix="p8fs-", suffix="-" + name[-40:], dir=tmp_dir)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as sink, fs.open(path_in_fs, "rb", block_size=COPY_BUFFER) as stream:
            digest, head, size = _hash_and_head(stream, sink)
    except Exception as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise _classify(exc, normalized) from exc
    return SourceFile(normalized, name, tmp, size, digest, head, temporary=True)


@contextmanager
def fetched(uri: str, **kwargs: Any) -> Iterator[SourceFile]:
    """:func:`fetch` as a context manager that releases the temporary copy."""
    source = fetch(uri, **kwargs)
    try:
        yield source
    finally:
        source.release()


def _check_size(size: int | None, max_bytes: int | None, uri: str) -> None:
    if max_bytes is not None and size is not None and size > max_bytes:
        raise LimitExceeded(
            f"{uri} is {size:,} bytes, over the limit of {max_bytes:,} (P8FS_MAX_FILE_BYTES)",
            size=size,
            limit=max_bytes,
        )

