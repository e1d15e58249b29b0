"""Office documents, HTML, EPUB and e-mail through unstructured's partitioners, offline.

Why unstructured: one maintained set of partitioners covers Word, PowerPoint, Excel,
OpenDocument, RTF, HTML, EPUB and RFC 822 mail, and it keeps the structure we want in chunks
(titles, list items, tables with their cells, page and slide numbers). Its costs, and what this
module does about them:

- Import takes seconds (spaCy, lxml, pandas ...): it is imported inside :meth:`extract`, once.
- It phones home and downloads a spaCy model: :func:`p8fs_node.offline.prepare_unstructured`
  runs first, every time, and is idempotent.
- It partitions a whole document into a list before returning. Sections are yielded from that
  list one group at a time and the list is consumed as they go, so no second copy is built.
- It fails on hostile input with whatever the underlying library raises. The container is
  checked first (ZIP readable, declared sizes within the limit, not encrypted, not a legacy
  binary format) and anything the partitioner still raises becomes a typed
  :class:`~p8fs.errors.CorruptDocument`.

Markdown is deliberately *not* claimed: unstructured renders it to HTML and back, which loses
hard line breaks (box-drawing diagrams collapse onto one line), list layout and link targets.
Raw Markdown is already the best text to chunk, so the core text provider keeps it.
"""

from __future__ import annotations

import codecs
import io
import itertools
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_email_policy
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from xml.etree import ElementTree

from p8fs.encoding import decode_bytes, has_bom
from p8fs.errors import (
    CorruptDocument,
    EmptyDocument,
    EncryptedDocument,
    LimitExceeded,
    P8fsError,
    UnsupportedContent,
)
from p8fs.limits import extraction_limit
from p8fs.providers import (
    ContentProvider,
    ExtractContext,
    Section,
    Source,
    open_binary,
    source_name,
    source_path,
)

if TYPE_CHECKING:
    from unstructured.documents.elements import Element

_RATIO_MIN_BYTES = 16 * 1024**2
#: Upper bound on how many consecutive same-kind elements form one section.
MAX_ELEMENTS_PER_SECTION = 50
#: Element categories that carry no text of their own.
_SKIPPED_CATEGORIES = frozenset({"PageBreak"})

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: An encrypted OOXML package is an OLE file with a stream of this name (UTF-16LE directory entry).
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE
)
_DUBLIN_CORE = "{http://purl.org/dc/elements/1.1/}"
_DOC_METADATA_MEMBER_MAX = 1024**2


@dataclass(frozen=True, slots=True)
class OfficeFormat:
    """One file format this provider reads: how it is recognised and what it is called."""

    key: str
    label: str
    mime_types: tuple[str, ...]
    extensions: tuple[str, ...]
    #: Stored in a ZIP container (checked for bombs, encryption, damage before partitioning).
    zipped: bool = False
    #: Text-based: an empty file is an empty document, not a damaged one.
    textual: bool = False


FORMATS: tuple[OfficeFormat, ...] = (
    OfficeFormat(
        "docx",
        "Word (.docx)",
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
        (".docx",),
        zipped=True,
    ),
    OfficeFormat(
        "pptx",
        "PowerPoint (.pptx)",
        ("application/vnd.openxmlformats-officedocument.presentationml.presentation",),
        (".pptx",),
        zipped=True,
    ),
    OfficeFormat(
        "xlsx",
        "Excel (.xlsx)",
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",),
        (".xlsx",),
        zipped=True,
    ),
    OfficeFormat(
        "odt",
        "OpenDocument text (.odt)",
        ("application/vnd.oasis.opendocument.text",),
        (".odt",),
        zipped=True,
    ),
    OfficeFormat("epub", "EPUB", ("application/epub+zip",), (".epub",), zipped=True),
    OfficeFormat("rtf", "RTF", ("application/rtf", "text/rtf"), (".rtf",)),
    OfficeFormat(
        "html",
        "HTML",
        ("text/html", "application/xhtml+xml"),
        (".html", ".htm", ".xhtml"),
        textual=True,
    ),
    OfficeFormat("eml", "e-mail (.eml)", ("message/rfc822",), (".eml",), textual=True),
)
_BY_MIME = {mime: fmt for fmt in FORMATS for mime in fmt.mime_types}
_BY_EXTENSION = {ext: fmt for fmt in FORMATS for ext in fmt.extensions}
_OOXML = frozenset({"docx", "pptx", "xlsx"})


