"""PDF text, page by page: pypdfium2 by default, pdfminer.six for reading order, OCR for scans.

Why these engines (measured on the corpus, see DESIGN.md): pypdfium2 reads ~300 pages/s with flat
memory and recovers damaged files well; pdfminer.six is ~20x slower but orders the text of
multi-column pages by layout and decodes some fonts pdfium gets wrong (non-Unicode CMaps), so it
is the ``layout`` option rather than the default. PyMuPDF would be faster still but is AGPL.

What the text looks like: pdfium's text is kept as it is except for three normalisations that
lose nothing a reader could see: ``\\r\\n`` (and lone ``\\r``) become ``\\n``; pdfium's
end-of-line hyphenation marker (the non-character U+FFFE, or ``\\x02`` from some paths) is removed,
which re-joins the hyphenated word as poppler's ``pdftotext`` does; and NUL characters, which no
database text column accepts, are dropped.

Time limits: ``context.check_deadline()`` runs before every page and OCR is killed at the
deadline. A single pdfium call (opening a hostile file, one page) cannot be interrupted from
Python; a hard limit on those needs the process boundary (the runner's worker can be killed and
the message redelivered), which is why the per-page check is the contract here.

Threads: PDFium is not thread-safe, not even across different documents. Every pdfium call here
holds :data:`PDFIUM_LOCK`, taken per page (never across a ``yield``), so documents extracted in
parallel threads interleave page by page instead of crashing; waiting for it is bounded by the
document's deadline (see :func:`pdfium_lock`).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from p8fs.errors import (
    ConfigurationError,
    CorruptDocument,
    DocumentTimeout,
    EmptyDocument,
    EncryptedDocument,
    LimitExceeded,
    ProviderError,
    SourceNotFound,
)
from p8fs.limits import DEFAULT_LIMITS, extraction_limit
from p8fs.providers import ContentProvider, ExtractContext, Section, Source, source_name
from p8fs_node.ocr import (
    DEFAULT_LANGUAGES,
    configured_engine,
    ocr_image,
    ocr_requested,
    ocr_unavailable_reason,
    option_flag,
    used_engine,
)

if TYPE_CHECKING:
    import pypdfium2

#: Serialises every pdfium call in this process (PDFium is not thread-safe).
PDFIUM_LOCK = threading.RLock()
#: How long cleanup waits for PDFium before leaving a document to the garbage collector.
CLOSE_WAIT_SECONDS = 5.0
#: A stream inflating past ``max_compression_ratio`` (p8fs.limits) is a decompression bomb only
#: once it is this large.
RATIO_MIN_BYTES = 16 * 1024**2
#: Page failures reported one by one; beyond them, one summary (a page tree claiming thousands
#: of pages that do not exist must not write thousands of warnings).
MAX_PAGE_WARNINGS = 20
#: Resolution at which pages without a text layer are rendered for OCR; option ``ocr_dpi``.
DEFAULT_OCR_DPI = 300
#: A rendered page never exceeds this many pixels (a poster-sized page is rendered coarser),
#: so a hostile page size cannot exhaust memory.
MAX_RENDER_PIXELS = 60_000_000
#: ... nor this many pixels on a side (tesseract and Leptonica refuse wider images; a hostile
#: box can make a page 2**31 points wide and 4 high).
MAX_RENDER_SIDE = 32_767

# PDFium's FPDF_GetLastError codes (fpdfview.h).
_ERR_FILE, _ERR_FORMAT, _ERR_PASSWORD, _ERR_SECURITY = 2, 3, 4, 5

_REPLACEMENTS = (("\r", "\n"), ("\ufffe", ""), ("\x02", ""), ("\x00", ""))
_DROPPED = str.maketrans({"\ufffe": None, "\x02": None, "\x00": None})
_METADATA_KEYS = {
    "Title": "title",
    "Author": "author",
    "Subject": "subject",
    "Keywords": "keywords",
    "Creator": "creator",
    "Producer": "producer",
    "CreationDate": "created",
    "ModDate": "modified",
}


@contextmanager
def pdfium_lock(deadline: float | None) -> Iterator[None]:
    """Hold :data:`PDFIUM_LOCK`, waiting at most until ``deadline`` (``time.monotonic()``).

    If another thread's pdfium call hangs (the pipeline then abandons that thread at its own
    deadline), waiting forever here would hang every later PDF in the process; instead each
    waiting document fails with :class:`DocumentTimeout` at its deadline, and the message says
    the worker needs a restart.
    """
    timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
    if not PDFIUM_LOCK.acquire(timeout=timeout):
        raise DocumentTimeout(
            "PDFium stayed busy with another document past this document's time limit "
            "(P8FS_DOCUMENT_TIMEOUT); if that persists, a PDFium call hangs and the worker "
            "process needs a restart"
        )
    try:
        yield
    finally:
        PDFIUM_LOCK.release()


def normalize_pdfium_text(text: str) -> str:
    """pdfium's page text with the normalisations described in the module docstring.

    Plain ``str.replace`` passes, each skipped when its character is absent: on a 117-page
    document this is 5x cheaper than a regular expression plus ``str.translate``.
    """
    text = text.replace("\r\n", "\n")
    for old, new in _REPLACEMENTS:
        if old in text:
            text = text.replace(old, new)
    return text


class PdfProvider(ContentProvider):
    """PDF documents: one section per page (``page`` is 1-based), OCR for pages without text.

    Options (``context.options``): ``password`` (user or owner password of an encrypted file),
    ``layout`` (``True``: pdfminer.six reading order), ``ocr`` (``False`` disables OCR),
    ``ocr_engine`` (``auto``, ``rapidocr`` or ``tesseract``; setting ``P8FS_OCR_ENGINE``),
    ``ocr_languages`` (tesseract language codes, default ``"eng"``), ``ocr_dpi``, and the safety
    limits ``max_pages``, ``max_uncompressed_bytes``, ``max_compression_ratio`` (see
    :func:`check_stream_expansion`).

    Document facts written to ``context.metadata``: ``pages``, ``encrypted``, ``pdf_version``,
    ``engine``, the info dictionary (``title``, ``author``, ``producer``, ``creator``, ``created``
    ...), ``pages_without_text`` (1-based numbers of pages with no text layer), ``ocr_pages``
    (those whose text came from OCR), ``ocr_engine`` (the engine that read them, once one ran)
    and ``pages_failed`` (pages that could not be read).
    """

    name: ClassVar[str] = "pdf"
    mime_types: ClassVar[tuple[str, ...]] = ("application/pdf", "application/x-pdf")
    extensions: ClassVar[tuple[str, ...]] = (".pdf",)
    priority: ClassVar[int] = 10
    requires: ClassVar[tuple[str, ...]] = ("pypdfium2", "pdfminer")
    extra: ClassVar[str | None] = "p8fs-node"

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        """Yield each page's text as it is read (a generator: nothing is read before iteration)."""
        self.ensure_available()
        options = context.options
        password = _password(options.get("password"))
        layout = option_flag(options.get("layout"), default=False)
        name = source_name(source)

        with ExitStack() as stack:
            pdfium_input, layout_input = _prepare_input(source, stack, name)
            doc, page_count, has_form = _open_within_limits(
                pdfium_input, layout_input, name, password, context, stack
            )
            context.metadata["engine"] = "pdfminer.six" if layout else "pypdfium2"
            layout_pages: Iterator[str | None] | None = None
            if layout:
                layout_pages = _pdfminer_page_texts(layout_input, password, page_count, context)
            pages = _PageReader(doc, has_form, _OcrPolicy(options), context)
            for index in range(page_count):
                context.check_deadline()
                mined = next(layout_pages, None) if layout_pages is not None else None
                yield from pages.read(index, mined)
            pages.report(page_count)


