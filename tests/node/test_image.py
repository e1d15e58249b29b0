"""ImageProvider: header facts, decompression bombs, damage, and OCR on real scanned images.

The corpus has no standalone images, so the tests take real ones out of corpus PDFs: the
1700x2200 JPEG scan embedded in ``unst_loremipsum-flat.pdf`` (its original bytes, unchanged) and
the 16x16 CCITT smiley of ``spf_imagemagick-CCITTFaxDecode.pdf``.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from p8fs.errors import CorruptDocument, EmptyDocument, LimitExceeded
from p8fs.providers import ExtractContext, Section
from p8fs_node import ocr as ocr_module
from p8fs_node.image import ImageProvider
from tests.fixtures.servers import corpus_path, server_missing

PROVIDER = ImageProvider()


def extract(source: Any, **options: Any) -> tuple[list[Section], ExtractContext]:
    context = ExtractContext(options=options)
    return list(PROVIDER.extract(source, context)), context


def flat(sections: list[Section]) -> str:
    return re.sub(r"\s+", " ", " ".join(s.text for s in sections)).strip()


def require_ocr(engine: str = "auto") -> None:
    reason = ocr_module.ocr_unavailable_reason(engine)
    if reason:
        server_missing(f"{engine} OCR ({reason})")


@pytest.fixture(scope="module")
def scan_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original JPEG bytes of the scanned Lorem ipsum page."""
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    out = tmp_path_factory.mktemp("images") / "scan"
    doc = pypdfium2.PdfDocument(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    (image,) = [o for o in doc[0].get_objects() if o.type == pdfium_c.FPDF_PAGEOBJ_IMAGE]
    assert image.get_filters() == ["DCTDecode"]
    image.extract(out)  # writes scan.jpg with the stream's bytes as they are
    doc.close()
    return out.with_suffix(".jpg")


@pytest.fixture(scope="module")
def first_paragraph(scan_jpeg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scan's first paragraph only (OCR of a whole page takes seconds on shared CI cores)."""
    from PIL import Image

    out = tmp_path_factory.mktemp("images") / "paragraph.png"
    with Image.open(scan_jpeg) as scan:
        scan.crop((0, 0, scan.width, scan.height // 4)).save(out)
    return out


def test_header_facts_without_ocr(scan_jpeg: Path) -> None:
    sections, context = extract(scan_jpeg, ocr=False)
    assert sections == []  # no placeholder text
    assert context.metadata == {
        "format": "JPEG",
        "width": 1700,
        "height": 2200,
        "mode": context.metadata["mode"],
        "frames": 1,
    }
    assert context.metadata["mode"] in ("L", "RGB")
    # Why there is no text (the pipeline keeps a file with no text only when it has a reason).
    assert context.warnings == [
        "image text was not recognised: OCR was turned off (option ocr=False)"
    ]


def test_file_object_source(scan_jpeg: Path) -> None:
    with scan_jpeg.open("rb") as handle:
        _, context = extract(handle, ocr=False)
    assert (context.metadata["width"], context.metadata["height"]) == (1700, 2200)


@pytest.mark.parametrize("engine", ["rapidocr", "tesseract"])
def test_ocr_of_a_scanned_paragraph(first_paragraph: Path, engine: str) -> None:
    require_ocr(engine)
    sections, context = extract(first_paragraph, ocr_engine=engine)
    assert [s.metadata for s in sections] == [{"kind": "image", "ocr": True}]
    assert "Lorem ipsum dolor sit amet" in flat(sections)
    assert context.metadata["format"] == "PNG"
    assert context.metadata["ocr_frames"] == [1]
    assert context.metadata["ocr_engine"] == engine


def test_ocr_of_transparent_and_multi_frame_images(first_paragraph: Path, tmp_path: Path) -> None:
    """Text on a transparent background, and a two-page TIFF: one section per frame."""
    require_ocr()
    from PIL import Image, ImageOps

    with Image.open(first_paragraph) as paragraph:
        grey = paragraph.convert("L")
    # Black text with alpha only: on a black background it would be invisible to OCR.
    transparent = Image.new("RGBA", grey.size, (0, 0, 0, 0))
    transparent.putalpha(ImageOps.invert(grey))
    png = tmp_path / "transparent.png"
    transparent.save(png)
    sections, _ = extract(png)
    assert "Lorem ipsum dolor sit amet" in flat(sections)

    tiff = tmp_path / "two-pages.tiff"
    half = grey.crop((0, 0, grey.width // 2, grey.height))
    half.save(tiff, save_all=True, append_images=[grey])
    sections, context = extract(tiff)
    assert context.metadata["frames"] == 2
    assert [s.metadata["frame"] for s in sections] == [1, 2]
    assert "Lorem ipsum" in sections[1].text


def test_ocr_does_not_hallucinate_on_a_tiny_picture(tmp_path: Path) -> None:
    require_ocr()
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    doc = pypdfium2.PdfDocument(corpus_path("pdf/spf_imagemagick-CCITTFaxDecode.pdf"))
    (image,) = [o for o in doc[0].get_objects() if o.type == pdfium_c.FPDF_PAGEOBJ_IMAGE]
    smiley = tmp_path / "smiley.png"
    image.get_bitmap().to_pil().save(smiley)
    doc.close()
    sections, context = extract(smiley)
    assert sections == []
    assert (context.metadata["width"], context.metadata["height"]) == (16, 16)
    assert context.metadata["ocr_frames"] == []
    assert any("no text was recognised in the image" in w for w in context.warnings)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes (a 'bomb')."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(LimitExceeded, match=r"decompression bomb.*max_image_pixels"):
        extract(bomb)


def test_pixel_limit_option(scan_jpeg: Path) -> None:
    with pytest.raises(LimitExceeded, match="1700 x 2200 pixels, more than the limit of 1000000"):
        extract(scan_jpeg, max_image_pixels=1_000_000)


def test_damaged_images(tmp_path: Path, scan_jpeg: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyDocument):
        extract(empty)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(CorruptDocument, match="not an image"):
        extract(garbage)
    with pytest.raises(CorruptDocument):
        extract(io.BytesIO(b"GIF89a\x00"))


def test_truncated_jpeg_is_a_typed_error_when_decoded(tmp_path: Path, scan_jpeg: Path) -> None:
    require_ocr()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(scan_jpeg.read_bytes()[:5000])
    with pytest.raises(CorruptDocument, match="cannot be decoded"):
        extract(cut)


def test_missing_tesseract_is_a_warning_not_text(
    first_paragraph: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ocr_module.TESSERACT_CMD_ENV, "tesseract-not-installed-here")
    ocr_module.ocr_unavailable_reason.cache_clear()
    try:
        sections, context = extract(first_paragraph)
    finally:
        monkeypatch.undo()
        ocr_module.ocr_unavailable_reason.cache_clear()
    assert sections == []
    assert context.metadata["format"] == "PNG"
    (warning,) = context.warnings
    assert "tesseract-not-installed-here" in warning
    assert "P8FS_OCR_ENGINE=rapidocr" in warning  # the way out that needs no program