class OfficeProvider(ContentProvider):
    """Word, PowerPoint, Excel, OpenDocument, RTF, HTML, EPUB and e-mail via unstructured.

    Sections follow the document's elements in order: each title and each table is a section of
    its own; runs of the same kind of element under the same heading and page are grouped (the
    chunker packs sections, so small ones cost nothing). Metadata: ``kind`` (unstructured's
    category), ``heading`` (nearest title above), ``page`` / ``slide`` / ``sheet``, and for
    tables ``table_format`` (``markdown``, or ``html`` when merged cells need it).

    Options (``context.options``): ``max_uncompressed_bytes`` and ``max_compression_ratio`` for
    ZIP-based formats (decompression-bomb limits, checked on the container's declared sizes
    before anything is inflated); ``password`` for a password-protected Word, PowerPoint or
    Excel file.
    """

    name = "office"
    mime_types = tuple(mime for fmt in FORMATS for mime in fmt.mime_types)
    extensions = tuple(ext for fmt in FORMATS for ext in fmt.extensions)
    priority = 10
    requires = ("unstructured",)
    extra = "p8fs-node[office]"

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        self.ensure_available()
        from p8fs_node.offline import prepare_unstructured

        prepare_unstructured()
        fmt = self.format_of(source, context)
        name = context.filename or source_name(source)
        context.metadata["format"] = fmt.key
        source = _decrypt_if_protected(source, fmt, name, context)
        if not _check_container(source, fmt, name, context):
            return
        context.check_deadline()
        header: Section | None = None
        if fmt.key == "eml":
            header = _email_header_section(source, context)
        elements = _partition(fmt, source, name)
        context.metadata["elements"] = len(elements)
        sections = _sections(elements, fmt, context)
        yield from _without_nul(
            itertools.chain([header], sections) if header else sections, context
        )

    @staticmethod
    def format_of(source: Source, context: ExtractContext) -> OfficeFormat:
        """The format to read ``source`` as: the sniffed MIME type first, the file name second."""
        if context.mime_type and context.mime_type.lower() in _BY_MIME:
            return _BY_MIME[context.mime_type.lower()]
        for name in (context.filename, context.uri, source_name(source)):
            ext = os.path.splitext(name.split("?", 1)[0])[1].lower() if name else ""
            if ext in _BY_EXTENSION:
                return _BY_EXTENSION[ext]
        raise UnsupportedContent(
            f"{context.filename or source_name(source)}: the office provider cannot tell the format "
            f"(MIME type {context.mime_type!r}); it reads "
            + ", ".join(fmt.label for fmt in FORMATS)
        )


# -- reading the source --------------------------------------------------------------------------


def _read_all(source: Source) -> bytes:
    with open_binary(source) as stream:
        return stream.read()


def _size(source: Source) -> int:
    path = source_path(source)
    if path is not None:
        return path.stat().st_size
    stream: BinaryIO = source  # type: ignore[assignment]
    end = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    return end


def _contains(stream: IO[bytes], needle: bytes, block: int = 1024**2) -> bool:
    """Whether ``needle`` occurs in the rest of ``stream``, reading it in bounded blocks."""
    tail = b""
    while data := stream.read(block):
        if needle in tail + data:
            return True
        tail = data[-len(needle) :]
    return False


