"""OCR engines: which one runs, why one cannot, and each engine on a real scanned paragraph.

rapidocr-onnxruntime ships its models in the wheel, so its tests run wherever the ``[ocr]`` extra
is installed; the tesseract tests need the program (skipped locally without it, failures in CI,
where ``P8FS_TEST_REQUIRE_SERVERS=1`` and ``.ci/run`` installs it). Every test here also runs
under the loopback-only network guard of ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p8fs.errors import ConfigurationError, DocumentTimeout
from p8fs.settings import get_settings
from p8fs_node import ocr
from tests.fixtures.servers import REPO_ROOT, corpus_path, server_missing

LOREM = "Lorem ipsum dolor sit amet"


def require(engine: str) -> None:
    reason = ocr.ocr_unavailable_reason(engine)
    if reason:
        server_missing(f"{engine} OCR ({reason})")


def require_tesseract() -> None:
    require("tesseract")


def blank_page() -> Any:
    from PIL import Image

    return Image.new("L", (400, 200), 255)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(autouse=True)
def fresh_selection() -> Iterator[None]:
    """Engine selection is cached per process; tests that change PATH or settings start and
    end with a clean cache so they neither see nor leave a stale choice."""
    ocr.select_engine.cache_clear()
    get_settings.cache_clear()
    yield
    ocr.select_engine.cache_clear()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def paragraph() -> Any:
    """The first paragraph of the corpus's flattened (image-only) Lorem ipsum page, at the
    300 dpi the PDF provider renders scans at: whole pages take seconds per engine."""
    import pypdfium2

    doc = pypdfium2.PdfDocument(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    page = doc[0].render(scale=300 / 72, grayscale=True).to_pil().copy()
    doc.close()
    return page.crop((0, 0, page.width, page.height * 2 // 7))


def no_tesseract_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH with everything but tesseract (as on a machine where it was never installed)."""
    folders = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and not (Path(folder) / "tesseract").exists():
            folders.append(folder)
    monkeypatch.setenv("PATH", os.pathsep.join(folders))
    monkeypatch.delenv(ocr.TESSERACT_CMD_ENV, raising=False)
    assert shutil.which("tesseract") is None


# -- which engine ------------------------------------------------------------------------------


