"""Content sniffing: a file's MIME type from its first bytes, refined by its name.

Content decides the family (a PDF renamed ``.txt`` is still a PDF); the extension only refines
within a family whose bytes do not say more (a ZIP is a .docx or an .epub by name; text is
Markdown or SRT by name). Providers are then looked up by MIME type first, extension second.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import PurePosixPath

from p8fs.encoding import has_bom, looks_like_text

_ZIP_MIMETYPE = re.compile(rb"mimetype(application/[a-z0-9.+-]+)")

#: How many leading bytes :func:`sniff_mime` wants.
SNIFF_BYTES = 8192

#: Types whose bytes say little about the document: the extension's provider is preferred.
GENERIC_MIME_TYPES = frozenset(
    {
        "text/plain",
        "application/octet-stream",
        "application/zip",
        "application/xml",
        "text/xml",
        "application/x-ole-storage",
    }
)

# Names the standard table (Python 3.11) lacks or gets wrong for us.
_EXTRA_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".srt": "application/x-subrip",
    ".vtt": "text/vtt",
    ".epub": "application/epub+zip",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".rtf": "application/rtf",
    ".eml": "message/rfc822",
    ".msg": "application/vnd.ms-outlook",
    ".wav": "audio/wav",
    ".m4a": "audio/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".ogg": "audio/ogg",
    ".jsonl": "application/jsonl",
}


def extension_of(name: str) -> str:
    return PurePosixPath(name.split("?", 1)[0]).suffix.lower()


def guess_from_name(name: str) -> str | None:
    ext = extension_of(name)
    if ext in _EXTRA_TYPES:
        return _EXTRA_TYPES[ext]
    guessed, _ = mimetypes.guess_type("x" + ext) if ext else (None, None)
    return guessed


def is_textual(mime: str | None) -> bool:
    return bool(mime) and (
        mime.startswith("text/")  # type: ignore[union-attr]
        or mime in {"application/json", "application/yaml", "application/xml", "application/x-subrip",
                    "application/jsonl", "message/rfc822", "application/rtf", "image/svg+xml",
                    "application/xhtml+xml", "application/javascript"}
    )


def _mpeg_frame(head: bytes) -> bool:
    """An MPEG audio frame header: sync bits, a valid layer, bitrate and sample-rate index."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    layer = (head[1] >> 1) & 0x3
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0x3
    return layer != 0 and bitrate not in (0, 15) and rate != 3


def sniff_mime(head: bytes, name: str = "") -> str:
    """The MIME type of a file from its first bytes (:data:`SNIFF_BYTES`) and its name."""
    by_name = guess_from_name(name) if name else None

    def refine(family: str, allowed: tuple[str, ...]) -> str:
        if by_name and by_name.startswith(allowed):
            return by_name
        return family

    if has_bom(head):
        return _sniff_text(head, by_name)
    if b"%PDF-" in head[:1024]:
        return "application/pdf"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        # EPUB and OpenDocument store their MIME type uncompressed as the first member.
        declared = _ZIP_MIMETYPE.match(head[30:200])
        if declared:
            return declared.group(1).decode("ascii")
        return refine(
            "application/zip",
            ("application/vnd.openxmlformats", "application/vnd.oasis", "application/epub", "application/vnd.ms-"),
        )
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        # OLE2: legacy Office, Outlook .msg, or an encrypted OOXML package.
        return refine("application/x-ole-storage", ("application/",))
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio/aiff"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return refine("audio/ogg", ("audio/", "video/"))
    if head.startswith(b"ID3") or _mpeg_frame(head):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand.startswith((b"M4A", b"M4B")):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return refine("video/mp4", ("video/", "audio/mp4"))
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"BM") and len(head) > 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "image/bmp"
    if head.startswith(b"{\\rtf"):
        return "application/rtf"
    if looks_like_text(head):
        return _sniff_text(head, by_name)
    return by_name or "application/octet-stream"


def _sniff_text(head: bytes, by_name: str | None) -> str:
    lowered = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or (
        by_name in (None, "text/plain", "text/html") and b"<html" in lowered[:512]
    ):
        return "text/html"
    if lowered.startswith(b"<?xml"):
        if by_name and ("xml" in by_name or "html" in by_name or "svg" in by_name):
            return by_name
        return "application/xml"
    if by_name and is_textual(by_name):
        return by_name
    return "text/plain"