# -- container checks ----------------------------------------------------------------------------


def _decrypt_if_protected(
    source: Source, fmt: OfficeFormat, name: str, context: ExtractContext
) -> Source:
    """``source`` itself, or its decrypted package when it is a password-protected OOXML file.

    Word, PowerPoint and Excel encrypt a document by wrapping the whole ZIP package in an OLE2
    file with an ``EncryptedPackage`` stream. With ``options["password"]`` it is decrypted in
    memory (msoffcrypto-tool, which unstructured's xlsx extra brings); without one, or with a
    wrong one, the typed :class:`EncryptedDocument` says what to do.
    """
    if fmt.key not in _OOXML:
        return source
    with open_binary(source) as stream:
        if not stream.read(8).startswith(_OLE_MAGIC) or not _contains(stream, _ENCRYPTED_PACKAGE):
            return source
        password = context.options.get("password")
        if not password:
            raise EncryptedDocument(
                f"{name} is a password-protected {fmt.label} document; pass its password "
                "(option 'password') or save an unprotected copy to index it"
            )
        try:
            import msoffcrypto
            from msoffcrypto.exceptions import DecryptionError, InvalidKeyError
        except ImportError as exc:
            raise EncryptedDocument(
                f"{name} is password-protected and decrypting it needs msoffcrypto-tool: "
                f"install {OfficeProvider.extra}"
            ) from exc
        stream.seek(0)
        decrypted = io.BytesIO()
        try:
            office = msoffcrypto.OfficeFile(stream)
            office.load_key(password=str(password))
            office.decrypt(decrypted)
        except (InvalidKeyError, DecryptionError) as exc:
            raise EncryptedDocument(
                f"{name}: the password given does not open this {fmt.label} document ({exc})"
            ) from exc
        except Exception as exc:  # msoffcrypto on a damaged container
            raise CorruptDocument(
                f"{name}: its encrypted {fmt.label} container is damaged ({type(exc).__name__}: "
                f"{exc})"
            ) from exc
        context.metadata["decrypted"] = True
        decrypted.seek(0)
        return decrypted


def _check_container(source: Source, fmt: OfficeFormat, name: str, context: ExtractContext) -> bool:
    """Refuse damaged, encrypted, legacy or oversized files with a typed error before parsing.

    Returns ``False`` for an empty text document (nothing to yield, nothing wrong).
    """
    try:
        size = _size(source)
    except OSError as exc:
        raise CorruptDocument(f"{name}: cannot read the file: {exc}") from exc
    if size == 0:
        if fmt.textual:
            return False
        raise EmptyDocument(f"{name} is empty (0 bytes), so it is not a valid {fmt.label} file")
    with open_binary(source) as stream:
        head = stream.read(8)
        if head.startswith(_OLE_MAGIC) and fmt.key in _OOXML | {"odt"}:
            raise UnsupportedContent(
                f"{name} is a legacy binary Office file (OLE2, e.g. .doc/.ppt/.xls) named as "
                f"{fmt.label}; save it in the current format to index it"
            )
        if fmt.key == "rtf" and not head.startswith(b"{\\rtf"):
            raise CorruptDocument(f"{name} does not start with the RTF signature '{{\\rtf'")
        if fmt.zipped:
            stream.seek(0)
            _check_zip(stream, fmt, name, context)
    return True