def _open_within_limits(
    pdfium_input: Any,
    layout_input: Path | BinaryIO,
    name: str,
    password: str | None,
    context: ExtractContext,
    stack: ExitStack,
) -> tuple[Any, int, bool]:
    """Open the document once it is known to stay within the limits: (doc, pages, has_form).

    The streams are checked before PDFium sees the file: it inflates a page's content streams
    whole, in one call nothing can interrupt (a 2 MB file can hold a 2 GB stream). Encrypted
    stream data is not zlib until decrypted, so an encrypted file is checked again, decrypted.
    """
    options = context.options
    max_bytes = int(extraction_limit(options, "max_uncompressed_bytes"))
    max_ratio = int(extraction_limit(options, "max_compression_ratio"))
    max_pages = int(extraction_limit(options, "max_pages"))
    deadline = context.deadline
    check_stream_expansion(
        layout_input, name, max_bytes=max_bytes, max_ratio=max_ratio, deadline=deadline
    )
    doc = _open_pdfium(pdfium_input, password, name, deadline)
    stack.callback(_close, doc)
    with pdfium_lock(deadline):
        page_count = len(doc)
        _document_metadata(doc, context.metadata)
        has_form = _init_forms(doc)
    if context.metadata.get("encrypted"):
        check_stream_expansion(
            layout_input,
            name,
            max_bytes=max_bytes,
            max_ratio=max_ratio,
            deadline=deadline,
            password=password or "",
        )
    context.metadata["pages"] = page_count
    if page_count > max_pages:
        raise LimitExceeded(
            f"{name} has {page_count} pages, more than the limit of {max_pages} "
            "(option max_pages, setting P8FS_MAX_PAGES)",
            pages=page_count,
            limit=max_pages,
        )
    return doc, page_count, has_form


