"""Opening a source for processing: a local path, or any fsspec URL (``s3://`` on SeaweedFS).

Providers need random access (a PDF's cross-reference table is at its end; PyAV seeks), and a
file must never sit in memory whole. So a remote object is streamed once to a temporary file
while its sha256 is computed, and the provider reads that file; a local file is hashed in place.
Either way memory stays at one read buffer.

From async code (a queue worker) use :func:`afetch`: an ``s3://`` object is then read with one
GET on the caller's own event loop (the size check uses the response's ``Content-Length``, before
the body is read), instead of a HEAD, a second HEAD and a GET hopping between threads; and an
object no larger than the read buffer stays in memory instead of going through a temporary file.
For small files these costs were most of a queue worker's time (measured with
``benchmarks/queue_throughput.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import io
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
    from p8fs.providers import Source
    from p8fs.settings import Settings

COPY_BUFFER = 1 << 20


#: A remote object no larger than this is kept in memory instead of a temporary copy: it is no
#: more than the one read buffer streaming holds anyway, and a small file's temporary copy (create,
#: write, reopen, unlink) costs more than everything else done to it.
IN_MEMORY_MAX = COPY_BUFFER


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A source ready to be read: where it is, and what we learned reading it once.

    It is either a local file (``local_path``: the user's own, or our temporary copy of a remote
    object) or, for a small remote object, its bytes (``data``). Providers read :meth:`open`.
    """

    uri: str
    name: str
    local_path: Path | None
    size: int
    content_hash: str
    head: bytes
    #: ``local_path`` is our temporary copy of a remote object (removed by :meth:`release`).
    temporary: bool = False
    #: The whole object, when it is small enough to be held (then ``local_path`` is ``None``).
    data: bytes | None = None

    def open(self) -> Source:
        """What a provider reads: the local path, or the held bytes as a binary stream."""
        if self.local_path is not None:
            return self.local_path
        stream = io.BytesIO(self.data or b"")
        stream.name = self.uri  # what providers call the source in their messages
        return stream

    def release(self) -> None:
        """Remove the temporary copy, if any."""
        if self.temporary and self.local_path is not None:
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


class _Fingerprint:
    """What one read of a source learns, block by block: its sha256, size and sniffing head."""

    __slots__ = ("digest", "head", "size")

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.head = b""
        self.size = 0

    def update(self, block: bytes) -> None:
        if len(self.head) < SNIFF_BYTES:
            self.head += block[: SNIFF_BYTES - len(self.head)]
        self.digest.update(block)
        self.size += len(block)


def _hash_and_head(stream: Any, sink: Any | None = None) -> tuple[str, bytes, int]:
    seen = _Fingerprint()
    while block := stream.read(COPY_BUFFER):
        seen.update(block)
        if sink is not None:
            sink.write(block)
    return seen.digest.hexdigest(), seen.head, seen.size