def _check_zip(stream: IO[bytes], fmt: OfficeFormat, name: str, context: ExtractContext) -> None:
    # The sum of the declared member sizes is held to max_uncompressed_bytes; a member that is
    # large in absolute terms and expands past max_compression_ratio is a bomb even under it.
    limit = int(extraction_limit(context.options, "max_uncompressed_bytes"))
    max_ratio = int(extraction_limit(context.options, "max_compression_ratio"))
    try:
        with zipfile.ZipFile(stream) as archive:
            infos = archive.infolist()
            if not infos:
                raise CorruptDocument(f"{name}: the {fmt.label} container is an empty ZIP archive")
            total = 0
            for info in infos:
                if info.flag_bits & 0x1:
                    raise EncryptedDocument(
                        f"{name}: member {info.filename!r} of the {fmt.label} container is "
                        "encrypted; remove the password to index it"
                    )
                total += info.file_size
                if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(
                    info.compress_size, 1
                ):
                    raise LimitExceeded(
                        f"{name}: member {info.filename!r} expands {info.compress_size} bytes to "
                        f"{info.file_size} (more than {max_ratio}:1): refusing a likely "
                        "decompression bomb (option max_compression_ratio, setting "
                        "P8FS_MAX_COMPRESSION_RATIO)",
                        limit="max_compression_ratio",
                    )
            if total > limit:
                raise LimitExceeded(
                    f"{name}: the {fmt.label} container declares {total} uncompressed bytes, more "
                    f"than the limit of {limit} (option max_uncompressed_bytes, setting "
                    "P8FS_MAX_UNCOMPRESSED_BYTES)",
                    limit="max_uncompressed_bytes",
                    declared=total,
                )
            for info in infos:
                _verify_member(archive, info, name, fmt, context)
            names = {info.filename for info in infos}
            if fmt.key == "odt" and _odf_encrypted(archive, names):
                raise EncryptedDocument(
                    f"{name} is a password-protected OpenDocument file; remove the password to index it"
                )
            context.metadata.update(_container_metadata(archive, names, fmt))
    except P8fsError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
    ) as exc:
        raise CorruptDocument(
            f"{name} is not a readable {fmt.label} file: its ZIP container is damaged or truncated ({exc})"
        ) from exc


#: Inflated bytes read at a time while verifying a member (bounds the check's memory).
_VERIFY_READ = 1024**2


def _verify_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    fmt: OfficeFormat,
    context: ExtractContext,
) -> None:
    """Inflate ``info`` in bounded reads to prove it holds what its header declares, and
    refuse XML that declares entities.

    The size checks above trust the headers, and a bomb can lie in them: declare 5 kB for a
    member that inflates to gigabytes. ``zipfile`` never returns more than the declared size,
    but a whole-member ``read()`` (what python-docx, openpyxl and friends do) inflates all of
    the compressed data in one call before cutting it to size, so a lying member costs its
    true size in memory. Reading here in 1 MiB steps stops at the declared size, where the
    CRC no longer matches: the lie is refused, having cost one step of memory.

    Entity declarations (``<!ENTITY``) are how an XML "billion laughs" bomb expands a few
    hundred bytes exponentially. No office document needs them (OPC forbids DTDs outright);
    libxml2 stops the expansion after ~150 MB and seconds of work, and pandoc (which reads
    EPUB and OpenDocument) is a separate program whose memory nothing here would bound; so a
    member declaring entities is refused while it is being read anyway.
    """
    xml = info.filename.lower().endswith(_XML_MEMBER_SUFFIXES)
    if info.is_dir() or (info.compress_type == zipfile.ZIP_STORED and not xml):
        return
    tail = b""
    try:
        with archive.open(info) as member:
            while block := member.read(_VERIFY_READ):
                if xml and _ENTITY_DECLARATION in tail + block:
                    raise LimitExceeded(
                        f"{name}: member {info.filename!r} of the {fmt.label} container declares "
                        "XML entities (<!ENTITY), which no such document needs and which can "
                        "expand exponentially (a 'billion laughs' bomb): refused",
                        limit="xml_entities",
                        member=info.filename,
                    )
                tail = block[-len(_ENTITY_DECLARATION) :]
                context.check_deadline()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise CorruptDocument(
            f"{name}: member {info.filename!r} of the {fmt.label} container does not inflate to "
            f"the {info.file_size} bytes its header declares ({exc}): damaged, or a "
            "decompression bomb hiding its size",
            member=info.filename,
        ) from exc


