"""The tesseract wrapper: availability reasons, language errors and the time limit."""

from __future__ import annotations

import time

import pytest

from p8fs.errors import ConfigurationError, DocumentTimeout
from p8fs_node import ocr
from tests.fixtures.servers import corpus_path, server_missing


def require_ocr() -> None:
    reason = ocr.ocr_unavailable_reason()
    if reason:
        server_missing(f"tesseract OCR ({reason})")


def blank_page() -> object:
    from PIL import Image

    return Image.new("L", (400, 200), 255)


def test_missing_program_names_the_packages_and_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ocr.TESSERACT_CMD_ENV, "no-such-tesseract")
    ocr.ocr_unavailable_reason.cache_clear()
    try:
        reason = ocr.ocr_unavailable_reason()
        assert not ocr.ocr_available()
    finally:
        monkeypatch.undo()
        ocr.ocr_unavailable_reason.cache_clear()
    assert reason is not None
    assert "no-such-tesseract" in reason
    assert "tesseract-ocr tesseract-ocr-eng" in reason
    assert ocr.TESSERACT_CMD_ENV in reason


def test_unknown_language_is_a_configuration_error() -> None:
    require_ocr()
    with pytest.raises(ConfigurationError, match="no data for language"):
        ocr.ocr_image(blank_page(), languages="xyz")  # type: ignore[arg-type]


def test_blank_image_gives_no_text() -> None:
    require_ocr()
    assert ocr.ocr_image(blank_page()) == ""  # type: ignore[arg-type]


def test_passed_deadline_stops_before_running() -> None:
    require_ocr()
    with pytest.raises(DocumentTimeout, match="P8FS_DOCUMENT_TIMEOUT"):
        ocr.ocr_image(blank_page(), deadline=time.monotonic() - 1)  # type: ignore[arg-type]


def test_tesseract_is_stopped_at_the_deadline() -> None:
    """A full scanned page takes tesseract seconds; a deadline 0.2 s away must kill it."""
    require_ocr()
    import pypdfium2

    doc = pypdfium2.PdfDocument(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    page = doc[0].render(scale=300 / 72, grayscale=True).to_pil().copy()
    doc.close()
    started = time.monotonic()
    with pytest.raises(DocumentTimeout, match="OCR exceeded"):
        ocr.ocr_image(page, deadline=started + 0.2)