def object_name(uri: str) -> str:
    """The last path segment of a normalised URI: ``s3://b/docs/a.pdf`` → ``a.pdf``."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


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
    name = object_name(normalized)
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


#: URL schemes :func:`afetch` reads natively (anything else goes through :func:`fetch`).
ASYNC_S3_SCHEMES = ("s3://", "s3a://")

#: One async S3 filesystem per event loop and storage options (its HTTP session is bound to
#: the loop that created it, and reusing it keeps connections alive between files). Keyed by the
#: loop's id; entries of loops that have been closed are dropped on the next use.
_async_filesystems: dict[int, tuple[asyncio.AbstractEventLoop, dict[str, Any]]] = {}


async def afetch(
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> SourceFile:
    """:func:`fetch` for async code: same result, same errors.

    ``s3://`` objects are read with a single streamed GET on the running loop; local paths and
    other fsspec protocols are handed to :func:`fetch` in a thread.
    """
    normalized = normalize_uri(uri)
    if not normalized.startswith(ASYNC_S3_SCHEMES):
        return await asyncio.to_thread(
            fetch, normalized, storage_options=storage_options, max_bytes=max_bytes, tmp_dir=tmp_dir
        )
    name = object_name(normalized)
    tmp: Path | None = None
    try:
        fs = await async_s3_filesystem(storage_options or {})
        bucket, key, version = fs.split_path(normalized)
        if not key:
            raise IsADirectoryError(normalized)
        extra = {"VersionId": version} if version else {}
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
        except FileNotFoundError:
            # A "directory" (a prefix, or SeaweedFS's folder entry) has no object to GET; say
            # what it is rather than that it is missing.
            if await _is_directory(fs, f"{bucket}/{key}"):
                raise IsADirectoryError(normalized) from None
            raise
        async with response["Body"] as body:
            announced = response.get("ContentLength")
            _check_size(announced, max_bytes, normalized)
            seen = _Fingerprint()
            if announced is not None and announced <= IN_MEMORY_MAX:
                data = await body.read()
                _check_size(len(data), max_bytes, normalized)
                seen.update(data)
                return SourceFile(
                    normalized, name, None, seen.size, seen.digest.hexdigest(), seen.head,
                    data=data,
                )
            fd, tmp_name = tempfile.mkstemp(prefix="p8fs-", suffix="-" + name[-40:], dir=tmp_dir)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as sink:
                while block := await body.read(COPY_BUFFER):
                    seen.update(block)
                    sink.write(block)
                    # A stream longer than announced is still held to the limit.
                    _check_size(seen.size, max_bytes, normalized)
    except Exception as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise _classify(exc, normalized) from exc
    return SourceFile(
        normalized, name, tmp, seen.size, seen.digest.hexdigest(), seen.head, temporary=True
    )


async def async_s3_filesystem(storage_options: dict[str, Any]) -> Any:
    """The running loop's async ``s3fs`` filesystem for these options, created (and its client
    set up: a few hundred milliseconds of botocore loading) on first use."""
    import json

    import s3fs

    loop = asyncio.get_running_loop()
    _forget_closed_loops()
    _, per_loop = _async_filesystems.setdefault(id(loop), (loop, {}))
    key = json.dumps(storage_options, sort_keys=True, default=repr)
    fs = per_loop.get(key)
    if fs is None:
        fs = s3fs.S3FileSystem(
            asynchronous=True, loop=loop, skip_instance_cache=True, **storage_options
        )
        await fs.set_session()
        per_loop[key] = fs
    return fs


@atexit.register
def _forget_closed_loops() -> None:
    """Drop (and disconnect) the filesystems of loops that have ended: ``asyncio.run()`` around
    one ``aingest``, whose loop nobody will use again. Also run at exit, for the last one."""
    for key, (loop, stale) in list(_async_filesystems.items()):
        if loop.is_closed():
            del _async_filesystems[key]
            for fs in stale.values():
                _close_sockets(fs)


def _close_sockets(fs: Any) -> None:
    """Close the connections of a filesystem whose loop has ended (its async close can no
    longer run), so nothing is left for the garbage collector to warn about."""
    try:
        sessions = fs._s3._endpoint.http_session._sessions or {}
    except AttributeError:  # another aiobotocore layout: the collector closes them instead
        return
    for session in list(sessions.values()):
        connector = session.connector
        if connector is not None and not connector.closed:
            try:
                connector._close()  # the synchronous part of close(): the transports
            except Exception:  # pragma: no cover - best effort on a dead loop
                pass
        session._connector = None


async def _is_directory(fs: Any, path: str) -> bool:
    try:
        return bool((await fs._info(path)).get("type") == "directory")
    except Exception:
        return False


async def aclose_filesystems() -> None:
    """Close the async S3 sessions :func:`afetch` opened on the running loop (call it before
    the loop ends, so no HTTP session is left to be closed by the garbage collector)."""
    _, per_loop = _async_filesystems.pop(id(asyncio.get_running_loop()), (None, {}))
    for fs in per_loop.values():
        await fs._s3creator.__aexit__(None, None, None)


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