_ENTITY_DECLARATION = b"<!ENTITY"
_XML_MEMBER_SUFFIXES = (".xml", ".rels", ".html", ".htm", ".xhtml", ".opf", ".ncx", ".svg")


def _odf_encrypted(archive: zipfile.ZipFile, names: set[str]) -> bool:
    manifest = "META-INF/manifest.xml"
    if manifest not in names or archive.getinfo(manifest).file_size > _DOC_METADATA_MEMBER_MAX:
        return False
    return b"encryption-data" in archive.read(manifest)


def _container_metadata(
    archive: zipfile.ZipFile, names: set[str], fmt: OfficeFormat
) -> dict[str, Any]:
    """Title, author and language from the container's Dublin Core record, where it has one.

    OOXML keeps it in ``docProps/core.xml``, OpenDocument in ``meta.xml``, EPUB in its OPF
    package file (named by ``META-INF/container.xml``). Unparseable metadata is ignored: it
    must never cost the document's text.
    """
    member: str | None = None
    if fmt.key in _OOXML:
        member = "docProps/core.xml"
    elif fmt.key == "odt":
        member = "meta.xml"
    elif fmt.key == "epub":
        member = next((n for n in sorted(names) if n.lower().endswith(".opf")), None)
        container = "META-INF/container.xml"
        if container in names and archive.getinfo(container).file_size <= _DOC_METADATA_MEMBER_MAX:
            try:
                root = ElementTree.fromstring(archive.read(container))
                for element in root.iter():
                    if element.tag.endswith("rootfile") and element.get("full-path"):
                        member = element.get("full-path")
                        break
            except (ElementTree.ParseError, LookupError, ValueError):
                pass
    if member is None or member not in names:
        return {}
    if archive.getinfo(member).file_size > _DOC_METADATA_MEMBER_MAX:
        return {}
    try:
        root = ElementTree.fromstring(archive.read(member))
    except (ElementTree.ParseError, LookupError, ValueError):  # LookupError: unknown encoding
        return {}
    found: dict[str, Any] = {}
    for key, tag in (("title", "title"), ("author", "creator"), ("language", "language")):
        values = [
            " ".join(el.text.split())
            for el in root.iter(_DUBLIN_CORE + tag)
            if el.text and el.text.strip()
        ]
        if values:
            found[key] = values[0] if len(values) == 1 else values
    return found


# -- partitioning --------------------------------------------------------------------------------


def _partition(fmt: OfficeFormat, source: Source, name: str) -> list[Element]:
    """Run unstructured's partitioner for ``fmt``; its failures become :class:`CorruptDocument`."""
    partitioner, kwargs = _partitioner(fmt, source)
    try:
        return list(partitioner(**kwargs))
    except P8fsError:
        raise
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # a third-party parser on untrusted bytes: anything can surface
        raise CorruptDocument(
            f"{name}: unstructured could not read it as {fmt.label} ({type(exc).__name__}: {exc})",
            format=fmt.key,
        ) from exc
    finally:
        stream = kwargs.get("file")
        if stream is not None and source_path(source) is None:
            stream.seek(0)


def _file_or_path(source: Source) -> dict[str, Any]:
    path = source_path(source)
    if path is not None:
        return {"filename": os.fspath(path)}
    stream: BinaryIO = source  # type: ignore[assignment]
    stream.seek(0)
    return {"file": stream}


