"""Optical character recognition with tesseract, shared by the PDF and image providers.

OCR needs two things that are installed separately: the Python side (``pytesseract`` and
``pillow``, the ``p8fs-node[ocr]`` extra) and the ``tesseract`` program with its language data
(Debian: ``apt-get install tesseract-ocr tesseract-ocr-eng``). Callers ask
:func:`ocr_unavailable_reason` first and, when OCR cannot run, report *why* instead of silently
returning nothing. Tesseract runs locally and never touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from p8fs.errors import ConfigurationError, DocumentTimeout, ProviderError

if TYPE_CHECKING:
    from PIL.Image import Image

#: Tesseract language(s) used unless the caller passes ``ocr_languages`` (``"eng+deu"`` form).
DEFAULT_LANGUAGES = "eng"
#: Where to find the program; override with ``P8FS_TESSERACT_CMD`` when it is not on ``PATH``.
TESSERACT_CMD_ENV = "P8FS_TESSERACT_CMD"
#: Debian packages that provide the program and English data (what CI installs).
TESSERACT_DEBIAN_PACKAGES = ("tesseract-ocr", "tesseract-ocr-eng")


def tesseract_command() -> str:
    """The tesseract executable to run (``P8FS_TESSERACT_CMD`` or ``tesseract`` on ``PATH``)."""
    return os.environ.get(TESSERACT_CMD_ENV) or "tesseract"


@lru_cache(maxsize=1)
def ocr_unavailable_reason() -> str | None:
    """Why OCR cannot run in this process, or ``None`` when it can.

    Checked once per process: installing tesseract while a worker runs needs a restart anyway.
    """
    missing = [mod for mod in ("pytesseract", "PIL") if importlib.util.find_spec(mod) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: install p8fs-node[ocr]"
    cmd = tesseract_command()
    if shutil.which(cmd) is None:
        return (
            f"the tesseract program ({cmd!r}) was not found: install it (Debian: apt-get install "
            f"{' '.join(TESSERACT_DEBIAN_PACKAGES)}) or set {TESSERACT_CMD_ENV}"
        )
    return None


def ocr_available() -> bool:
    """Whether :func:`ocr_image` can run here."""
    return ocr_unavailable_reason() is None


def option_flag(value: Any, *, default: bool) -> bool:
    """An on/off option that may arrive as a bool or as text (event metadata, a CLI flag).

    ``"false"`` must mean off: ``bool("false")`` would switch OCR (or layout) on.
    """
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def ocr_requested(options: Mapping[str, Any]) -> bool:
    """Whether the caller wants OCR (option ``ocr``, on unless switched off)."""
    return option_flag(options.get("ocr"), default=True)


def ocr_image(
    image: Image,
    *,
    languages: str = DEFAULT_LANGUAGES,
    deadline: float | None = None,
) -> str:
    """Recognise the text in ``image`` with tesseract; ``""`` when it finds none.

    ``deadline`` is a ``time.monotonic()`` value: tesseract is killed when it passes, so one
    pathological image cannot hold a worker past the document's time limit.

    Tesseract's OpenMP threads are limited to one (unless ``OMP_THREAD_LIMIT`` is already set):
    workers run several documents side by side, and on the 2-core machines we measured a page at
    2.4 s single-threaded against 12 s with OpenMP contending for the cores.
    """
    import pytesseract

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    pytesseract.pytesseract.tesseract_cmd = tesseract_command()
    timeout = 0.0
    if deadline is not None:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise DocumentTimeout(
                "the document's time limit (P8FS_DOCUMENT_TIMEOUT) passed before OCR"
            )
    prepared = _prepare(image)
    try:
        text = pytesseract.image_to_string(prepared, lang=languages, timeout=timeout)
    except pytesseract.TesseractError as exc:  # a RuntimeError too: catch it first
        message = str(exc.message or exc)
        if "Failed loading language" in message or "Error opening data file" in message:
            raise ConfigurationError(
                f"tesseract has no data for language(s) {languages!r}: install the matching "
                "tesseract-ocr-<lang> package or pass other ocr_languages"
            ) from exc
        raise ProviderError(f"tesseract failed: {message.strip()}") from exc
    except RuntimeError as exc:  # pytesseract signals its timeout this way
        if "timeout" in str(exc).lower():
            raise DocumentTimeout(
                "OCR exceeded the document's time limit (P8FS_DOCUMENT_TIMEOUT)"
            ) from exc
        raise ProviderError(f"tesseract failed: {exc}") from exc
    # Tesseract ends its output with blank lines and a form feed; that is not content.
    return str(text).strip()


def _prepare(image: Image) -> Image:
    """An 8-bit grey or RGB copy tesseract reads reliably, transparency flattened onto white.

    Text drawn on a transparent background would otherwise become black on black.
    """
    from PIL import Image as PILImage

    if image.mode in ("L", "RGB", "1"):
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith(("I", "F")):
        return image.convert("L")
    return image.convert("RGB")