class _PageReader:
    """Reads one document's pages into sections, and keeps the tally its metadata reports:
    pages without text, pages OCR'd, pages that failed (a damaged page must not cost the
    others)."""

    def __init__(self, doc: Any, has_form: bool, ocr: _OcrPolicy, context: ExtractContext):
        self.doc, self.has_form, self.ocr, self.context = doc, has_form, ocr, context
        self.without_text: list[int] = []
        self.ocr_pages: list[int] = []
        self.failed: list[int] = []
        context.metadata["pages_without_text"] = self.without_text
        context.metadata["ocr_pages"] = self.ocr_pages

    def read(self, index: int, mined: str | None) -> Iterator[Section]:
        """The sections of page ``index``: its text (pdfminer's ``mined`` text when layout mode
        found some), its form fields, else what OCR recognises."""
        number = index + 1
        deadline = self.context.deadline
        try:
            text, has_content = _pdfium_page_text(self.doc, index, deadline)
        except ProviderError:  # a timeout waiting for PDFium ends the document
            raise
        except Exception as exc:
            self._fail(number, f"page {number} could not be read: {exc}")
            return
        # pdfminer's text, unless it found none where pdfium found some.
        if mined is not None and (mined.strip() or not text.strip()):
            text = mined
        fields = _form_field_text(self.doc, index, deadline) if self.has_form else ""
        if text.strip():
            yield Section(text, {"page": number, "kind": "page"})
            if fields:
                yield Section(fields, {"page": number, "kind": "form"})
            return
        if fields:
            yield Section(fields, {"page": number, "kind": "form"})
        if text and _draws_only_text(self.doc, index, deadline):
            # A text layer of only whitespace and nothing else drawn: nothing to OCR or warn
            # about; the page's text is that whitespace, and the pipeline decides what a
            # document of nothing but whitespace is (empty, like 0 bytes).
            yield Section(text, {"page": number, "kind": "page"})
            return
        self.without_text.append(number)
        if has_content and self.ocr.enabled:
            yield from self._recognise(index)

    def _recognise(self, index: int) -> Iterator[Section]:
        number = index + 1
        try:
            recognised = self.ocr.run(self.doc, index, self.context)
        except (DocumentTimeout, ConfigurationError):  # the document's, not the page's
            raise
        except Exception as exc:  # a page that cannot be rendered or recognised
            self._fail(number, f"page {number} could not be rendered for OCR: {exc}")
            return
        self.context.metadata["ocr_engine"] = self.ocr.engine
        if recognised:
            self.ocr_pages.append(number)
            yield Section(recognised, {"page": number, "kind": "page", "ocr": True})

    def _fail(self, number: int, warning: str) -> None:
        self.failed.append(number)
        self.context.metadata["pages_failed"] = self.failed
        if len(self.failed) <= MAX_PAGE_WARNINGS:
            self.context.warn(warning)

    def report(self, page_count: int) -> None:
        """Warn about pages without text and failed pages beyond those warned one by one."""
        _report_pages_without_text(
            self.context, self.without_text, self.ocr_pages, page_count, self.ocr
        )
        if len(self.failed) > MAX_PAGE_WARNINGS:
            self.context.warn(
                f"{len(self.failed) - MAX_PAGE_WARNINGS} more page(s) could not be read "
                f"({len(self.failed)} of {page_count} in all; see pages_failed)"
            )


#: ``stream`` keyword and its end of line, where a PDF stream's data begins (not ``endstream``).
_STREAM_START = re.compile(rb"stream(?:\r\n|\n|\r)")
_SCAN_BLOCK = 1024**2
#: How far before a stream its dictionary is looked for (to tell images apart).
_DICT_LOOKBACK = 4096
#: Nested ``/Filter [/FlateDecode /FlateDecode ...]`` layers followed.
_MAX_FLATE_LAYERS = 4


def check_stream_expansion(
    source: Path | BinaryIO,
    name: str,
    *,
    max_bytes: int = DEFAULT_LIMITS.max_uncompressed_bytes,
    max_ratio: int = DEFAULT_LIMITS.max_compression_ratio,
    deadline: float | None = None,
    password: str | None = None,
) -> int:
    """Refuse a PDF whose Flate streams inflate beyond the limits; return their inflated size.

    PDFium inflates each content stream it needs whole, in memory, in one uninterruptible call:
    a page whose content is 2 GB of spaces (2 MB compressed) costs 3 GB of memory and seconds
    before any Python check could run. So every zlib stream in the file is inflated here first,
    block by block with its output discarded (memory stays one block), following nested Flate
    layers, and the file is refused with :class:`LimitExceeded` when one stream inflates more
    than ``max_ratio`` times its compressed size past :data:`RATIO_MIN_BYTES`, or when all of
    them together pass ``max_bytes``. Image streams are skipped: text extraction never decodes
    them (OCR renders at a bounded size). Streams that are not zlib data (JPEG, JBIG2, encrypted
    ones) cost one failed header check each.

    With ``password`` (``""`` for the empty user password) the document is taken as encrypted:
    each stream's first :data:`_DECRYPT_PREFIX` bytes are decrypted (pdfminer.six's security
    handlers: RC4, AES-128, AES-256) and inflated instead, which is enough to see a bomb's
    ratio; the total is then a lower bound.
    """
    with ExitStack() as stack:
        stream: BinaryIO = (
            stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        )
        start = stream.tell()
        try:
            decipher = None if password is None else _decipher(stream, password)
            if password is not None and decipher is None:
                return 0  # pdfminer cannot decrypt it: PDFium's own open decides
            return _scan_streams(stream, name, max_bytes, max_ratio, deadline, decipher)
        finally:
            stream.seek(start)


#: Bytes of each encrypted stream decrypted for the check: a bomb passes the ratio limit within
#: its first ~16 kB, and pdfminer.six's RC4 is pure Python (~1 MB/s), so more would only cost.
_DECRYPT_PREFIX = 64 * 1024
_OBJECT_HEADER = re.compile(rb"(\d+)\s+(\d+)\s+obj\b")