def _partitioner(
    fmt: OfficeFormat, source: Source
) -> tuple[Callable[..., list[Element]], dict[str, Any]]:
    """The partition function for ``fmt`` (imported on first use) and its arguments."""
    key = fmt.key
    if key == "docx":
        from unstructured.partition.docx import partition_docx

        return partition_docx, {
            **_file_or_path(source),
            "infer_table_structure": True,
            "include_page_breaks": False,
        }
    if key == "pptx":
        from unstructured.partition.pptx import partition_pptx

        return partition_pptx, {
            **_file_or_path(source),
            "infer_table_structure": True,
            "include_page_breaks": False,
            "include_slide_notes": True,
        }
    if key == "xlsx":
        from unstructured.partition.xlsx import partition_xlsx

        return partition_xlsx, {**_file_or_path(source), "infer_table_structure": True}
    if key == "odt":
        from unstructured.partition.odt import partition_odt

        return partition_odt, {**_file_or_path(source), "infer_table_structure": True}
    if key == "epub":
        from unstructured.partition.epub import partition_epub

        return partition_epub, _file_or_path(source)
    if key == "rtf":
        from unstructured.partition.rtf import partition_rtf

        return partition_rtf, _file_or_path(source)
    if key == "html":
        from unstructured.partition.html import partition_html

        return partition_html, {"text": decode_html(_read_all(source))}
    if key == "eml":
        from unstructured.partition.email import partition_email

        return partition_email, {**_file_or_path(source), "process_attachments": False}
    raise UnsupportedContent(f"office format {key!r} has no partitioner")  # pragma: no cover


def decode_html(data: bytes) -> str:
    """HTML bytes to text: a byte-order mark, else a ``<meta charset>`` that decodes, else
    :func:`p8fs.encoding.decode_bytes`.

    As browsers do (WHATWG Encoding), a declared Latin-1 or ASCII is read as windows-1252,
    because that is what such pages almost always really are.
    """
    if not has_bom(data, complete=True):
        declared = _META_CHARSET.search(data[:4096])
        if declared:
            label = declared.group(1).decode("ascii").lower()
            try:
                codec = codecs.lookup(label).name
            except LookupError:
                codec = ""
            if codec in ("latin-1", "iso8859-1", "ascii"):
                codec = "cp1252"
            if codec and not codec.startswith(("utf-16", "utf-32")):
                try:
                    return data.decode(codec)
                except UnicodeDecodeError:
                    pass
    return decode_bytes(data)


def _email_header_section(source: Source, context: ExtractContext) -> Section | None:
    """Subject, sender, recipients and date as the message's first section (they are content:
    people search for them) and in the document metadata."""
    with open_binary(source) as stream:
        try:
            headers = BytesHeaderParser(policy=default_email_policy).parse(stream)
        except Exception as exc:  # the partitioner will report a truly broken message
            context.warn(f"could not parse the e-mail headers: {exc}")
            return None
    lines: list[str] = []
    for field_name, key in (
        ("Subject", "subject"),
        ("From", "from"),
        ("To", "to"),
        ("Cc", "cc"),
        ("Date", "date"),
    ):
        try:
            value = headers.get(field_name)
        except Exception:  # e.g. a Date in the year 10**11: keep the header as it was written
            value = next((v for k, v in headers.raw_items() if k.lower() == key), None)
        if value:
            text = " ".join(str(value).replace("\x00", "").split())
            context.metadata[key] = text
            lines.append(f"{field_name}: {text}")
    if not lines:
        return None
    return Section("\n".join(lines), {"kind": "EmailHeader"})


# -- elements to sections ------------------------------------------------------------------------


def _location(element: Element, fmt: OfficeFormat) -> dict[str, Any]:
    meta = element.metadata
    page = getattr(meta, "page_number", None)
    if fmt.key == "pptx":
        return {"slide": page} if page is not None else {}
    if fmt.key == "xlsx":
        sheet = getattr(meta, "page_name", None)
        return {"sheet": sheet} if sheet else ({"sheet": page} if page is not None else {})
    return {"page": page} if page is not None else {}


