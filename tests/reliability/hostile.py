"""Builders of hostile files: decompression bombs, lying headers, and their near-harmless twins.

Every builder writes a *real* file of its kind (a valid zlib stream with the right checksum, a
PDF with a correct cross-reference table, a PNG whose chunks carry correct CRCs), so that a
limit refusing it is tested against what an attacker would really send, not against a file that
some parser would reject as damaged anyway. The large ones are built without ever holding or
compressing their inflated size: one compressed block of a repeated byte is reused.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

#: Block that :func:`deflate_repeated` compresses once and repeats.
REPEAT_BLOCK = 16 << 20


@lru_cache(maxsize=8)
def deflate_repeated(byte: bytes, total: int, block: int = REPEAT_BLOCK) -> bytes:
    """A zlib stream that inflates to ``total`` copies of ``byte`` (``total`` a multiple of
    ``block``), built in well under a second for gigabytes.

    A full flush after each block resets the compressor's history, so every block after the
    first compresses to the same bytes; the stream is the first block, that repeated block, an
    empty final block and the Adler-32 of the whole inflated content.
    """
    if total % block:
        raise ValueError(f"total must be a multiple of {block}")
    compressor = zlib.compressobj(9)
    chunk = byte * block
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(total // block):
        adler = zlib.adler32(chunk, adler)
    return first + again * (total // block - 1) + b"\x03\x00" + struct.pack(">I", adler)


@lru_cache(maxsize=8)
def raw_deflate_repeated(byte: bytes, total: int, block: int = REPEAT_BLOCK) -> tuple[bytes, int]:
    """The raw deflate data (no zlib header or trailer, as ZIP stores it) of ``total`` copies
    of ``byte``, and the CRC-32 of that content."""
    stream = deflate_repeated(byte, total, block)
    crc = 0
    chunk = byte * block
    for _ in range(total // block):
        crc = zlib.crc32(chunk, crc)
    return stream[2:-4], crc


# -- PDF -------------------------------------------------------------------------------------


def pdf_document(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF whose objects are ``objects`` (numbered from 1; object 1 is the catalog), with a
    correct cross-reference table, so that PDFium reads it without repairing anything.
    ``trailer`` adds entries to the trailer dictionary (``/Info 4 0 R``)."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer,
        xref,
    )
    return bytes(out)


def pdf_stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n" % (len(data), entries) + data + b"\nendstream"


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
PAGE_TEXT = b"Hello from the only real page"


def pdf_claiming_pages(count: int) -> bytes:
    """One real page whose page tree's ``/Count`` claims ``count`` pages."""
    content = b"BT /F1 12 Tf 72 712 Td (" + PAGE_TEXT + b") Tj ET"
    return pdf_document(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % count,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            pdf_stream(content),
            _FONT,
        ]
    )


def pdf_with_pages(count: int) -> bytes:
    """``count`` real pages (all sharing one content stream), a true ``/Count``."""
    content = b"BT /F1 12 Tf 72 712 Td (" + PAGE_TEXT + b") Tj ET"
    first_page = 5
    kids = b" ".join(b"%d 0 R" % (first_page + i) for i in range(count))
    pages = [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>"
        for _ in range(count)
    ]
    return pdf_document(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
            pdf_stream(content),
            _FONT,
            *pages,
        ]
    )


def pdf_with_content_stream(data: bytes, filters: bytes = b"/Filter /FlateDecode") -> bytes:
    """One page whose (already encoded) content stream is ``data``."""
    return pdf_document(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            pdf_stream(data, filters),
            _FONT,
        ]
    )


# -- images ----------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` 8-bit grey pixels, with a few bytes of
    (valid) image data: tiny on disk, gigapixels if decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (min(width, 4096) + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# -- audio -----------------------------------------------------------------------------------


def wav_claiming(data_bytes: int, sample_rate: int = 8000, audio: bytes = b"") -> bytes:
    """An 8-bit mono PCM WAV whose header claims ``data_bytes`` of samples (one byte each at
    ``sample_rate``) while the file holds only ``audio``."""
    audio = audio or bytes([128]) * sample_rate  # one second of silence
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate, 1, 8)
    riff_size = min(0xFFFFFFFF, 4 + 8 + len(fmt) + 8 + data_bytes)
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", min(data_bytes, 0xFFFFFFFF))
        + audio
    )


