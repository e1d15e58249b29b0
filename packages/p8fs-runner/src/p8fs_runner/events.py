"""One parser for every storage event shape the runner meets, and the event it produces.

Shapes (real samples captured from SeaweedFS 4.48 are in ``tests/runner/data/``):

* **canonical / manual** (the seed's CLI and ``nats pub``): ``event_type``, ``path``, ``size``,
  ``mime_type``, ``entry`` {``Size``, ``Mime``}; optionally ``tenant_id``, ``bucket``/``key``,
  ``uri`` (``s3://bucket/key``), ``old_path``/``old_key``, ``metadata``, ``ts_ns``.
  :meth:`StorageEvent.to_json` writes this shape, so it round-trips.
* **filer metadata** (a ``SubscribeMetadata`` response as protojson camelCase, the shape the bridge
  makes of the filer's gRPC stream and ``weed filer.meta.tail`` prints): ``directory``,
  ``eventNotification`` {``oldEntry``, ``newEntry``, ``newParentPath``, ...}, ``tsNs``.
* **filer webhook** (``[notification.webhook]``, snake_case): ``event_type``, ``key`` (the full
  path; the *old* path for a rename), ``message`` {``old_entry``, ``new_entry``,
  ``new_parent_path``, ...}.

Create, update, delete and rename are told apart by which entries exist and where they sit
(the original typed everything ``update``): new only = create; old only = delete; both at the
same path = update; both at different paths = rename. Note that S3 has no rename: an S3
"move" is a copy (create) and a delete; only a filer-level move arrives as a rename.

The tenant is the bucket: ``/buckets/{tenant}/{key}``. An event that names a tenant disagreeing
with its bucket is rejected, as is every hostile path (``..``, absolute or empty keys,
URL-encoded traversal, NUL and control characters): all *before* anything is read or written.
``None`` means "nothing to process" (a directory, a multipart part under ``/.uploads/``, a path
outside ``/buckets``, SeaweedFS's own ``/buckets/.system``); anything malformed raises
:class:`InvalidEvent`, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from p8fs.errors import P8fsError

#: Where the SeaweedFS S3 gateway keeps buckets in the filer namespace.
BUCKETS_ROOT = "/buckets"
#: Largest event accepted; real ones are a few kilobytes (a filer entry with its chunk list).
MAX_EVENT_BYTES = 1 << 20
#: S3's limit on key length, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Folder SeaweedFS keeps in-progress multipart upload parts in, at the root of a bucket.
UPLOADS_FOLDER = ".uploads"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class InvalidEvent(P8fsError):
    """The event is malformed or hostile; retrying cannot help (dead-letter it)."""

    code = "invalid_event"


class EventType(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    RENAME = "rename"


@dataclass(frozen=True)
class StorageEvent:
    """A change to one object of one tenant's bucket, validated and safe to act on."""

    event_type: EventType
    tenant_id: str
    bucket: str
    #: The object key inside the bucket (never empty, never absolute, no ``..``).
    key: str
    #: The filer path, ``/buckets/{bucket}/{key}``.
    path: str
    size: int | None
    mime_type: str | None
    old_path: str | None = None
    old_key: str | None = None
    #: Extra facts carried by the event, e.g. ``password`` for an encrypted PDF (from the
    #: manual shape's ``metadata`` or the object's ``x-amz-meta-*`` headers). May hold
    #: secrets: never log it or copy it into an error row unredacted.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Filer timestamp of the change, in nanoseconds since the epoch (filer shapes only).
    ts_ns: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def old_uri(self) -> str | None:
        return f"s3://{self.bucket}/{self.old_key}" if self.old_key is not None else None

    def dedupe_id(self) -> str:
        """A stable id for this change, for ``Nats-Msg-Id``: the same filer change replayed
        (a bridge restart) gets the same id; a later change of the same path does not."""
        basis = "\x1f".join(
            (self.event_type.value, self.old_path or "", self.path, str(self.ts_ns or ""))
        )
        if self.ts_ns is None:  # no filer clock: the content facts are all that identify it
            basis += "\x1f" + str(self.size) + "\x1f" + (self.mime_type or "")
        return hashlib.sha256(basis.encode()).hexdigest()[:40]

    def to_dict(self) -> dict[str, Any]:
        """The canonical shape (the seed's, plus what it lacked); see :func:`parse_event`."""
        data: dict[str, Any] = {
            "event_type": self.event_type.value,
            "tenant_id": self.tenant_id,
            "bucket": self.bucket,
            "key": self.key,
            "path": self.path,
            "size": self.size,
            "mime_type": self.mime_type,
            "entry": {"Size": self.size, "Mime": self.mime_type},
        }
        if self.old_path is not None:
            data["old_path"] = self.old_path
            data["old_key"] = self.old_key
        if self.metadata:
            data["metadata"] = self.metadata
        if self.ts_ns is not None:
            data["ts_ns"] = self.ts_ns
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


