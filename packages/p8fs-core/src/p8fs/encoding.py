"""Text encoding detection for bytes of unknown origin: UTF-8/16/32 (with or without BOM),
cp1252 and Latin-1.

Why not chardet/charset-normalizer: the encodings users actually send are few, the rules below
are exact for them, and a statistical guesser occasionally turns a Latin-1 file into Cyrillic.
The order matters: BOMs are authoritative, then the NUL-byte patterns that only UTF-16/32 produce,
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


def bom_length(data: bytes) -> int:
    """How many leading bytes of ``data`` are a byte-order mark (to skip before decoding)."""
    for bom, _ in _BOMS:
        if data.startswith(bom):
            return len(bom)
    return 0


def has_bom(data: bytes) -> bool:
    return any(data.startswith(bom) for bom, _ in _BOMS)


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


def _is_utf8(sample: bytes, complete: bool) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(sample: bytes, *, complete: bool = True) -> str:
    """The encoding of ``sample`` (a file's head, or all of it when ``complete``).

    Returns a Python codec name; callers skip :func:`bom_length` bytes first, so decoded text
    never starts with U+FEFF.
    """
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    pattern = _nul_pattern(sample[:4096])
    if pattern:
        return pattern
    if _is_utf8(sample, complete):
        return "utf-8"
    if any(0x80 <= b <= 0x9F for b in sample):
        try:
            sample.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            return "latin-1"
    return "latin-1"


def decode_bytes(data: bytes, encoding: str | None = None) -> str:
    """Decode a whole byte string with :func:`detect_encoding` (or the given encoding)."""
    enc = encoding or detect_encoding(data)
    return data[bom_length(data):].decode(enc)


def looks_like_text(sample: bytes) -> bool:
    """Whether a file's head is plausibly text in one of the supported encodings.

    Binary formats are full of NULs and control bytes that no text encoding above produces
    (except UTF-16/32, which :func:`detect_encoding` recognises first).
    """
    if not sample:
        return True
    enc = detect_encoding(sample, complete=False)
    if enc.startswith(("utf-16", "utf-32")):
        return True
    text = sample[bom_length(sample):].decode(enc, errors="replace")
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
        #: The encoding the head revealed (a Python codec name).
        self.encoding = detect_encoding(self.head, complete=len(self.head) <= detect_bytes)

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(self.encoding)("strict")
        nuls = 0
        data = self.head[bom_length(self.head):]
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