#: MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono, no CRC, no padding: 417-byte frames.
_MP3_HEADER = b"\xff\xfb\x90\xc4"
_MP3_FRAME_BYTES = 417
_MP3_SAMPLES_PER_FRAME = 1152
_MP3_RATE = 44100
#: Where the Xing tag sits in a mono MPEG-1 frame: after the 4-byte header and 17 bytes of
#: side information.
_XING_OFFSET = 4 + 17


def mp3_claiming_frames(frames: int, real_frames: int = 40) -> bytes:
    """An MP3 whose Xing (VBR) header says the stream has ``frames`` frames while the file
    holds ``real_frames`` silent ones: players and FFmpeg take the duration from the tag."""
    tag = bytearray(_MP3_FRAME_BYTES)
    tag[:4] = _MP3_HEADER
    # Flags: frame count and byte count present.
    xing = b"Xing" + struct.pack(">III", 0x1 | 0x2, frames, (real_frames + 1) * _MP3_FRAME_BYTES)
    tag[_XING_OFFSET : _XING_OFFSET + len(xing)] = xing
    silent = bytearray(_MP3_FRAME_BYTES)
    silent[:4] = _MP3_HEADER
    return bytes(tag) + bytes(silent) * real_frames


def mp3_seconds(frames: int) -> float:
    return frames * _MP3_SAMPLES_PER_FRAME / _MP3_RATE


# -- ZIP containers --------------------------------------------------------------------------


def zip_with_bomb(
    template: Path, member: str, byte: bytes, total: int, *, lie_size: int | None = None
) -> bytes:
    """``template`` (a ZIP-based document) with ``member`` added or replaced by ``total`` copies
    of ``byte``, deflated. With ``lie_size`` the ZIP headers declare that size instead of the
    truth (the CRC is still the real content's): a bomb that hides from declared-size checks."""
    deflated, crc = raw_deflate_repeated(byte, total)
    declared = total if lie_size is None else lie_size
    out = io.BytesIO()
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename != member:
                target.writestr(info, source.read(info.filename))
    # Append the bomb member by hand: zipfile would inflate nothing, but it would want to
    # compress the content itself.
    archive = bytearray(out.getvalue())
    end = archive.rfind(b"PK\x05\x06")
    entries, cd_size, cd_offset = struct.unpack("<10xHII2x", archive[end : end + 22])
    central = bytes(archive[cd_offset : cd_offset + cd_size])
    name = member.encode()
    local = (
        struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            20,
            0,
            8,
            0,
            0x21,
            crc,
            len(deflated),
            declared,
            len(name),
            0,
        )
        + name
    )
    offset = cd_offset
    body = bytes(archive[:cd_offset]) + local + deflated
    entry = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            8,
            0,
            0x21,
            crc,
            len(deflated),
            declared,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        + name
    )
    new_central = central + entry
    end_record = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, entries + 1, entries + 1, len(new_central), len(body), 0
    )
    return body + new_central + end_record


# -- XML entity expansion ("billion laughs") ---------------------------------------------------


def billion_laughs_dtd(root: bytes, levels: int = 9) -> bytes:
    """A DOCTYPE for ``root`` whose entity ``&lol9;`` expands to 3 * 10**9 bytes."""
    entities = [b' <!ENTITY lol0 "lol">']
    for level in range(1, levels + 1):
        entities.append(b' <!ENTITY lol%d "%s">' % (level, b"&lol%d;" % (level - 1) * 10))
    return b"<!DOCTYPE " + root + b" [\n" + b"\n".join(entities) + b"\n]>\n"


def zip_with_laughs(template: Path, member: str, root: bytes, text_element: bytes) -> bytes:
    """``template`` with a billion-laughs DTD put into ``member`` (an XML part whose root
    element is ``root``) and ``&lol9;`` referenced inside its first ``text_element``."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(template) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            body = source.read(info)
            if info.filename == member:
                at = body.index(b"<" + root)
                body = body[:at] + billion_laughs_dtd(root) + body[at:]
                opening = re.compile(rb"(<" + re.escape(text_element) + rb"(?:\s[^>]*)?>)")
                body, count = opening.subn(rb"\1&lol9;", body, count=1)
                if not count:
                    raise ValueError(f"no <{text_element.decode()}> in {member}")
            target.writestr(info, body)
    return out.getvalue()