def _sections(
    elements: list[Element], fmt: OfficeFormat, context: ExtractContext
) -> Iterator[Section]:
    """Group elements into sections, consuming ``elements`` as it goes (see the class doc)."""
    elements.reverse()  # pop() from the end: each element is released once it is grouped
    heading: str | None = None
    group: list[str] = []
    group_meta: dict[str, Any] = {}

    def flush() -> Iterator[Section]:
        if group:
            joiner = "\n" if group_meta.get("kind") == "ListItem" else "\n\n"
            yield Section(joiner.join(group), dict(group_meta))
            group.clear()

    while elements:
        element = elements.pop()
        kind = element.category
        if kind in _SKIPPED_CATEGORIES:
            continue
        location = _location(element, fmt)
        if kind == "Table":
            text, table_format = table_text(element)
            if not text.strip():
                continue
            yield from flush()
            context.check_deadline()
            yield Section(
                text, {"kind": kind, "heading": heading, **location, "table_format": table_format}
            )
            continue
        text = (element.text or "").strip()
        if not text:
            continue
        if kind == "Title":
            heading = text
            yield from flush()
            context.check_deadline()
            yield Section(text, {"kind": kind, "heading": heading, **location})
            continue
        meta = {"kind": kind, "heading": heading, **location}
        if meta != group_meta or len(group) >= MAX_ELEMENTS_PER_SECTION:
            yield from flush()
            context.check_deadline()
            group_meta = meta
        group.append(text)
    yield from flush()


def _without_nul(sections: Iterable[Section], context: ExtractContext) -> Iterator[Section]:
    """The sections with NUL characters dropped (counted in one warning).

    A damaged file (a zeroed block) or a crafted one puts U+0000 in the text; PostgreSQL
    refuses to store it at all, which would cost the whole document for an invisible character.
    """
    dropped = 0
    for section in sections:
        if "\x00" in section.text:
            dropped += section.text.count("\x00")
            section.text = section.text.replace("\x00", "")
            if not section.text.strip():
                continue
        yield section
    if dropped:
        context.warn(f"{dropped} NUL character(s) dropped from the text")


def table_text(element: Element) -> tuple[str, str]:
    """A table element as Markdown (or HTML when it has merged or nested cells) and which one.

    Flattened cell text would lose which value belongs to which column, so the cell structure
    from ``metadata.text_as_html`` is kept; Markdown is preferred for being compact and readable.
    """
    html = getattr(element.metadata, "text_as_html", None)
    if not html:
        return element.text or "", "text"
    markdown = html_table_to_markdown(html)
    if markdown is None:
        return html, "html"
    return markdown, "markdown"


def html_table_to_markdown(html: str) -> str | None:
    """A Markdown pipe table for a simple HTML table, or ``None`` when Markdown cannot express
    it (cells spanning rows or columns, tables inside cells). Columns empty in every row (layout
    spacers, common in SEC filings) are dropped; the first row is the header."""
    import lxml.html

    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except Exception:
        return None
    tables = root.xpath(".//table")
    if len(tables) != 1:
        return None
    rows: list[list[str]] = []
    for row in tables[0].iter("tr"):
        cells: list[str] = []
        for cell in row:
            if cell.tag not in ("td", "th"):
                continue
            if _span(cell.get("rowspan")) > 1 or _span(cell.get("colspan")) > 1:
                return None
            text = " ".join(cell.text_content().split())
            cells.append(text.replace("\\", "\\\\").replace("|", "\\|"))
        rows.append(cells)
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return ""
    for r in rows:
        r.extend([""] * (width - len(r)))
    keep = [c for c in range(width) if any(r[c] for r in rows)]
    if not keep:
        return ""
    lines = ["| " + " | ".join(r[c] for c in keep) + " |" for r in rows]
    lines.insert(1, "|" + "|".join(" --- " for _ in keep) + "|")
    return "\n".join(lines)


def _span(value: str | None) -> int:
    """A ``rowspan``/``colspan`` value; malformed ones count as spanning (keep the HTML)."""
    if value is None or not value.strip():
        return 1
    try:
        return int(value)
    except ValueError:
        return 2