# -- entry point -------------------------------------------------------------------------


def parse_event(data: bytes | str | Mapping[str, Any]) -> StorageEvent | None:
    """Turn any supported event shape into a :class:`StorageEvent`.

    Returns ``None`` for events that need no processing; raises :class:`InvalidEvent` for
    anything malformed or hostile. No other exception escapes, whatever the input.
    """
    try:
        document = _load(data)
        if "eventNotification" in document:
            event = _parse_filer(document, _meta_tail_fields)
        elif "message" in document and "key" in document:
            event = _parse_filer(document, _webhook_fields)
        else:
            event = _parse_canonical(document)
        if event is not None:
            # An accepted event must survive republishing (router, bridge, dead letters): JSON
            # escapes can smuggle in lone surrogates that no UTF-8 encoder accepts.
            try:
                event.to_json()
            except UnicodeEncodeError as exc:
                raise InvalidEvent(f"event holds text that is not valid Unicode ({exc.reason})") from exc
        return event
    except InvalidEvent:
        raise
    except Exception as exc:  # a shape nobody foresaw: still a typed, permanent rejection
        raise InvalidEvent(f"unreadable event ({type(exc).__name__}: {exc})") from exc


def _load(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        document: Any = data
    else:
        if isinstance(data, bytes | bytearray | memoryview):
            raw = bytes(data)
            if len(raw) > MAX_EVENT_BYTES:
                raise InvalidEvent(f"event of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidEvent(f"event is not UTF-8: {exc.reason}") from exc
        elif isinstance(data, str):
            text = data
            if len(text) > MAX_EVENT_BYTES:
                raise InvalidEvent(f"event of {len(text)} characters exceeds {MAX_EVENT_BYTES}")
        else:
            raise InvalidEvent(f"event must be bytes, str or a mapping, not {type(data).__name__}")
        if not text.strip():
            raise InvalidEvent("event is empty")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidEvent(f"event is not valid JSON: {exc}") from exc
    if not isinstance(document, Mapping):
        raise InvalidEvent(f"event must be a JSON object, not {type(document).__name__}")
    return document


# -- field helpers ------------------------------------------------------------------------


def _opt_str(document: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = document.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidEvent(f"{name!r} must be a string, not {type(value).__name__}")
        return value
    return None


def _opt_mapping(document: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"{name!r} must be an object, not {type(value).__name__}")
    return value


def _opt_int(value: Any, name: str) -> int | None:
    """A non-negative integer from an int or a string of digits (protojson writes int64 as a
    string), or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidEvent(f"{name!r} must be an integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise InvalidEvent(f"{name!r} must be a non-negative integer, not {value!r:.40}")
    if number < 0:
        raise InvalidEvent(f"{name!r} must not be negative")
    return number


def _mime(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name!r} must be a string")
    value = value.strip()
    if not value:
        return None
    if _CONTROL_RE.search(value) or len(value) > 255:
        raise InvalidEvent(f"{name!r} is not a MIME type")
    return value


def _check_tenant(declared: str | None, bucket: str) -> str:
    if declared is not None and declared != bucket:
        raise InvalidEvent(
            f"tenant mismatch: the event names tenant {declared!r} but its bucket is {bucket!r}",
            reason="tenant_mismatch",
        )
    return bucket


# -- path safety ---------------------------------------------------------------------------


def _check_bucket(bucket: str) -> None:
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidEvent(f"invalid bucket (tenant) name {bucket!r:.80}", reason="path")


def _check_key(key: str) -> None:
    """Reject every key that could escape its bucket or confuse a path join."""
    if not key:
        raise InvalidEvent("the object key is empty", reason="path")
    if key.startswith("/"):
        raise InvalidEvent(f"absolute object key {key!r:.80}", reason="path")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidEvent(f"object key longer than {MAX_KEY_BYTES} bytes", reason="path")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent("object key is not valid Unicode", reason="path") from exc
    if "\\" in key:
        raise InvalidEvent(f"backslash in object key {key!r:.80}", reason="path")
    for segment in key.split("/"):
        _check_segment(segment, key)


def _check_segment(segment: str, key: str) -> None:
    if segment in ("", ".", ".."):
        raise InvalidEvent(
            f"object key {key!r:.80} has a {segment or 'empty'!r} segment", reason="path"
        )
    if _CONTROL_RE.search(segment):
        raise InvalidEvent(f"control character (NUL, newline...) in key {key!r:.80}", reason="path")
    # URL-encoded traversal (%2e%2e, %2f, doubly encoded %252e...): decode until stable.
    decoded = segment
    for _ in range(3):
        if "%" not in decoded:
            break
        decoded, previous = unquote(decoded, errors="strict"), decoded
        if decoded == previous:
            break
        if (
            decoded in (".", "..")
            or "/" in decoded
            or "\\" in decoded
            or _CONTROL_RE.search(decoded)
        ):
            raise InvalidEvent(f"URL-encoded traversal in key {key!r:.80}", reason="path")


def _split_filer_path(path: str) -> tuple[str, str] | None:
    """``/buckets/{bucket}/{key}`` -> (bucket, key); None when the path is not an object of a
    bucket (outside ``/buckets``, a bucket itself, SeaweedFS internals, multipart parts)."""
    if not path.startswith(BUCKETS_ROOT + "/"):
        return None
    rest = path[len(BUCKETS_ROOT) + 1 :]
    bucket, sep, key = rest.partition("/")
    if not sep or bucket.startswith("."):  # the bucket folder itself; /buckets/.system
        return None
    if key == UPLOADS_FOLDER or key.startswith(UPLOADS_FOLDER + "/"):
        return None
    return bucket, key


def _filer_path(bucket: str, key: str) -> str:
    return f"{BUCKETS_ROOT}/{bucket}/{key}"


def _join(directory: str, name: str) -> str:
    if "/" in name or name in ("", ".", ".."):
        raise InvalidEvent(f"invalid entry name {name!r:.80}", reason="path")
    if _CONTROL_RE.search(name):
        raise InvalidEvent(f"control character in entry name {name!r:.80}", reason="path")
    # Only the root keeps its slash; any other trailing slash makes an empty segment, rejected
    # later like every other ambiguous path.
    return ("" if directory == "/" else directory) + "/" + name


def _located(path: str) -> tuple[str, str] | None:
    """Validated (bucket, key) of a filer path, or None if it is nothing to process."""
    if "\x00" in path:
        raise InvalidEvent("NUL in path", reason="path")
    split = _split_filer_path(path)
    if split is None:
        return None
    bucket, key = split
    _check_bucket(bucket)
    _check_key(key)
    return bucket, key


# -- filer shapes (meta tail and webhook) ---------------------------------------------------


@dataclass
class _FilerFields:
    directory: str | None
    old_entry: Mapping[str, Any] | None
    new_entry: Mapping[str, Any] | None
    new_parent_path: str | None
    ts_ns: int | None
    tenant: str | None


def _meta_tail_fields(document: Mapping[str, Any]) -> _FilerFields:
    notification = _opt_mapping(document, "eventNotification") or {}
    return _FilerFields(
        directory=_opt_str(document, "directory"),
        old_entry=_opt_mapping(notification, "oldEntry"),
        new_entry=_opt_mapping(notification, "newEntry"),
        new_parent_path=_opt_str(notification, "newParentPath") or None,
        ts_ns=_opt_int(document.get("tsNs"), "tsNs"),
        tenant=_opt_str(document, "tenant_id", "tenant"),
    )


def _webhook_fields(document: Mapping[str, Any]) -> _FilerFields:
    message = _opt_mapping(document, "message") or {}
    key = _opt_str(document, "key")
    if not key or not key.startswith("/"):
        raise InvalidEvent("webhook event without an absolute 'key' path")
    old_entry = _opt_mapping(message, "old_entry")
    new_entry = _opt_mapping(message, "new_entry")
    parent = _opt_str(message, "new_parent_path") or None
    # ``key`` is the path of the old entry when there is one, else of the new entry.
    directory = key.rsplit("/", 1)[0] or "/"
    if old_entry is None and new_entry is not None and parent is None:
        parent = directory
    return _FilerFields(
        directory=directory,
        old_entry=old_entry,
        new_entry=new_entry,
        new_parent_path=parent,
        ts_ns=_opt_int(document.get("ts_ns"), "ts_ns"),
        tenant=_opt_str(document, "tenant_id", "tenant"),
    )


def _entry_name(entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("filer entry without a name")
    return name


def _entry_attributes(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    return _opt_mapping(entry, "attributes") or {}


def _entry_is_file(entry: Mapping[str, Any]) -> bool:
    """Directories and symlinks are not objects to process."""
    if entry.get("isDirectory") is True or entry.get("is_directory") is True:
        return False
    attributes = _entry_attributes(entry)
    target = attributes.get("symlinkTarget") or attributes.get("symlink_target")
    return not target


def _entry_size(entry: Mapping[str, Any]) -> int:
    attributes = _entry_attributes(entry)
    value = attributes.get("fileSize", attributes.get("file_size"))
    size = _opt_int(value, "fileSize")
    return 0 if size is None else size  # proto3 omits zero values


def _entry_mime(entry: Mapping[str, Any]) -> str | None:
    return _mime(_entry_attributes(entry).get("mime"), "mime")


def _entry_metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    """S3 user metadata (``x-amz-meta-*``, base64 in the filer) as ``{name: text}``."""
    import base64
    import binascii

    extended = entry.get("extended")
    if not isinstance(extended, Mapping):
        return {}
    metadata: dict[str, Any] = {}
    for name, value in extended.items():
        if not isinstance(name, str) or not name.lower().startswith("x-amz-meta-"):
            continue
        if not isinstance(value, str):
            continue
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        metadata[name[len("x-amz-meta-") :].lower()] = text
    return metadata


def _parse_filer(document: Mapping[str, Any], extract: Any) -> StorageEvent | None:
    fields: _FilerFields = extract(document)
    old, new = fields.old_entry, fields.new_entry
    if old is None and new is None:
        raise InvalidEvent("filer event with neither an old nor a new entry")
    directory = fields.directory
    if directory is None or not directory.startswith("/"):
        raise InvalidEvent("filer event without an absolute 'directory'")

    old_location: tuple[str, str] | None = None
    old_path: str | None = None
    if old is not None:
        old_path = _join(directory, _entry_name(old))
        if _entry_is_file(old):
            old_location = _located(old_path)
    new_location: tuple[str, str] | None = None
    new_path: str | None = None
    if new is not None:
        new_path = _join(fields.new_parent_path or directory, _entry_name(new))
        if _entry_is_file(new):
            new_location = _located(new_path)

    if old is not None and new is not None and old_path == new_path:
        if new_location is None:
            return None
        event_type = EventType.UPDATE
        old_location = None
    elif new_location is not None and old_location is not None:
        event_type = EventType.RENAME
    elif new_location is not None:
        event_type = EventType.CREATE  # includes a move into a bucket from elsewhere
    elif old_location is not None:
        event_type = EventType.DELETE  # includes a move out of every bucket
    else:
        return None

    if event_type is EventType.DELETE:
        assert old is not None and old_location is not None and old_path is not None
        bucket, key = old_location
        entry, path = old, old_path
    else:
        assert new is not None and new_location is not None and new_path is not None
        bucket, key = new_location
        entry, path = new, new_path
    tenant = _check_tenant(fields.tenant, bucket)
    old_key: str | None = None
    if event_type is EventType.RENAME:
        assert old_location is not None
        if old_location[0] != bucket:
            raise InvalidEvent(
                f"rename across buckets ({old_location[0]!r} -> {bucket!r}) moves a file "
                "between tenants; refusing to guess which tenant's rows to change",
                reason="tenant_mismatch",
            )
        old_key = old_location[1]
    else:
        old_path = None
    return StorageEvent(
        event_type=event_type,
        tenant_id=tenant,
        bucket=bucket,
        key=key,
        path=path,
        size=_entry_size(entry),
        mime_type=_entry_mime(entry),
        old_path=old_path,
        old_key=old_key,
        metadata=_entry_metadata(entry),
        ts_ns=fields.ts_ns,
    )


# -- canonical / manual shape -------------------------------------------------------------


def _location(
    document: Mapping[str, Any], path_field: str, key_field: str, bucket: str | None
) -> tuple[str, str] | None:
    """(bucket, key) named by ``path_field`` (a filer path, ``/bucket/key`` or ``s3://``) and/or
    ``key_field``; when both are given they must agree. None when neither is present."""
    path = _opt_str(document, path_field)
    key = _opt_str(document, key_field)
    from_path: tuple[str, str] | None = None
    if path is not None:
        if "\x00" in path:
            raise InvalidEvent(f"NUL in {path_field!r}", reason="path")
        text = path[len("s3://") - 1 :] if path.startswith("s3://") else path
        if not text.startswith("/"):
            text = "/" + text
        if text.startswith(BUCKETS_ROOT + "/"):
            text = text[len(BUCKETS_ROOT) :]
        path_bucket, sep, path_key = text[1:].partition("/")
        if not sep:
            raise InvalidEvent(f"{path_field!r} {path!r:.80} names no object inside a bucket")
        from_path = (path_bucket, path_key)
    if key is not None:
        if bucket is None and from_path is None:
            raise InvalidEvent(f"{key_field!r} given without a bucket or path")
        key_bucket = bucket if bucket is not None else from_path[0]  # type: ignore[index]
        if from_path is not None and from_path != (key_bucket, key):
            raise InvalidEvent(f"{path_field!r} and {key_field!r} disagree", reason="path")
        return key_bucket, key
    if from_path is not None and bucket is not None and from_path[0] != bucket:
        raise InvalidEvent(f"{path_field!r} is not in bucket {bucket!r}", reason="path")
    return from_path


def _parse_canonical(document: Mapping[str, Any]) -> StorageEvent | None:
    kind = _opt_str(document, "event_type", "type")
    if kind is None:
        raise InvalidEvent("event has no 'event_type'")
    try:
        event_type = EventType(kind.strip().lower())
    except ValueError:
        raise InvalidEvent(f"unknown event_type {kind!r:.40}") from None
    bucket = _opt_str(document, "bucket")
    location = _location(document, "path", "key", bucket)
    uri = _opt_str(document, "uri")
    if uri is not None:
        if not uri.startswith("s3://"):
            raise InvalidEvent(f"'uri' must be an s3:// URI, not {uri!r:.80}")
        from_uri = _location({"path": uri}, "path", "key", None)
        if location is not None and from_uri != location:
            raise InvalidEvent("'uri' and 'path' disagree", reason="path")
        location = from_uri
    if location is None:
        raise InvalidEvent("event names no object: give 'path', 'bucket' + 'key' or 'uri'")
    bucket, key = location
    _check_bucket(bucket)
    # Validate before deciding to ignore, so that a hostile key is reported, not skipped.
    _check_key(key[:-1] if key.endswith("/") else key)
    if key.endswith("/"):
        return None  # an S3 "folder" marker object
    if key == UPLOADS_FOLDER or key.startswith(UPLOADS_FOLDER + "/"):
        return None  # a multipart part
    tenant = _check_tenant(_opt_str(document, "tenant_id", "tenant"), bucket)

    entry = _opt_mapping(document, "entry") or {}
    size = _opt_int(document.get("size"), "size")
    if size is None:
        size = _opt_int(entry.get("Size"), "entry.Size")
    mime_type = _mime(document.get("mime_type"), "mime_type") or _mime(
        entry.get("Mime"), "entry.Mime"
    )

    old_path: str | None = None
    old_key: str | None = None
    if event_type is EventType.RENAME:
        old = _location(document, "old_path", "old_key", bucket)
        if old is None:
            raise InvalidEvent("a rename event needs 'old_path' or 'old_key'")
        if old[0] != bucket:
            raise InvalidEvent(
                "rename across buckets (tenants) is refused", reason="tenant_mismatch"
            )
        _check_key(old[1])
        old_key = old[1]
        old_path = _filer_path(bucket, old_key)
        if old_key == key:
            event_type = EventType.UPDATE
            old_key = old_path = None

    metadata_value = document.get("metadata")
    if metadata_value is None:
        metadata: dict[str, Any] = {}
    elif isinstance(metadata_value, Mapping) and all(isinstance(k, str) for k in metadata_value):
        metadata = dict(metadata_value)
        json.dumps(metadata)  # must survive to_json; a TypeError becomes InvalidEvent
    else:
        raise InvalidEvent("'metadata' must be an object with string keys")
    return StorageEvent(
        event_type=event_type,
        tenant_id=tenant,
        bucket=bucket,
        key=key,
        path=_filer_path(bucket, key),
        size=size,
        mime_type=mime_type,
        old_path=old_path,
        old_key=old_key,
        metadata=metadata,
        ts_ns=_opt_int(document.get("ts_ns"), "ts_ns"),
    )