def test_auto_uses_rapidocr_without_the_tesseract_program(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require("rapidocr")
    no_tesseract_on_path(monkeypatch, tmp_path)
    assert ocr.select_engine("auto") == ("rapidocr", None)
    assert ocr.ocr_available()


def test_auto_prefers_an_installed_tesseract(monkeypatch: pytest.MonkeyPatch) -> None:
    require_tesseract()
    assert ocr.select_engine("auto") == ("tesseract", None)


def test_an_explicit_tesseract_command_is_a_choice_not_a_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong ``P8FS_TESSERACT_CMD`` is reported, not silently replaced by rapidocr."""
    monkeypatch.setenv(ocr.TESSERACT_CMD_ENV, "no-such-tesseract")
    engine, reason = ocr.select_engine("auto")
    assert engine == "tesseract"
    assert reason is not None
    assert "no-such-tesseract" in reason
    assert "tesseract-ocr tesseract-ocr-eng" in reason
    assert ocr.TESSERACT_CMD_ENV in reason and ocr.ENGINE_SETTING in reason
    assert not ocr.ocr_available()


def test_the_setting_and_the_option_choose_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ocr.configured_engine({}) == "auto"
    monkeypatch.setenv("P8FS_OCR_ENGINE", "tesseract")
    get_settings.cache_clear()
    assert ocr.configured_engine({}) == "tesseract"
    assert ocr.configured_engine({"ocr_engine": "RapidOCR"}) == "rapidocr"
    with pytest.raises(ConfigurationError, match="ocr_engine or P8FS_OCR_ENGINE"):
        ocr.configured_engine({"ocr_engine": "easyocr"})


def test_missing_rapidocr_models_name_the_setting(tmp_path: Path) -> None:
    """A damaged rapidocr install (its package without its model files) is reported with the
    setting that switches engines, and nothing tries to fetch the models. A fresh interpreter
    sees a copy of the package without ``models/`` ahead of the installed one."""
    require("rapidocr")
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None and spec.submodule_search_locations
    installed = Path(next(iter(spec.submodule_search_locations)))
    damaged = tmp_path / "site" / "rapidocr_onnxruntime"
    shutil.copytree(installed, damaged, ignore=shutil.ignore_patterns("models", "__pycache__"))
    child = (
        "from p8fs_node import ocr; "
        "print(ocr.select_engine('rapidocr')[1]); print(ocr.select_engine('auto')[0])"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO_ROOT)]))
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if p and not (Path(p) / "tesseract").exists()
    )
    env.pop(ocr.TESSERACT_CMD_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    reason, auto = result.stdout.strip().splitlines()
    assert "rapidocr-onnxruntime's models are missing" in reason
    assert str(damaged / "models") in reason
    assert "P8FS_OCR_ENGINE=tesseract" in reason
    assert auto == "None"  # auto has no engine left: nothing runs, and the reason says why


def test_an_engine_that_cannot_run_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ocr.TESSERACT_CMD_ENV, "no-such-tesseract")
    with pytest.raises(ConfigurationError, match="no-such-tesseract"):
        ocr.ocr_image(blank_page(), engine="tesseract")


# -- rapidocr ----------------------------------------------------------------------------------


def test_rapidocr_reads_a_scanned_paragraph(paragraph: Any) -> None:
    require("rapidocr")
    text = ocr.ocr_image(paragraph, engine="rapidocr")
    assert LOREM in squash(text)
    assert "sollicitudin" in text and "dignissim" in text
    assert len(text.splitlines()) >= 6  # one line of text per line of the scan


def test_rapidocr_keeps_the_spaces_its_greedy_decoding_drops() -> None:
    """One line of the Lorem ipsum scan at its own 200 dpi: rapidocr's own decoding reads
    ``facilisisvarius.Curabitur aliquet exrhoncus``; the model's half-seen spaces are kept."""
    require("rapidocr")
    import pypdfium2

    doc = pypdfium2.PdfDocument(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    page = doc[0].render(scale=200 / 72, grayscale=True).to_pil().copy()
    doc.close()
    line = page.crop((0, 1385, page.width, 1450))
    text = ocr.ocr_image(line, engine="rapidocr")
    assert "facilisis varius. Curabitur aliquet ex rhoncus lectus" in text


def test_rapidocr_joins_a_table_row_into_one_line() -> None:
    """Cells of one row are separate boxes to the detector; stored text keeps the row."""
    require("rapidocr")
    import pypdfium2

    doc = pypdfium2.PdfDocument(corpus_path("pdf/unst_single_table.pdf"))
    page = doc[0].render(scale=300 / 72, grayscale=True).to_pil().copy()
    doc.close()
    # The table's "Base 128" and "Base 256" rows (located once by hand on this page).
    rows = page.crop((0, int(page.height * 0.35), page.width, int(page.height * 0.395)))
    lines = ocr.ocr_image(rows, engine="rapidocr").splitlines()
    assert any("Base 128" in line and "64,058" in line and "800.73" in line for line in lines), (
        lines
    )


def test_rapidocr_blank_image_gives_no_text() -> None:
    require("rapidocr")
    assert ocr.ocr_image(blank_page(), engine="rapidocr") == ""


def test_rapidocr_refuses_languages_it_cannot_read() -> None:
    require("rapidocr")
    with pytest.raises(ConfigurationError, match="P8FS_OCR_ENGINE=tesseract"):
        ocr.ocr_image(blank_page(), languages="eng+deu", engine="rapidocr")


def test_rapidocr_stops_at_the_deadline(paragraph: Any) -> None:
    """onnxruntime cannot be interrupted inside a call; OCR stops between batches of lines."""
    require("rapidocr")
    ocr.ocr_image(blank_page(), engine="rapidocr")  # load the models outside the clock
    with pytest.raises(DocumentTimeout, match="OCR exceeded"):
        ocr.ocr_image(paragraph, engine="rapidocr", deadline=time.monotonic() + 0.05)
    with pytest.raises(DocumentTimeout, match="passed before OCR"):
        ocr.ocr_image(paragraph, engine="rapidocr", deadline=time.monotonic() - 1)


# Runs in a child process inside a network namespace: OCR with rapidocr, recording every socket
# event CPython raises, and prints a JSON report.
_OFFLINE_CHILD = r"""
import json, sys
attempts = []
def audit(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
        attempts.append(f"{event} {args!r}")
sys.addaudithook(audit)
from PIL import Image
from p8fs_node import ocr
image = Image.open(sys.argv[1])
text = ocr.ocr_image(image, engine="rapidocr")
print(json.dumps({"attempts": attempts, "text": text}))
"""


def test_rapidocr_never_touches_the_network(paragraph: Any, tmp_path: Path) -> None:
    """A fresh interpreter in a network namespace with no interface up (so onnxruntime and
    OpenCV could not get out either) loads the models and reads the paragraph with zero socket
    connections or lookups."""
    require("rapidocr")
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("unprivileged network namespaces (unshare -rn) are not permitted here")
    image = tmp_path / "paragraph.png"
    paragraph.crop((0, 0, paragraph.width, paragraph.height // 2)).save(image)  # two lines
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", _OFFLINE_CHILD, str(image)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert "Lorem ipsum" in squash(report["text"])


# -- tesseract ---------------------------------------------------------------------------------


def test_tesseract_reads_a_scanned_paragraph(paragraph: Any) -> None:
    require_tesseract()
    assert LOREM in squash(ocr.ocr_image(paragraph, engine="tesseract"))


def test_unknown_language_is_a_configuration_error() -> None:
    require_tesseract()
    with pytest.raises(ConfigurationError, match="no data for language"):
        ocr.ocr_image(blank_page(), languages="xyz", engine="tesseract")


def test_tesseract_blank_image_gives_no_text() -> None:
    require_tesseract()
    assert ocr.ocr_image(blank_page(), engine="tesseract") == ""


def test_passed_deadline_stops_before_running() -> None:
    require_tesseract()
    with pytest.raises(DocumentTimeout, match="P8FS_DOCUMENT_TIMEOUT"):
        ocr.ocr_image(blank_page(), deadline=time.monotonic() - 1, engine="tesseract")


def test_tesseract_is_stopped_at_the_deadline() -> None:
    """A full scanned page takes tesseract seconds; a deadline 0.2 s away must kill it."""
    require_tesseract()
    import pypdfium2

    doc = pypdfium2.PdfDocument(corpus_path("pdf/unst_loremipsum-flat.pdf"))
    page = doc[0].render(scale=300 / 72, grayscale=True).to_pil().copy()
    doc.close()
    started = time.monotonic()
    with pytest.raises(DocumentTimeout, match="OCR exceeded"):
        ocr.ocr_image(page, deadline=started + 0.2, engine="tesseract")
