"""The content-provider contract: what a plugin implements to teach p8fs a file format.

A provider turns one document into an ordered stream of :class:`Section` objects (a page, a
slide, a time-stamped audio segment). It *streams*: sections are yielded as they are read, so
memory stays flat however large the file. It reads from a local path or a seekable binary file
object and never downloads anything itself; opening ``s3://`` and friends is the pipeline's job.
"""

from __future__ import annotations

import importlib.util
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

from p8fs.errors import DocumentTimeout, ProviderUnavailable

#: What a provider reads: a local path or an open, seekable binary file object.
Source = str | os.PathLike[str] | BinaryIO


@dataclass(slots=True)
class Section:
    """One ordered piece of a document's text with where it came from.

    Conventional metadata keys (all optional): ``page`` (1-based), ``slide``, ``heading`` (the
    nearest heading above), ``kind`` (``"page"``, ``"table"``, ``"segment"``, ...), ``start`` and
    ``end`` (seconds, for time-based media), ``speaker``. Chunkers carry these into chunk
    metadata, so keep them JSON-serialisable.
    """

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    #: This text continues the previous section's directly, with no separator between them: a
    #: provider cut one long run of text (no blank line for megabytes) to keep memory bounded.
    continued: bool = False


@dataclass
class ExtractContext:
    """Everything a provider may need besides the bytes, and where it reports back.

    ``metadata`` is for document-level facts the provider learns (page count, duration, codecs,
    pages without text); the pipeline stores it on the ``files`` row. ``warnings`` collects
    recoverable problems (a page that could not be read) instead of failing the whole file.
    """

    uri: str = ""
    filename: str = ""
    mime_type: str | None = None
    size: int | None = None
    #: Per-call options, e.g. ``password`` for encrypted PDFs or ``layout`` for reading order.
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: ``time.monotonic()`` value after which extraction must stop (``None``: no limit).
    deadline: float | None = None

    def check_deadline(self) -> None:
        """Raise :class:`DocumentTimeout` once the per-document time limit has passed.

        Providers call this between pages or segments so a pathological file cannot hang a worker.
        """
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DocumentTimeout(
                f"extraction of {self.uri or self.filename or 'document'} exceeded its time limit "
                "(P8FS_DOCUMENT_TIMEOUT)"
            )

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class ContentProvider(ABC):
    """Base class of every content provider.

    Subclasses set the class attributes and implement :meth:`extract`. One instance is created
    per process and reused, so a provider that loads a model loads it once (lazily, on first
    use) and keeps it.
    """

    #: Unique name, e.g. ``"pdf"``.
    name: ClassVar[str]
    #: MIME types this provider claims (lower case).
    mime_types: ClassVar[tuple[str, ...]] = ()
    #: File extensions this provider claims, with the dot (lower case), e.g. ``(".pdf",)``.
    extensions: ClassVar[tuple[str, ...]] = ()
    #: When two providers claim the same MIME type or extension, the higher priority wins.
    priority: ClassVar[int] = 0
    #: Import names this provider needs beyond p8fs-core (checked without importing them).
    requires: ClassVar[tuple[str, ...]] = ()
    #: The pip requirement that brings ``requires``, e.g. ``"p8fs-node[office]"``.
    extra: ClassVar[str | None] = None

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """The names in ``requires`` that cannot be imported here."""
        return [mod for mod in cls.requires if importlib.util.find_spec(mod) is None]

    @classmethod
    def is_available(cls) -> bool:
        return not cls.missing_requirements()

    def ensure_available(self) -> None:
        """Raise :class:`ProviderUnavailable` naming the extra to install, if anything is missing."""
        missing = self.missing_requirements()
        if missing:
            hint = f"install {self.extra}" if self.extra else "install its dependencies"
            raise ProviderUnavailable(
                f"the {self.name!r} provider needs {', '.join(missing)}, which is not installed: "
                f"{hint}",
                provider=self.name,
                missing=missing,
            )

    @abstractmethod
    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        """Yield the document's sections in reading order.

        Raise a :class:`p8fs.errors.ProviderError` subclass for bad input (``CorruptDocument``,
        ``EncryptedDocument``, ``LimitExceeded`` ...), with a message a user can act on. Call
        ``context.check_deadline()`` between units of work.
        """


def source_name(source: Source) -> str:
    """A human-readable name for a source, for error messages."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "name", "") or "<stream>")


@contextmanager
def open_binary(source: Source) -> Iterator[BinaryIO]:
    """``source`` as a binary stream positioned at its start.

    A path is opened and closed here. A caller's file object is theirs: it is rewound (when
    seekable) before and after use, and left open.
    """
    path = source_path(source)
    if path is not None:
        with open(path, "rb") as owned:
            yield owned
        return
    stream = cast(BinaryIO, source)
    seekable = stream.seekable()
    if seekable:
        stream.seek(0)
    try:
        yield stream
    finally:
        if seekable and not stream.closed:
            stream.seek(0)


def source_path(source: Source) -> Path | None:
    """The local path of ``source`` if it is one, else ``None`` (file objects)."""
    if isinstance(source, str | os.PathLike):
        return Path(source)
    return None
