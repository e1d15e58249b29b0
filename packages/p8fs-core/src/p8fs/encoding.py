"""Text encoding detection for bytes of unknown origin: UTF-8/16/32 (with or without BOM),
cp1252 and Latin-1.

Why not chardet/charset-normalizer: the encodings users actually send are few, the rules below
are exact for them, and a statistical guesser occasionally turns a Latin-1 file into Cyrillic.
The order matters: BOMs are authoritative (when what follows decodes in their encoding: bytes
FE FF are also "þÿ" in cp1252), then the NUL-byte patterns that only UTF-16/32 produce,
then strict UTF-8 (which almost never validates by accident), then the Windows superset of
Latin-1, which differs from ISO-8859-1 only in 0x80-0x9F (C1 controls in Latin-1, printable
characters such as ``€`` in cp1252).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _decodes(sample: bytes, encoding: str, complete: bool) -> bool:
    """Whether ``sample`` is valid ``encoding`` (a prefix of it, unless ``complete``)."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    try:
        decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def _bom(sample: bytes, complete: bool) -> tuple[str, int] | None:
    """The encoding a leading byte-order mark names, and the mark's length.

    A mark counts only when the bytes after it decode in its encoding. Otherwise they are text
    that happens to begin with the same bytes (cp1252 "þÿ0" is FE FF 30, which is no UTF-16:
    taking the mark on trust made decoding it raise). UTF-32-LE's mark begins with UTF-16-LE's,
    so a failed UTF-32 reading goes on to the UTF-16 one.
    """
    for bom, name in _BOMS:
        if sample.startswith(bom) and _decodes(sample[len(bom) :], name, complete):
            return name, len(bom)
    return None


def bom_length(data: bytes, *, complete: bool = True) -> int:
    """How many leading bytes of ``data`` are a byte-order mark (to skip before decoding);
    ``complete`` as for :func:`detect_encoding`, whose answer this agrees with."""
    found = _bom(data, complete)
    return found[1] if found else 0


def has_bom(data: bytes, *, complete: bool = False) -> bool:
    """Whether ``data`` (a file's head, or all of it when ``complete``) starts with a
    byte-order mark that :func:`detect_encoding` takes."""
    return _bom(data, complete) is not None


def _nul_pattern(sample: bytes) -> str | None:
    """UTF-16/32 without a BOM, recognised by where the NUL bytes of ASCII text fall."""
    n = len(sample) - len(sample) % 4
    if n < 8:
        return None
    sample = sample[:n]
    positions = [sample[i::4].count(0) for i in range(4)]
    quarter = n // 4
    # Every code point is below 0x110000, so one byte of four is always NUL, and the next one is
    # NUL for everything in the Basic Multilingual Plane.
    if positions[3] == quarter and positions[2] >= quarter * 0.9 and positions[0] < quarter:
        return "utf-32-le"
    if positions[0] == quarter and positions[1] >= quarter * 0.9 and positions[3] < quarter:
        return "utf-32-be"
    odd = sample[1::2].count(0)
    even = sample[0::2].count(0)
    half = n // 2
    if odd >= half * 0.6 and even < half * 0.1:
        return "utf-16-le"
    if even >= half * 0.6 and odd < half * 0.1:
        return "utf-16-be"
    return None


def detect_encoding(sample: bytes, *, complete: bool = True) -> str:
    """The encoding of ``sample`` (a file's head, or all of it when ``complete``).

    Returns a Python codec name; callers skip :func:`bom_length` bytes first, so decoded text
    never starts with U+FEFF.
    """
    return _detect(sample, complete)[0]


def _detect(sample: bytes, complete: bool) -> tuple[str, int]:
    """:func:`detect_encoding` and :func:`bom_length` at once: checking a mark decodes what
    follows it, which is worth doing once per file."""
    found = _bom(sample, complete)
    if found:
        return found
    pattern = _nul_pattern(sample[:4096])
    if pattern:
        return pattern, 0
    if _decodes(sample, "utf-8", complete):
        return "utf-8", 0
    if any(0x80 <= b <= 0x9F for b in sample):
        try:
            sample.decode("cp1252")
            return "cp1252", 0
        except UnicodeDecodeError:
            return "latin-1", 0
    return "latin-1", 0


def decode_bytes(data: bytes, encoding: str | None = None) -> str:
    """Decode a whole byte string with :func:`detect_encoding` (or the given encoding)."""
    enc, skip = (encoding, bom_length(data)) if encoding else _detect(data, True)
    return data[skip:].decode(enc)


def looks_like_text(sample: bytes) -> bool:
    """Whether a file's head is plausibly text in one of the supported encodings.

    Binary formats are full of NULs and control bytes that no text encoding above produces
    (except UTF-16/32, which :func:`detect_encoding` recognises first).
    """
    if not sample:
        return True
    enc, skip = _detect(sample, False)
    if enc.startswith(("utf-16", "utf-32")):
        return True
    text = sample[skip:].decode(enc, errors="replace")
    controls = len(_BINARY_CONTROLS.findall(text))
    return controls <= max(1, len(text) // 100)


#: C0 controls that text does not contain (all but tab, LF, VT, FF, CR and ESC).
_BINARY_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f]")


class TextStream:
    """A binary stream decoded incrementally, in the encoding its head reveals.

    Providers of text formats iterate it for decoded pieces (the first one holds the head), so a
    file of any size is decoded with one read buffer in memory. Two kinds of damage are repaired
    and reported through ``warn`` rather than failing the file: invalid bytes past the inspected
    head become U+FFFD, and NUL characters (not text; PostgreSQL cannot store them) are dropped.
    """

    def __init__(
        self,
        stream: BinaryIO,
        warn: Callable[[str], None],
        *,
        detect_bytes: int = 1 << 20,
        read_bytes: int = 1 << 16,
    ) -> None:
        self._stream = stream
        self._warn = warn
        self._read_bytes = read_bytes
        #: The first bytes read (for callers that sniff before decoding).
        self.head = stream.read(detect_bytes + 1)
        #: The encoding the head revealed (a Python codec name), and the length of its mark.
        self.encoding, self._bom_length = _detect(self.head, len(self.head) <= detect_bytes)

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(self.encoding)("strict")
        nuls = 0
        data = self.head[self._bom_length :]
        while True:
            final = not data
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as exc:
                # Only possible past the inspected head: keep going, but say so.
                self._warn(
                    f"invalid {self.encoding} bytes past the first {len(self.head)} ({exc.reason}); "
                    "replaced with U+FFFD"
                )
                decoder = codecs.getincrementaldecoder(self.encoding)("replace")
                text = decoder.decode(data, final=final)
            if "\x00" in text:
                nuls += text.count("\x00")
                text = text.replace("\x00", "")
            if text:
                yield text
            if final:
                break
            data = self._stream.read(self._read_bytes)
        if nuls:
            self._warn(f"dropped {nuls} NUL character(s): not text, and not storable everywhere")
