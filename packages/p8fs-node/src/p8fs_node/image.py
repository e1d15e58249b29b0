"""Images: their facts from the file header, and their text when an OCR engine can run.

Pillow's ``Image.open`` reads only the header, so format, size and mode cost nothing however
large the picture is; pixels are decoded only for OCR, and only after the pixel count passed the
decompression-bomb limit (a 100 kB PNG can declare gigapixels). Without OCR an image yields no
sections at all: placeholder text ("[image]") would be stored and searched as if it were content.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from p8fs.errors import CorruptDocument, EmptyDocument, LimitExceeded
from p8fs.limits import extraction_limit
from p8fs.providers import ContentProvider, ExtractContext, Section, Source, source_name
from p8fs_node.ocr import (
    DEFAULT_LANGUAGES,
    configured_engine,
    ocr_image,
    ocr_requested,
    ocr_unavailable_reason,
    used_engine,
)

if TYPE_CHECKING:
    from PIL.Image import Image

#: Frames (TIFF pages, GIF frames) OCR'd at most; option ``max_frames``. Later frames of an
#: animation rarely add text, and a multi-page fax TIFF beyond this is better sent as a PDF.
DEFAULT_MAX_OCR_FRAMES = 100


class ImageProvider(ContentProvider):
    """PNG, JPEG, GIF, TIFF, BMP and WebP: header metadata, plus OCR text per frame.

    Options: ``ocr`` (``False`` turns OCR off), ``ocr_engine`` (``auto``, ``rapidocr`` or
    ``tesseract``; setting ``P8FS_OCR_ENGINE``), ``ocr_languages`` (default ``"eng"``),
    ``max_image_pixels`` (default from :mod:`p8fs.limits`, Pillow's ~89 megapixels),
    ``max_frames``. Document facts in ``context.metadata``: ``format``, ``width``, ``height``,
    ``mode``, ``frames``, ``ocr_frames`` (1-based frames whose text came from OCR), ``ocr_engine``
    (the engine that ran).
    """

    name: ClassVar[str] = "image"
    mime_types: ClassVar[tuple[str, ...]] = (
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/tiff",
        "image/bmp",
        "image/x-ms-bmp",
        "image/webp",
    )
    extensions: ClassVar[tuple[str, ...]] = (
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".gif",
        ".tif",
        ".tiff",
        ".bmp",
        ".webp",
    )
    priority: ClassVar[int] = 10
    requires: ClassVar[tuple[str, ...]] = ("PIL",)
    extra: ClassVar[str | None] = "p8fs-node[ocr]"

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        """Record the image's facts; yield one section per frame with text, if OCR can run."""
        self.ensure_available()
        from PIL import Image as PILImage
        from PIL import ImageOps, UnidentifiedImageError

        name = source_name(source)
        options = context.options
        # From p8fs.limits rather than Pillow's module global, which _allow_in_pillow may
        # have raised for another call.
        limit = int(extraction_limit(options, "max_image_pixels"))
        _allow_in_pillow(limit)
        try:
            image = PILImage.open(source)
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
            raise LimitExceeded(_bomb_message(name, None, limit), limit=limit) from exc
        except UnidentifiedImageError as exc:
            if _is_empty(source):
                raise EmptyDocument(f"{name} is empty (0 bytes)") from exc
            raise CorruptDocument(f"{name} is not an image Pillow can read: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptDocument(f"{name} is a damaged image: {exc}") from exc

        with image:
            width, height = image.size
            frames = int(getattr(image, "n_frames", 1) or 1)
            facts: dict[str, Any] = {
                "format": image.format,
                "width": width,
                "height": height,
                "mode": image.mode,
                "frames": frames,
            }
            context.metadata.update(facts)
            if limit and width * height > limit:
                raise LimitExceeded(_bomb_message(name, (width, height), limit), limit=limit)

            # Every way of ending without text says why: a picture without text is not an empty
            # file (the pipeline refuses documents with no text and no reason).
            if not ocr_requested(options):
                context.warn("image text was not recognised: OCR was turned off (option ocr=False)")
                return
            engine = configured_engine(options)
            unavailable = ocr_unavailable_reason(engine)
            if unavailable:
                context.warn(f"image text was not recognised: {unavailable}")
                return
            languages = str(options.get("ocr_languages") or DEFAULT_LANGUAGES)
            max_frames = int(options.get("max_frames") or DEFAULT_MAX_OCR_FRAMES)
            if frames > max_frames:
                context.warn(f"only the first {max_frames} of {frames} frames were OCR'd")
            ocr_frames: list[int] = []
            context.metadata["ocr_frames"] = ocr_frames
            context.metadata["ocr_engine"] = used_engine(engine)
            for index in range(min(frames, max_frames)):
                context.check_deadline()
                frame = _decoded_frame(image, index, name, ImageOps)
                text = ocr_image(
                    frame, languages=languages, deadline=context.deadline, engine=engine
                )
                if text:
                    ocr_frames.append(index + 1)
                    metadata: dict[str, Any] = {"kind": "image", "ocr": True}
                    if frames > 1:
                        metadata["frame"] = index + 1
                    yield Section(text, metadata)
            if not ocr_frames:
                context.warn(f"no text was recognised in the image ({used_engine(engine)} OCR)")


#: Serialises raising Pillow's process-wide limit (see :func:`_allow_in_pillow`).
_PILLOW_LIMIT_LOCK = threading.Lock()


def _allow_in_pillow(limit: int) -> None:
    """Make sure Pillow's own guard does not refuse what ``limit`` allows.

    ``Image.open`` raises ``DecompressionBombError`` past twice the module-wide
    ``Image.MAX_IMAGE_PIXELS``, whatever this call's limit says; a caller who raised
    ``max_image_pixels`` above that would still be refused, by a message telling them to raise
    it. Pillow has no per-call limit, so its global is raised to the largest limit asked for
    (never lowered); the limit of *this* call is enforced by the provider itself, on the header's
    size, before any pixel is decoded.
    """
    from PIL import Image as PILImage

    with _PILLOW_LIMIT_LOCK:
        current = PILImage.MAX_IMAGE_PIXELS
        if current is not None and limit > current:
            PILImage.MAX_IMAGE_PIXELS = limit


def _decoded_frame(image: Image, index: int, name: str, image_ops: Any) -> Image:
    """Frame ``index`` decoded and turned upright by its EXIF orientation (phones store it so)."""
    try:
        if index:
            image.seek(index)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptDocument(f"{name}: frame {index + 1} cannot be decoded: {exc}") from exc
    upright: Image = image_ops.exif_transpose(image) or image
    return upright


def _bomb_message(name: str, size: tuple[int, int] | None, limit: int) -> str:
    declared = f" declares {size[0]} x {size[1]} pixels," if size else " declares"
    return (
        f"{name}{declared} more than the limit of {limit} pixels (a decompression bomb, or a "
        "legitimately huge image: raise the option max_image_pixels or the setting "
        "P8FS_MAX_IMAGE_PIXELS to accept it)"
    )


def _is_empty(source: Source) -> bool:
    import os

    if isinstance(source, str | os.PathLike):
        return os.path.getsize(source) == 0
    try:
        position = source.tell()
        size = source.seek(0, os.SEEK_END)
        source.seek(position)
        return size == 0
    except (AttributeError, OSError, ValueError):
        return False