def _decipher(stream: BinaryIO, password: str) -> Any:
    """pdfminer.six's ``decipher(objid, genno, data)`` for this document, or None."""
    from pdfminer.pdfdocument import PDFDocument
    from pdfminer.pdfparser import PDFParser

    stream.seek(0)
    try:
        return PDFDocument(PDFParser(stream), password=password).decipher
    except Exception:  # damaged, unsupported handler, wrong password: PDFium reports those
        return None


def _scan_streams(
    stream: BinaryIO,
    name: str,
    max_bytes: int,
    max_ratio: int,
    deadline: float | None,
    decipher: Any = None,
) -> int:
    total = 0
    position = 0  # where the search for the next ``stream`` keyword resumes
    window_start, window = 0, b""
    while True:
        offset = position - window_start
        match = _stream_start(window, offset) if 0 <= offset < len(window) else None
        if match is None:
            # Read the next block, keeping the last bytes of this one: a keyword split between
            # two blocks, and the dictionary before a stream, are still found.
            keep = min(len(window), _DICT_LOOKBACK) if offset >= 0 else 0
            stream.seek(max(position - keep, 0) if keep else position)
            window_start = stream.tell()
            window = stream.read(_SCAN_BLOCK)
            if len(window) <= position - window_start:
                return total
            match = _stream_start(window, position - window_start)
            if match is None:
                position = window_start + max(len(window) - 16, position - window_start + 1)
                if len(window) < _SCAN_BLOCK:
                    return total
                continue
        data_start = window_start + match.end()
        before = window[max(0, match.start() - _DICT_LOOKBACK) : match.start()]
        if _is_image_stream(before):
            position = data_start
            continue
        if decipher is not None:
            consumed, inflated = _inflated_encrypted_size(
                stream, data_start, before, decipher, name, max_ratio, max_bytes - total, deadline
            )
        else:
            quick = _small_stream_size(window, match.end(), max_bytes - total)
            if quick is not None:
                consumed, inflated = quick
            else:
                consumed, inflated = _inflated_size(
                    stream, data_start, name, max_ratio, max_bytes - total, deadline
                )
        total += inflated
        position = data_start + max(consumed, 1)


def _stream_start(window: bytes, offset: int) -> re.Match[bytes] | None:
    """The next ``stream`` keyword that is not the end of an ``endstream``.

    (A literal-first pattern with the check done here: a look-behind at the start of the
    pattern would make the regex engine try every position, 3x slower.)
    """
    while True:
        match = _STREAM_START.search(window, offset)
        if match is None or window[max(0, match.start() - 3) : match.start()] != b"end":
            return match
        offset = match.end()


def _is_image_stream(before: bytes) -> bool:
    """Whether the dictionary just before a ``stream`` keyword says ``/Subtype /Image``."""
    header = before[before.rfind(b" obj") + 1 :]
    return re.search(rb"/Subtype\s*/Image\b", header) is not None


def _small_stream_size(window: bytes, start: int, budget: int) -> tuple[int, int] | None:
    """:func:`_inflated_size` of a stream that ends within the first read, straight from the
    scan's window; ``None`` when the full path is needed.

    Most streams of a book (thousands of content streams, fonts and CMaps) inflate in one step
    from their first :data:`_INFLATE_READ` bytes. This inflates exactly the bytes the full path
    would read first, in the one call it would make, and answers only when that call settles
    everything: the stream ended, produced less than one step (so no limit can be near: the
    ratio limit starts at :data:`RATIO_MIN_BYTES`, far above a step), within ``budget``, and not
    another zlib layer. Anything else (a large or nested stream, not zlib data, data past the
    window) goes the full way. Measured on a 627-page book: the stream check 0.19 s -> 0.14 s.
    """
    import zlib

    data = memoryview(window)[start : start + _INFLATE_READ]
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, _INFLATE_STEP)
    except zlib.error:
        return None
    if not inflater.eof or len(out) >= _INFLATE_STEP or len(out) > budget or _looks_like_zlib(out):
        return None
    return len(data) - len(inflater.unused_data), len(out)


def _inflated_encrypted_size(
    stream: BinaryIO,
    start: int,
    before: bytes,
    decipher: Any,
    name: str,
    max_ratio: int,
    budget: int,
    deadline: float | None,
) -> tuple[int, int]:
    """Like :func:`_inflated_size` for an encrypted stream: its object number (from the
    ``N G obj`` header before it) selects the key; a prefix of its data is decrypted."""
    headers = list(_OBJECT_HEADER.finditer(before))
    if not headers:
        return 0, 0
    objid, genno = int(headers[-1].group(1)), int(headers[-1].group(2))
    stream.seek(start)
    raw = stream.read(_DECRYPT_PREFIX)
    end = raw.find(b"endstream")
    if end >= 0:
        raw = raw[:end].rstrip(b"\r\n")
    else:
        raw = raw[: len(raw) - len(raw) % 16]  # whole AES blocks (harmless for RC4)
    try:
        plain = decipher(objid, genno, raw)
    except Exception:  # not really a stream of that object, or damaged: nothing to measure
        return len(raw), 0
    _, inflated = _inflated_size(io.BytesIO(plain), 0, name, max_ratio, budget, deadline)
    return len(raw), inflated


