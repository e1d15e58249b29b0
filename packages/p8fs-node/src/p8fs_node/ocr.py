"""Optical character recognition for the PDF and image providers: two engines, one entry point.

Engines (setting ``P8FS_OCR_ENGINE``, per-call option ``ocr_engine``):

``rapidocr``
    ``rapidocr-onnxruntime`` (Apache-2.0): PP-OCRv4 detection and recognition models that ship
    *inside* the wheel, run by onnxruntime. ``pip install p8fs-node[ocr]`` is all it needs, so it
    is what a machine with nothing but Python gets. It never downloads anything (the models are
    package data; ``tests/node/test_ocr.py`` runs it in a network namespace with no route out).
    Its recognition model was trained mostly on Chinese and sometimes drops the space between two
    English words (``"Loremipsum"``); it reads English and Chinese only.
``tesseract``
    The ``tesseract`` program (Debian: ``apt-get install tesseract-ocr tesseract-ocr-eng``),
    driven through ``pytesseract``; ``P8FS_TESSERACT_CMD`` names the program when it is not on
    ``PATH``. More accurate on Latin text, faster, lighter, and any language with its data
    package, but it is not installable with pip.
``auto`` (the default)
    tesseract when its program is installed (or ``P8FS_TESSERACT_CMD`` names one), rapidocr
    otherwise. Someone who installed tesseract did so on purpose, and on the corpus's scanned
    pages it is both more accurate and several times faster (``benchmarks/ocr_engines.py``);
    rapidocr is what makes OCR work from pip alone.

Callers ask :func:`ocr_unavailable_reason` first and, when OCR cannot run, report *why* (the
reason names the setting to change) instead of silently returning nothing. Both engines run
locally. Heavy imports (``rapidocr_onnxruntime``, ``onnxruntime``, ``pytesseract``) happen only
inside the engine that needs them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from p8fs.errors import ConfigurationError, DocumentTimeout, ProviderError

if TYPE_CHECKING:
    from PIL.Image import Image

EngineName = Literal["rapidocr", "tesseract"]
#: The engines, in the order ``auto`` does *not* prefer them (see :func:`select_engine`).
ENGINES: tuple[EngineName, ...] = get_args(EngineName)
#: The setting that chooses the engine (``auto``, ``rapidocr`` or ``tesseract``).
ENGINE_SETTING = "P8FS_OCR_ENGINE"
_CHOICES = "auto, rapidocr or tesseract"
#: Tesseract language(s) used unless the caller passes ``ocr_languages`` (``"eng+deu"`` form).
DEFAULT_LANGUAGES = "eng"
#: Where to find the program; override with ``P8FS_TESSERACT_CMD`` when it is not on ``PATH``.
TESSERACT_CMD_ENV = "P8FS_TESSERACT_CMD"
#: Debian packages that provide the program and English data (what CI installs).
TESSERACT_DEBIAN_PACKAGES = ("tesseract-ocr", "tesseract-ocr-eng")
#: Tesseract language codes rapidocr's bundled PP-OCRv4 models read (Latin script and Chinese).
RAPIDOCR_LANGUAGES = frozenset({"eng", "chi_sim", "chi_tra"})
#: Threads one OCR call may use, for either engine: ``OMP_THREAD_LIMIT`` (tesseract's own knob),
#: 1 unless set. Workers run several documents side by side; on the 2-core machines we measured
#: a tesseract page at 2.4 s single-threaded against 12 s with OpenMP contending for the cores.
THREADS_ENV = "OMP_THREAD_LIMIT"


def tesseract_command() -> str:
    """The tesseract executable to run (``P8FS_TESSERACT_CMD`` or ``tesseract`` on ``PATH``)."""
    return os.environ.get(TESSERACT_CMD_ENV) or "tesseract"


def configured_engine(options: Mapping[str, Any] | None = None) -> str:
    """The engine asked for: option ``ocr_engine``, else the setting ``P8FS_OCR_ENGINE``."""
    requested = (options or {}).get("ocr_engine")
    if not requested:
        from p8fs.settings import get_settings

        requested = get_settings().ocr_engine
    name = str(requested).strip().lower()
    if name != "auto" and name not in ENGINES:
        raise ConfigurationError(
            f"unknown OCR engine {requested!r} (option ocr_engine or {ENGINE_SETTING}): "
            f"use {_CHOICES}"
        )
    return name


@lru_cache(maxsize=8)
def select_engine(requested: str = "auto") -> tuple[EngineName | None, str | None]:
    """The engine that runs for ``requested`` and why none can, as ``(engine, reason)``.

    ``auto`` takes tesseract when its program is there (or ``P8FS_TESSERACT_CMD`` names one, even
    a wrong one: an explicit program is a choice, and a typo in it must be reported, not hidden
    behind the other engine), rapidocr otherwise. Checked once per process and request:
    installing an engine while a worker runs needs a restart anyway.
    """
    if requested in ENGINES:
        engine: EngineName = requested  # type: ignore[assignment]
        return engine, _unavailable(engine)
    if requested != "auto":
        return None, f"unknown OCR engine {requested!r}: set {ENGINE_SETTING} to {_CHOICES}"
    if os.environ.get(TESSERACT_CMD_ENV) or shutil.which(tesseract_command()):
        return "tesseract", _unavailable("tesseract")
    reason = _unavailable("rapidocr")
    if reason is None:
        return "rapidocr", None
    return None, (
        f"no OCR engine can run: {reason}; or install the tesseract program (Debian: apt-get "
        f"install {' '.join(TESSERACT_DEBIAN_PACKAGES)})"
    )


def ocr_unavailable_reason(engine: str = "auto") -> str | None:
    """Why OCR with ``engine`` (``auto`` by default) cannot run here, or ``None`` when it can."""
    return select_engine(engine)[1]


ocr_unavailable_reason.cache_clear = select_engine.cache_clear  # type: ignore[attr-defined]


def ocr_available(engine: str = "auto") -> bool:
    """Whether :func:`ocr_image` can run here with ``engine``."""
    return ocr_unavailable_reason(engine) is None


def _unavailable(engine: EngineName) -> str | None:
    if engine == "tesseract":
        missing = [m for m in ("pytesseract", "PIL") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed: install p8fs-node[ocr]"
        cmd = tesseract_command()
        if shutil.which(cmd) is None:
            return (
                f"the tesseract program ({cmd!r}) was not found: install it (Debian: apt-get "
                f"install {' '.join(TESSERACT_DEBIAN_PACKAGES)}), set {TESSERACT_CMD_ENV}, or "
                f"set {ENGINE_SETTING}=rapidocr"
            )
        return None
    missing = [
        m
        for m in ("rapidocr_onnxruntime", "onnxruntime", "PIL")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        return (
            f"{' and '.join(missing)} not installed: install p8fs-node[ocr] (rapidocr-onnxruntime "
            f"is the OCR engine that needs nothing but pip), or set {ENGINE_SETTING}=tesseract"
        )
    absent = [str(p) for p in rapidocr_model_paths() if not p.is_file()]
    if absent:
        return (
            f"rapidocr-onnxruntime's models are missing ({', '.join(absent)}): the package is "
            f"damaged; reinstall p8fs-node[ocr] (the models ship inside the wheel, nothing is "
            f"downloaded) or set {ENGINE_SETTING}=tesseract"
        )
    return None


def rapidocr_model_paths() -> list[Path]:
    """The ONNX models rapidocr loads (detection, recognition), inside its installed package.

    Read from the package's own ``config.yaml`` paths without importing it (an import loads
    OpenCV and onnxruntime, ~0.5 s, which an availability check must not cost).
    """
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return [root / "models" / name for name in _RAPIDOCR_MODELS]


#: Model files of rapidocr-onnxruntime 1.4 (its ``config.yaml``); the 180-degree classifier is
#: not used (see :class:`_RapidOcr`), so its file is not required.
_RAPIDOCR_MODELS = ("ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx")


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
    engine: str = "auto",
) -> str:
    """Recognise the text in ``image``; ``""`` when there is none.

    ``deadline`` is a ``time.monotonic()`` value: OCR stops when it passes (tesseract is killed;
    rapidocr stops between batches of lines), so one pathological image cannot hold a worker
    long past the document's time limit. ``engine`` is ``auto``, ``rapidocr`` or ``tesseract``;
    call :func:`ocr_unavailable_reason` first: an engine that cannot run raises
    :class:`~p8fs.errors.ConfigurationError` here.
    """
    chosen, reason = select_engine(engine)
    if chosen is None or reason is not None:
        raise ConfigurationError(f"OCR cannot run: {reason}")
    _seconds_left(deadline, _TOO_LATE)
    prepared = _prepare(image)
    if chosen == "rapidocr":
        return _rapidocr().recognise(prepared, languages, deadline)
    return _tesseract(prepared, languages, deadline)


def used_engine(engine: str = "auto") -> str | None:
    """The engine :func:`ocr_image` runs for ``engine`` (recorded in document metadata)."""
    return select_engine(engine)[0]


#: Why OCR stopped, before it started and while it ran.
_TOO_LATE = "the document's time limit (P8FS_DOCUMENT_TIMEOUT) passed before OCR"
_TIMED_OUT = "OCR exceeded the document's time limit (P8FS_DOCUMENT_TIMEOUT)"


def _seconds_left(deadline: float | None, message: str) -> float:
    """Seconds left until ``deadline`` (0 when none); :class:`DocumentTimeout` if it passed."""
    if deadline is None:
        return 0.0
    left = deadline - time.monotonic()
    if left <= 0:
        raise DocumentTimeout(message)
    return left


def _threads() -> int:
    try:
        return max(1, int(os.environ.get(THREADS_ENV) or 1))
    except ValueError:
        return 1


# -- tesseract -------------------------------------------------------------------------------


def _tesseract(image: Image, languages: str, deadline: float | None) -> str:
    """Tesseract on ``image``, killed at ``deadline``; OpenMP limited to :func:`_threads`."""
    import pytesseract

    os.environ.setdefault(THREADS_ENV, "1")
    pytesseract.pytesseract.tesseract_cmd = tesseract_command()
    timeout = _seconds_left(deadline, _TOO_LATE)
    try:
        text = pytesseract.image_to_string(image, lang=languages, timeout=timeout)
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
            raise DocumentTimeout(_TIMED_OUT) from exc
        raise ProviderError(f"tesseract failed: {exc}") from exc
    # Tesseract ends its output with blank lines and a form feed; that is not content.
    return str(text).strip()


# -- rapidocr --------------------------------------------------------------------------------

_RAPIDOCR_LOCK = threading.Lock()


def _rapidocr() -> _RapidOcr:
    """The process's rapidocr engine (its ONNX sessions load once, ~0.5 s and ~100 MB)."""
    global _RAPIDOCR_ENGINE
    with _RAPIDOCR_LOCK:
        if _RAPIDOCR_ENGINE is None:
            _RAPIDOCR_ENGINE = _RapidOcr()
        return _RAPIDOCR_ENGINE