def _inflated_size(
    stream: BinaryIO,
    start: int,
    name: str,
    max_ratio: int,
    budget: int,
    deadline: float | None,
) -> tuple[int, int]:
    """(compressed bytes consumed, inflated bytes) of the zlib data at ``start``, following
    nested layers; ``(0, 0)`` when it is not zlib data. Raises once a limit is passed."""
    import zlib

    inflater = _Inflater(name, max_ratio, budget, deadline)
    stream.seek(start)
    try:
        while not inflater.done:
            block = stream.read(_INFLATE_READ)
            if not block:
                break
            inflater.feed(block)
    except zlib.error:
        if inflater.inflated == 0:
            return 0, 0  # not zlib data at all (or broken from its first byte)
        # Damaged after some good data: what PDFium makes of it is its business; the part
        # that inflated has been counted.
    return inflater.consumed, inflater.inflated


#: Compressed bytes read at a time, and most bytes one inflate step may produce: together they
#: bound the check's memory whatever the ratio.
_INFLATE_READ = 64 * 1024
_INFLATE_STEP = 1024**2


class _Inflater:
    """Inflates one stream through nested zlib layers in bounded steps, counting the output."""

    def __init__(self, name: str, max_ratio: int, budget: int, deadline: float | None) -> None:
        import zlib

        self.name = name
        self.max_ratio = max_ratio
        self.budget = budget
        self.deadline = deadline
        self.layers = [zlib.decompressobj()]
        self.produced = [False]
        self.fed = 0
        self.inflated = 0
        self.steps = 0

    @property
    def consumed(self) -> int:
        outer = self.layers[0]
        return self.fed - len(outer.unconsumed_tail) - len(outer.unused_data)

    @property
    def done(self) -> bool:
        return bool(self.layers[0].eof)

    def feed(self, block: bytes) -> None:
        self.fed += len(block)
        self._push(0, block)

    def _push(self, depth: int, data: bytes) -> None:
        import zlib

        layer = self.layers[depth]
        while data and not layer.eof:
            out = layer.decompress(data, _INFLATE_STEP)
            data = layer.unconsumed_tail
            if not out:
                continue
            if not self.produced[depth]:
                self.produced[depth] = True
                last = depth == len(self.layers) - 1
                if last and len(self.layers) < _MAX_FLATE_LAYERS and _looks_like_zlib(out):
                    # A doubled /FlateDecode: follow the inner stream.
                    self.layers.append(zlib.decompressobj())
                    self.produced.append(False)
            if depth < len(self.layers) - 1:
                try:
                    self._push(depth + 1, out)
                    continue
                except zlib.error:
                    # The inner "stream" was not one after all: count this layer's output.
                    del self.layers[depth + 1 :], self.produced[depth + 1 :]
            self.inflated += len(out)
            self._check()

    def _check(self) -> None:
        self.steps += 1
        consumed = max(self.consumed, 1)
        ratio_hit = self.inflated > RATIO_MIN_BYTES and self.inflated > self.max_ratio * consumed
        if ratio_hit or self.inflated > self.budget:
            _refuse(self.name, self.inflated, consumed, self.max_ratio, ratio_hit, self.budget)
        if self.deadline is not None and self.steps % 64 == 0 and time.monotonic() > self.deadline:
            raise DocumentTimeout(
                f"checking the streams of {self.name} exceeded its time limit "
                "(P8FS_DOCUMENT_TIMEOUT)"
            )


def _looks_like_zlib(data: bytes) -> bool:
    """A zlib header: deflate method, and the header checksum holds."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _refuse(
    name: str, inflated: int, consumed: int, max_ratio: int, ratio_hit: bool, budget: int
) -> None:
    if ratio_hit:
        raise LimitExceeded(
            f"{name}: a stream inflates {consumed:,} bytes to more than {inflated:,} (over "
            f"{max_ratio}:1): refusing a likely decompression bomb (option "
            "max_compression_ratio, setting P8FS_MAX_COMPRESSION_RATIO)",
            limit="max_compression_ratio",
        )
    raise LimitExceeded(
        f"{name}: its streams inflate to more than the limit of {budget:,} bytes (option "
        "max_uncompressed_bytes, setting P8FS_MAX_UNCOMPRESSED_BYTES)",
        limit="max_uncompressed_bytes",
    )


def _password(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr
        value = value.get_secret_value()
    return str(value)


def _prepare_input(
    source: Source, stack: ExitStack, name: str
) -> tuple[Path | _PositionedReader, Path | BinaryIO]:
    """What pdfium reads and what pdfminer reads (both lazily: nothing is loaded whole).

    A path is used as it is. A seekable file object (an s3fs file, say) is shared: pdfium reads
    it through a :class:`_PositionedReader`, which leaves the object's own cursor where pdfminer
    expects it. A non-seekable stream is first copied to a temporary file, in blocks.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise SourceNotFound(f"{name} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise EmptyDocument(f"{name} is empty (0 bytes)")
        return path, path
    stream: BinaryIO = source
    if not _seekable(stream):
        spool = stack.enter_context(tempfile.TemporaryFile(prefix="p8fs-pdf-"))
        shutil.copyfileobj(stream, spool, 1024 * 1024)
        spool.seek(0)
        stream = spool
    reader = _PositionedReader(stream)
    if reader.size == 0:
        raise EmptyDocument(f"{name} is empty (0 bytes)")
    return reader, stream


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False


class _PositionedReader:
    """A read-only view of a seekable binary file with its own cursor.

    pdfium asks for blocks at absolute offsets (``seek`` then ``readinto``) and fails the document
    if a read comes back short, which network streams may do; this view fills every block, and
    puts the underlying cursor back so another reader of the same object (pdfminer, in layout
    mode) is not disturbed.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        start = stream.tell()
        self.size = stream.seek(0, io.SEEK_END)
        stream.seek(start)
        self._pos = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        saved = self._stream.tell()
        try:
            self._stream.seek(self._pos)
            filled = 0
            while filled < len(view):
                data = self._stream.read(len(view) - filled)
                if not data:
                    break
                view[filled : filled + len(data)] = data
                filled += len(data)
        finally:
            self._stream.seek(saved)
        self._pos += filled
        return filled

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buffer = bytearray(size)
        n = self.readinto(buffer)
        return bytes(buffer[:n])


def _open_pdfium(
    pdfium_input: Path | _PositionedReader,
    password: str | None,
    name: str,
    deadline: float | None,
) -> pypdfium2.PdfDocument:
    """Open the document, turning pdfium's error codes into typed errors a user can act on."""
    import pypdfium2

    try:
        with pdfium_lock(deadline):
            return pypdfium2.PdfDocument(pdfium_input, password=password)
    except pypdfium2.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == _ERR_PASSWORD:
            if password is None:
                raise EncryptedDocument(
                    f"{name} is encrypted and needs a password: pass it as the 'password' option "
                    "(p8fs process --password, or a 'password' entry in the storage event's metadata)",
                    reason="password_required",
                ) from exc
            raise EncryptedDocument(
                f"the password given for {name} is wrong (neither its user nor owner password)",
                reason="wrong_password",
            ) from exc
        if code == _ERR_SECURITY:
            raise EncryptedDocument(
                f"{name} uses an encryption scheme PDFium does not support", reason="unsupported"
            ) from exc
        raise CorruptDocument(
            f"{name} is not a readable PDF (damaged, truncated or not a PDF at all): {exc}"
        ) from exc


def _close(doc: pypdfium2.PdfDocument) -> None:
    """Close the document; if PDFium stays busy elsewhere (a hung call), leave it to the GC."""
    if PDFIUM_LOCK.acquire(timeout=CLOSE_WAIT_SECONDS):
        try:
            doc.close()
        finally:
            PDFIUM_LOCK.release()


def _document_metadata(doc: pypdfium2.PdfDocument, metadata: dict[str, Any]) -> None:
    import pypdfium2.raw as pdfium_c

    metadata["encrypted"] = pdfium_c.FPDF_GetSecurityHandlerRevision(doc) != -1
    version = doc.get_version()
    if version:
        metadata["pdf_version"] = f"{version // 10}.{version % 10}"
    # Key by key rather than ``doc.get_metadata_dict()``, which decodes strictly: one malformed
    # UTF-16 string in the info dictionary (an unpaired surrogate) would cost the document.
    for key, target in _METADATA_KEYS.items():
        value = _wide_string(pdfium_c.FPDF_GetMetaText, doc, key.encode("ascii"))
        value = value.strip().translate(_DROPPED)
        if value:
            metadata[target] = _pdf_date(value) if target in ("created", "modified") else value


_PDF_DATE = re.compile(
    r"^D:(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?P<tz>Z|[+-]\d{2}'?\d{2}'?)?"
)


def _pdf_date(value: str) -> str:
    """A PDF date (``D:20220626105843+02'00'``) as ISO 8601, or unchanged if it is not one."""
    match = _PDF_DATE.match(value)
    if not match:
        return value
    part = match.groupdict()
    iso = f"{part['y']}-{part['mo'] or '01'}-{part['d'] or '01'}"
    iso += f"T{part['h'] or '00'}:{part['mi'] or '00'}:{part['s'] or '00'}"
    tz = part["tz"]
    if tz == "Z":
        iso += "Z"
    elif tz:
        digits = tz[1:].replace("'", "")
        iso += f"{tz[0]}{digits[:2]}:{digits[2:4]}"
    return iso


def _init_forms(doc: pypdfium2.PdfDocument) -> bool:
    """Set up pdfium's form environment if the document has a form (before any page is loaded).

    Filled-in form values live in widget annotations, not in the page's text layer; without
    this, "Alice" typed into a "First Name" field would be lost.
    """
    import pypdfium2.raw as pdfium_c

    if doc.get_formtype() == pdfium_c.FORMTYPE_NONE:
        return False
    doc.init_forms()
    return True


#: Form field types whose value is text worth keeping (text fields, combo and list boxes,
#: check boxes and radio buttons when switched on).
_VALUE_FIELD_TYPES = (
    "FPDF_FORMFIELD_TEXTFIELD",
    "FPDF_FORMFIELD_COMBOBOX",
    "FPDF_FORMFIELD_LISTBOX",
    "FPDF_FORMFIELD_CHECKBOX",
    "FPDF_FORMFIELD_RADIOBUTTON",
)


def _form_field_text(doc: pypdfium2.PdfDocument, index: int, deadline: float | None) -> str:
    """The filled-in form fields of page ``index`` as ``name: value`` lines (``""`` if none)."""
    import pypdfium2.raw as pdfium_c

    wanted = {getattr(pdfium_c, name) for name in _VALUE_FIELD_TYPES if hasattr(pdfium_c, name)}
    lines: list[str] = []
    with pdfium_lock(deadline):
        formenv = doc.formenv
        page = doc[index]
        try:
            for position in range(pdfium_c.FPDFPage_GetAnnotCount(page)):
                annot = pdfium_c.FPDFPage_GetAnnot(page, position)
                try:
                    if pdfium_c.FPDFAnnot_GetSubtype(annot) != pdfium_c.FPDF_ANNOT_WIDGET:
                        continue
                    if pdfium_c.FPDFAnnot_GetFormFieldType(formenv, annot) not in wanted:
                        continue
                    value = _wide_string(pdfium_c.FPDFAnnot_GetFormFieldValue, formenv, annot)
                    if not value.strip() or value == "Off":
                        continue
                    name = _wide_string(pdfium_c.FPDFAnnot_GetFormFieldName, formenv, annot)
                    lines.append(f"{name}: {value}" if name else value)
                finally:
                    pdfium_c.FPDFPage_CloseAnnot(annot)
        finally:
            page.close()
    return normalize_pdfium_text("\n".join(lines))


def _wide_string(function: Any, *args: Any) -> str:
    """Call one of pdfium's "fill a UTF-16 buffer, return its byte size" functions."""
    import ctypes

    import pypdfium2.raw as pdfium_c

    size = int(function(*args, None, 0))
    if size <= 2:
        return ""
    buffer = ctypes.create_string_buffer(size)
    function(*args, ctypes.cast(buffer, ctypes.POINTER(pdfium_c.FPDF_WCHAR)), size)
    return buffer.raw[: size - 2].decode("utf-16-le", errors="replace")


def _pdfium_page_text(
    doc: pypdfium2.PdfDocument, index: int, deadline: float | None
) -> tuple[str, bool]:
    """The page's normalised text layer and whether the page draws anything at all.

    A page with no text but some content (an image, vector outlines) is worth OCR; a blank page
    is not.
    """
    import pypdfium2.raw as pdfium_c

    with pdfium_lock(deadline):
        if doc.formenv is None:
            # pdfium's own handles: pypdfium2's page and text-page objects (finalizers, weak
            # references, parent links) cost more per page than reading the text itself.
            return _raw_page_text(doc, index)
        page = doc[index]  # with a form environment: pypdfium2 notifies it of the page
        try:
            textpage = page.get_textpage()
            try:
                raw = textpage.get_text_range()
            finally:
                textpage.close()
            has_content = pdfium_c.FPDFPage_CountObjects(page) > 0
        finally:
            page.close()
    return normalize_pdfium_text(raw), has_content


def _raw_page_text(doc: pypdfium2.PdfDocument, index: int) -> tuple[str, bool]:
    """:func:`_pdfium_page_text` on pdfium's C handles (caller holds :data:`PDFIUM_LOCK`).

    The same calls, in the same order, as pypdfium2's ``PdfPage.get_textpage()`` and
    ``PdfTextPage.get_text_range()``, including the latter's trimming of leading and trailing
    characters that have no text index (pdfium bug 2079, which otherwise reads past the
    range), so the text is identical; on a 627-page book it saves ~4% of raw pypdfium2's time.
    """
    import codecs
    import ctypes

    import pypdfium2
    import pypdfium2.raw as pdfium_c

    page = pdfium_c.FPDF_LoadPage(doc, index)
    if not page:
        raise pypdfium2.PdfiumError("Failed to load page.")
    try:
        textpage = pdfium_c.FPDFText_LoadPage(page)
        if not textpage:
            raise pypdfium2.PdfiumError("Failed to load text page.")
        try:
            raw = ""
            text_index = pdfium_c.FPDFText_GetTextIndexFromCharIndex
            first, last = 0, pdfium_c.FPDFText_CountChars(textpage) - 1
            text_first = text_last = -1
            while first <= last and (text_first := text_index(textpage, first)) == -1:
                first += 1
            while first <= last and (text_last := text_index(textpage, last)) == -1:
                last -= 1
            if first <= last:
                buffer = (ctypes.c_ushort * (text_last + 2 - text_first))()
                written = pdfium_c.FPDFText_GetText(textpage, first, last + 1 - first, buffer)
                raw = codecs.decode(memoryview(buffer)[: written - 1], "utf-16-le", "ignore")
        finally:
            pdfium_c.FPDFText_ClosePage(textpage)
        has_content = pdfium_c.FPDFPage_CountObjects(page) > 0
    finally:
        pdfium_c.FPDF_ClosePage(page)
    return normalize_pdfium_text(raw), has_content


def _pdfminer_page_texts(
    source: Path | BinaryIO, password: str | None, page_count: int, context: ExtractContext
) -> Iterator[str | None]:
    """Each page's text in pdfminer.six's layout reading order, one page at a time.

    Yields ``None`` for a page pdfminer cannot read (the caller then keeps pdfium's text for it
    and a warning says so); after a failure of the document parser itself every further page is
    ``None``. Object caching is off so memory does not grow with the document.
    """
    from pdfminer.converter import PDFPageAggregator
    from pdfminer.layout import LAParams
    from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
    from pdfminer.pdfpage import PDFPage

    with ExitStack() as stack:
        fp: BinaryIO = (
            stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        )
        resources = PDFResourceManager(caching=True)
        device = PDFPageAggregator(resources, laparams=LAParams(detect_vertical=True))
        interpreter = PDFPageInterpreter(resources, device)
        pages = PDFPage.get_pages(fp, password=password or "", caching=False)
        broken = False
        for number in range(1, page_count + 1):
            if broken:
                yield None
                continue
            try:
                page = next(pages)
            except StopIteration:
                context.warn(
                    f"pdfminer.six found no page {number}; kept pdfium's text from there on"
                )
                broken = True
                yield None
                continue
            except Exception as exc:
                context.warn(f"pdfminer.six cannot parse this PDF ({exc}); kept pdfium's text")
                broken = True
                yield None
                continue
            try:
                interpreter.process_page(page)
                yield _layout_text(device.get_result())
            except Exception as exc:
                context.warn(f"pdfminer.six failed on page {number} ({exc}); kept pdfium's text")
                yield None


def _layout_text(item: Any) -> str:
    """Text of a pdfminer layout tree, as pdfminer's own ``TextConverter`` writes it."""
    from pdfminer.layout import LTContainer, LTText, LTTextBox

    parts: list[str] = []

    def render(node: Any) -> None:
        if isinstance(node, LTContainer):
            for child in node:
                render(child)
        elif isinstance(node, LTText):
            parts.append(node.get_text())
        if isinstance(node, LTTextBox):
            parts.append("\n")

    render(item)
    return "".join(parts).replace("\x00", "")


def _draws_only_text(doc: pypdfium2.PdfDocument, index: int, deadline: float | None) -> bool:
    """Whether page ``index`` draws text objects only (no image, path or form to OCR)."""
    import pypdfium2.raw as pdfium_c

    with pdfium_lock(deadline):
        page = doc[index]
        try:
            return all(obj.type == pdfium_c.FPDF_PAGEOBJ_TEXT for obj in page.get_objects())
        finally:
            page.close()


class _OcrPolicy:
    """Whether and how pages without a text layer are OCR'd for one document."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.requested = ocr_requested(options)
        self.choice = configured_engine(options) if self.requested else "auto"
        self.unavailable = ocr_unavailable_reason(self.choice) if self.requested else None
        self.enabled = self.requested and self.unavailable is None
        self.engine = used_engine(self.choice) if self.enabled else None
        self.languages = str(options.get("ocr_languages") or DEFAULT_LANGUAGES)
        self.dpi = float(options.get("ocr_dpi") or DEFAULT_OCR_DPI)

    def run(self, doc: pypdfium2.PdfDocument, index: int, context: ExtractContext) -> str:
        """Render page ``index`` and OCR it; the bitmap lives only for this call."""
        with pdfium_lock(context.deadline):
            page = doc[index]
            try:
                width, height = page.get_size()
                if not (width > 0 and height > 0):
                    return ""  # a page box of no area (or a hostile one): nothing to see
                scale = self.dpi / 72
                pixels = width * height * scale * scale
                if pixels > MAX_RENDER_PIXELS:
                    scale *= (MAX_RENDER_PIXELS / pixels) ** 0.5
                scale = min(scale, MAX_RENDER_SIDE / max(width, height))
                if min(width, height) * scale < 1:
                    return ""  # a sliver thinner than a pixel: nothing to recognise
                bitmap = page.render(scale=scale, grayscale=True)
                image = bitmap.to_pil().copy()
                bitmap.close()
            finally:
                page.close()
        return ocr_image(
            image, languages=self.languages, deadline=context.deadline, engine=self.choice
        )


def _report_pages_without_text(
    context: ExtractContext,
    without_text: list[int],
    ocr_pages: list[int],
    page_count: int,
    ocr: _OcrPolicy,
) -> None:
    """Say in the result how many pages had no text, and why they still have none."""
    remaining = [n for n in without_text if n not in set(ocr_pages)]
    if not remaining:
        return
    count = f"{len(remaining)} of {page_count} page(s) ({_page_list(remaining)})"
    if not ocr.requested:
        context.warn(f"{count} have no text layer; OCR was turned off (option ocr=False)")
    elif ocr.unavailable:
        context.warn(f"{count} have no text layer and were not OCR'd: {ocr.unavailable}")
    else:
        context.warn(f"{count} have no text layer or none that OCR could recognise")


def _page_list(numbers: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return f"pages {shown}" + (", ..." if len(numbers) > limit else "")


__all__ = [
    "PDFIUM_LOCK",
    "PdfProvider",
    "normalize_pdfium_text",
    "pdfium_lock",
]