_RAPIDOCR_ENGINE: _RapidOcr | None = None


class _RapidOcr:
    """rapidocr-onnxruntime with the settings that read the corpus's scans correctly.

    - Detection runs on the page scaled to at most :data:`DET_SIDE` pixels a side (bounded time
      and memory however large the render), while each line is *recognised* from the
      full-resolution image (``max_side_len`` raised): recognition from a downscaled page lost
      the spaces between English words far more often.
    - The 180-degree line classifier is off: on the corpus's upright Lorem ipsum scan it turned
      7 of 33 correct lines upside down into garbage. Scans are upright far more often than not.
    - Spaces the model half-saw are kept (see :class:`_SpacedCtcDecoder`).
    - Lines are recognised in batches with the deadline checked between them (onnxruntime
      cannot be interrupted inside a call).
    - Boxes on the same visual line (table cells) are joined with a space, lines with a newline,
      and the text is NFKC-normalised (the model emits full-width CJK punctuation such as
      ``（`` in Latin text).
    """

    #: Longest side, in pixels, the detection model sees.
    DET_SIDE = 2000
    #: Longest side of the image lines are cut from; larger images are scaled down to it.
    MAX_SIDE = 4000
    #: Lines recognised per onnxruntime call (rapidocr's own batch size).
    BATCH = 6

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        threads = _threads()
        self.engine = RapidOCR(
            use_cls=False,
            max_side_len=self.MAX_SIDE,
            det_limit_type="max",
            det_limit_side_len=self.DET_SIDE,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )
        recognizer = self.engine.text_rec
        recognizer.postprocess_op = _SpacedCtcDecoder(recognizer.postprocess_op.character)

    def recognise(self, image: Image, languages: str, deadline: float | None) -> str:
        unsupported = sorted(set(languages.split("+")) - RAPIDOCR_LANGUAGES)
        if unsupported:
            raise ConfigurationError(
                f"rapidocr reads English and Chinese only, not {'+'.join(unsupported)}: set "
                f"{ENGINE_SETTING}=tesseract (with tesseract-ocr-<lang> installed) or pass "
                "other ocr_languages"
            )
        engine = self.engine
        img = engine.load_img(image)  # PIL (L or RGB) -> BGR array
        img, ratio_h, ratio_w = engine.preprocess(img)
        if min(img.shape[:2]) < 2:
            return ""
        img, _ = engine.maybe_add_letterbox(
            img, {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
        )
        boxes, _ = engine.auto_text_det(img)
        if boxes is None or len(boxes) == 0:
            return ""
        crops = engine.get_crop_img_list(img, boxes)
        results: list[tuple[str, float]] = []
        for start in range(0, len(crops), self.BATCH):
            _seconds_left(deadline, _TIMED_OUT)
            batch, _ = engine.text_rec(crops[start : start + self.BATCH])
            results.extend((str(text), float(score)) for text, score, *_ in batch)
        lines = [
            (box, text.strip())
            for box, (text, score) in zip(boxes, results, strict=True)
            if score >= engine.text_score and text.strip()
        ]
        return unicodedata.normalize("NFKC", _join_lines(lines))


class _SpacedCtcDecoder:
    """CTC decoding that keeps the spaces rapidocr's greedy decoding drops between words.

    The recognition model was trained mostly on Chinese, which has no spaces: between two
    English words the space class often gets real probability without winning a column, and
    greedy decoding returns ``"Loremipsumdolor"``. Here a space is inserted between two
    characters when the space class reaches :data:`SPACE_PROBABILITY` in a column between them
    (never next to ``/``: ``N/A``, ``and/or``). On the corpus's scans this took the words of
    four letters or more found on a Vicksburg page from 95.8% to 96.9% and left 0 of the Lorem
    ipsum page's 10 run-together words, with no word split in two (measured on saved model
    outputs, thresholds 0.02 to 0.3; 0.1 was the highest that fixed every run-together word).
    """

    SPACE_PROBABILITY = 0.1

    def __init__(self, character: list[str]) -> None:
        self.character = character
        # rapidocr appends the space class after the model's own dictionary: the last " ".
        self.space = len(character) - 1 - character[::-1].index(" ")

    def __call__(self, preds: Any, return_word_box: bool = False, **_: Any) -> list[Any]:
        """Decode a batch of ``(time, class)`` probability matrices into ``(text, score)``."""
        results = []
        for probabilities in preds:
            best = probabilities.argmax(axis=1)
            chars: list[str] = []
            scores: list[float] = []
            last = -1  # column of the last character kept
            for column, index in enumerate(best.tolist()):
                if index == 0 or (column and best[column - 1] == index):
                    continue  # blank, or the same character continuing
                char = self.character[index]
                if (
                    last >= 0
                    and char != " "
                    and chars[-1] != " "
                    and "/" not in (char, chars[-1])
                    and column - last > 1
                    and probabilities[last + 1 : column, self.space].max() >= self.SPACE_PROBABILITY
                ):
                    chars.append(" ")
                chars.append(char)
                scores.append(float(probabilities[column, index]))
                last = column
            results.append(("".join(chars), sum(scores) / len(scores) if scores else 0.0))
        return results


def _join_lines(boxes: list[tuple[Any, str]]) -> str:
    """Text of detected boxes in reading order: a visual line's boxes left to right, joined by
    a space; lines top to bottom, joined by a newline.

    Two boxes share a line when their vertical extents overlap by more than half the smaller
    height (a table row's cells do; the next line of a paragraph does not).
    """
    spans = []
    for box, text in boxes:
        ys = [float(point[1]) for point in box]
        xs = [float(point[0]) for point in box]
        spans.append((min(ys), max(ys), min(xs), text))
    spans.sort(key=lambda s: (s[0] + s[1]) / 2)
    lines: list[list[tuple[float, float, float, str]]] = []
    for span in spans:
        if lines:
            top = min(s[0] for s in lines[-1])
            bottom = max(s[1] for s in lines[-1])
            overlap = min(bottom, span[1]) - max(top, span[0])
            if overlap > 0.5 * min(bottom - top, span[1] - span[0]):
                lines[-1].append(span)
                continue
        lines.append([span])
    return "\n".join(" ".join(s[3] for s in sorted(line, key=lambda s: s[2])) for line in lines)


def _prepare(image: Image) -> Image:
    """An 8-bit grey or RGB copy both engines read reliably, transparency flattened onto white.

    Text drawn on a transparent background would otherwise become black on black.
    """
    from PIL import Image as PILImage

    if image.mode in ("L", "RGB"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith(("I", "F")):
        return image.convert("L")
    return image.convert("RGB")
