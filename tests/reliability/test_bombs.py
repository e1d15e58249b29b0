"""Decompression bombs and lying headers: refused by explicit, configurable limits.

Each bomb is a real file of its kind (see ``hostile.py``) and runs in the sandbox child, whose
peak resident memory is measured: "refused" must also mean "refused *before* paying for it".
Each limit is tested on both sides (at the limit passes, one past it is refused), as a
per-call option and, through ``p8fs.pipeline.aingest``, as a ``P8FS_*`` setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p8fs.database import Database
from p8fs.errors import LimitExceeded
from p8fs.pipeline import aingest
from p8fs.providers import ExtractContext
from p8fs.settings import Settings
from tests.fixtures.servers import corpus_path
from tests.reliability import hostile
from tests.reliability.sandbox import Outcome, Request, Sandbox

GiB = 1024**3
MiB = 1024**2
#: Peak memory a refused bomb may cost the process. The bombs here inflate to 2 GiB; refusing
#: them must cost a bounded step, not a fraction of that.
REFUSAL_MEMORY = 100 * MiB


def run(sandbox: Sandbox, provider: str, path: Path, **options: Any) -> Outcome:
    outcome = sandbox.run(Request(provider, str(path), path.name, None, options))
    assert outcome.acceptable, f"{path.name}: {outcome}"
    return outcome


def assert_refused(outcome: Outcome, *names: str) -> None:
    """A ``LimitExceeded`` whose message names the option and the setting to raise."""
    assert outcome.kind == "typed" and outcome.error == "LimitExceeded", outcome
    assert outcome.code == "limit"
    for name in names:
        assert name in outcome.message, (name, outcome.message)
    assert outcome.peak_bytes < REFUSAL_MEMORY, f"refusal cost {outcome.peak_bytes >> 20} MiB"


# -- PDF: pages --------------------------------------------------------------------------------


def test_pdf_claiming_millions_of_pages_costs_only_its_real_pages(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """PDFium disbelieves a page tree /Count past ~1M and counts the real pages: one page is
    read, not five million."""
    path = tmp_path / "five-million.pdf"
    path.write_bytes(hostile.pdf_claiming_pages(5_000_000))
    outcome = run(sandbox, "pdf", path, ocr=False)
    assert outcome.kind == "ok" and outcome.sections == 1
    assert outcome.peak_bytes < REFUSAL_MEMORY


def test_pdf_page_count_that_pdfium_believes_is_refused_by_max_pages(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "one-million.pdf"
    path.write_bytes(hostile.pdf_claiming_pages(1_000_000))
    assert_refused(run(sandbox, "pdf", path, ocr=False), "max_pages", "P8FS_MAX_PAGES")


def test_phantom_pages_under_the_limit_do_not_flood_warnings(tmp_path: Path) -> None:
    """9,999 claimed pages, one real: the 9,998 missing ones are listed, but warned about in a
    bounded number of lines (they end up in the files row)."""
    from p8fs_node.pdf import MAX_PAGE_WARNINGS, PdfProvider

    path = tmp_path / "phantom.pdf"
    path.write_bytes(hostile.pdf_claiming_pages(9_999))
    context = ExtractContext(filename=path.name, options={"ocr": False})
    sections = list(PdfProvider().extract(path, context))
    assert [s.text.strip() for s in sections] == [hostile.PAGE_TEXT.decode()]
    assert len(context.metadata["pages_failed"]) == 9_998
    assert len(context.warnings) <= MAX_PAGE_WARNINGS + 2
    assert any("9978 more page(s) could not be read" in w for w in context.warnings)


def test_max_pages_both_sides(tmp_path: Path) -> None:
    from p8fs_node.pdf import PdfProvider

    path = tmp_path / "twelve.pdf"
    path.write_bytes(hostile.pdf_with_pages(12))
    at_limit = ExtractContext(filename=path.name, options={"ocr": False, "max_pages": 12})
    assert len(list(PdfProvider().extract(path, at_limit))) == 12
    with pytest.raises(LimitExceeded, match="max_pages"):
        list(PdfProvider().extract(path, ExtractContext(options={"max_pages": 11})))


# -- PDF: streams ------------------------------------------------------------------------------


def test_pdf_stream_inflating_to_2_gib_is_refused_before_pdfium_inflates_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """2 MB on disk, 2 GiB of content stream: PDFium alone took 3 GB and 7 s on it."""
    path = tmp_path / "stream-bomb.pdf"
    path.write_bytes(hostile.pdf_with_content_stream(hostile.deflate_repeated(b" ", 2 * GiB)))
    assert path.stat().st_size < 3 * MiB
    assert_refused(run(sandbox, "pdf", path), "max_compression_ratio", "P8FS_MAX_COMPRESSION_RATIO")
    # With the ratio limit lifted, the total is still capped (and still costs no memory).
    assert_refused(
        run(sandbox, "pdf", path, max_compression_ratio=10**9),
        "max_uncompressed_bytes",
        "P8FS_MAX_UNCOMPRESSED_BYTES",
    )


def test_nested_flate_layers_are_followed(sandbox: Sandbox, tmp_path: Path) -> None:
    """/Filter [/FlateDecode /FlateDecode]: 4 kB on disk; the outer layer alone looks harmless."""
    import zlib

    inner = hostile.deflate_repeated(b" ", 2 * GiB)
    path = tmp_path / "nested-bomb.pdf"
    path.write_bytes(
        hostile.pdf_with_content_stream(
            zlib.compress(inner, 9), b"/Filter [/FlateDecode /FlateDecode]"
        )
    )
    assert path.stat().st_size < 10_000
    assert_refused(run(sandbox, "pdf", path), "max_compression_ratio")


@pytest.mark.parametrize(
    ("algorithm", "size"),
    [("RC4-128", 64 * MiB), ("AES-128", 2 * GiB), ("AES-256", 2 * GiB)],
    ids=["RC4-128", "AES-128", "AES-256"],
)
def test_encrypted_stream_bomb_is_refused_too(
    sandbox: Sandbox, tmp_path: Path, algorithm: str, size: int
) -> None:
    """Encrypted with the empty user password (opens without asking): the stream data on disk
    is ciphertext, not zlib, so it is decrypted (a prefix of it) before being measured. (The
    RC4 bomb is smaller only because pypdf encrypts RC4 in pure Python: 13 s for 2 GiB's.)"""
    pypdf = pytest.importorskip("pypdf", reason="pypdf (unstructured's dependency) writes it")
    import io

    plain = hostile.pdf_with_content_stream(hostile.deflate_repeated(b" ", size))
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(plain)))
    writer.encrypt(user_password="", owner_password="owner", algorithm=algorithm)
    path = tmp_path / "encrypted-bomb.pdf"
    with path.open("wb") as out:
        writer.write(out)
    assert path.stat().st_size < 3 * MiB
    assert_refused(run(sandbox, "pdf", path, ocr=False), "max_compression_ratio")


def test_stream_limits_both_sides() -> None:
    from p8fs_node.pdf import check_stream_expansion

    real = corpus_path("pdf/spf_GeoTopo-komprimiert.pdf")
    total = check_stream_expansion(real, real.name)
    assert total > real.stat().st_size  # it did inflate the document's streams
    assert check_stream_expansion(real, real.name, max_bytes=total) == total
    with pytest.raises(LimitExceeded, match="max_uncompressed_bytes"):
        check_stream_expansion(real, real.name, max_bytes=total - 1)

    import io

    # 32 MiB of spaces deflate at ~1030:1 (zlib's ceiling).
    bomb = io.BytesIO(hostile.pdf_with_content_stream(hostile.deflate_repeated(b" ", 32 * MiB)))
    assert check_stream_expansion(bomb, "bomb.pdf", max_ratio=1100) == 32 * MiB
    assert bomb.tell() == 0  # a file object is left where it was
    with pytest.raises(LimitExceeded, match="max_compression_ratio"):
        check_stream_expansion(bomb, "bomb.pdf", max_ratio=1000)


def test_image_streams_are_not_inflated_by_the_check() -> None:
    """Text extraction never decodes images: a large blank image must not count as a bomb."""
    from p8fs_node.pdf import check_stream_expansion

    blank = hostile.deflate_repeated(b"\xff", 32 * MiB)
    image = hostile.pdf_stream(
        blank,
        b"/Type /XObject /Subtype /Image /Width 4096 /Height 8192 /ColorSpace "
        b"/DeviceGray /BitsPerComponent 8 /Filter /FlateDecode",
    )
    pdf = hostile.pdf_document(
        [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>", image]
    )
    import io

    assert check_stream_expansion(io.BytesIO(pdf), "scan.pdf") == 0


# -- office containers -------------------------------------------------------------------------

OFFICE_BOMBS = [
    pytest.param("docs/unst_handbook-1p.docx", "word/media/image9.png", "docx", id="docx"),
    pytest.param(None, "xl/media/image9.png", "xlsx", id="xlsx"),
]


def _xlsx(tmp_path: Path) -> Path:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["Region", "Units"])
    sheet.append(["Basel", 120])
    path = tmp_path / "template.xlsx"
    workbook.save(path)
    return path


def _template(relative: str | None, tmp_path: Path) -> Path:
    return corpus_path(relative) if relative else _xlsx(tmp_path)


@pytest.mark.parametrize(("template", "member", "suffix"), OFFICE_BOMBS)
def test_office_zip_bomb_of_2_gib_is_refused_before_parsing(
    sandbox: Sandbox, tmp_path: Path, template: str | None, member: str, suffix: str
) -> None:
    path = tmp_path / f"bomb.{suffix}"
    path.write_bytes(hostile.zip_with_bomb(_template(template, tmp_path), member, b"\0", 2 * GiB))
    assert path.stat().st_size < 3 * MiB
    assert_refused(
        run(sandbox, "office", path), "max_compression_ratio", "P8FS_MAX_COMPRESSION_RATIO"
    )
    assert_refused(
        run(sandbox, "office", path, max_compression_ratio=10**9),
        "max_uncompressed_bytes",
        "P8FS_MAX_UNCOMPRESSED_BYTES",
    )


@pytest.mark.parametrize(("template", "member", "suffix"), OFFICE_BOMBS)
@pytest.mark.parametrize("replace", [False, True], ids=["added", "replacing"])
def test_office_bomb_lying_about_its_size_is_refused_in_bounded_memory(
    sandbox: Sandbox,
    tmp_path: Path,
    template: str | None,
    member: str,
    suffix: str,
    replace: bool,
) -> None:
    """The headers declare 5 kB for 2 GiB: every declared-size check passes. Unchecked, a
    whole-member read inflates all 2 GiB before zipfile cuts it to the declared size."""
    source = _template(template, tmp_path)
    if replace:
        member = "word/document.xml" if suffix == "docx" else "xl/worksheets/sheet1.xml"
    path = tmp_path / f"liar.{suffix}"
    path.write_bytes(hostile.zip_with_bomb(source, member, b"a", 2 * GiB, lie_size=5_000))
    outcome = run(sandbox, "office", path)
    assert outcome.kind == "typed" and outcome.error == "CorruptDocument", outcome
    assert "decompression bomb hiding its size" in outcome.message
    assert outcome.peak_bytes < REFUSAL_MEMORY, f"cost {outcome.peak_bytes >> 20} MiB"


def test_epub_bomb_lying_about_its_size_is_refused_before_pandoc_reads_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """EPUB goes through pandoc, which reads the ZIP itself: the lie must be caught first."""
    source = corpus_path("docs/unst_winter-sports.epub")
    chapter = "OEBPS/9010142969167985858_60153-h-0.htm.html"
    path = tmp_path / "liar.epub"
    path.write_bytes(hostile.zip_with_bomb(source, chapter, b"a", 2 * GiB, lie_size=5_000))
    outcome = run(sandbox, "office", path)
    assert outcome.kind == "typed" and outcome.error == "CorruptDocument", outcome
    assert chapter in outcome.message


def test_office_limits_both_sides(tmp_path: Path) -> None:
    import zipfile

    from p8fs_node.office import OfficeProvider

    path = corpus_path("docs/unst_handbook-1p.docx")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    declared = sum(i.file_size for i in infos)
    ratio = max(i.file_size // max(i.compress_size, 1) for i in infos)

    def extract(**options: Any) -> int:
        context = ExtractContext(filename=path.name, options=options)
        return len(list(OfficeProvider().extract(path, context)))

    assert extract(max_uncompressed_bytes=declared) > 0
    with pytest.raises(LimitExceeded, match="max_uncompressed_bytes"):
        extract(max_uncompressed_bytes=declared - 1)

    # The ratio limit applies to members past 16 MiB: a 32 MiB member at ~1030:1.
    bomb = tmp_path / "ratio.docx"
    bomb.write_bytes(hostile.zip_with_bomb(path, "word/media/blank.bin", b"\0", 32 * MiB))
    with zipfile.ZipFile(bomb) as archive:
        member = archive.getinfo("word/media/blank.bin")
    member_ratio = member.file_size / member.compress_size
    assert ratio < member_ratio
    limit = int(member_ratio)
    with pytest.raises(LimitExceeded, match="max_compression_ratio"):
        OfficeProvider().extract(
            bomb, ExtractContext(options={"max_compression_ratio": limit})
        ).__next__()
    context = ExtractContext(filename=bomb.name, options={"max_compression_ratio": limit + 1})
    assert list(OfficeProvider().extract(bomb, context))


@pytest.mark.parametrize(
    ("template", "member", "root", "element"),
    [
        ("docs/unst_handbook-1p.docx", "word/document.xml", b"w:document", b"w:t"),
        (
            "docs/unst_winter-sports.epub",
            "OEBPS/9010142969167985858_60153-h-0.htm.html",
            b"html",
            b"p",
        ),
    ],
    ids=["docx", "epub"],
)
def test_xml_entity_expansion_is_refused_while_reading_the_container(
    sandbox: Sandbox, tmp_path: Path, template: str, member: str, root: bytes, element: bytes
) -> None:
    """A billion laughs (3 GB from 1 kB of DTD). Unchecked, libxml2 stops it after ~150 MB and
    5 s (python-docx); pandoc (EPUB, OpenDocument) runs in a process of its own."""
    path = tmp_path / f"laughs{Path(template).suffix}"
    path.write_bytes(hostile.zip_with_laughs(corpus_path(template), member, root, element))
    outcome = run(sandbox, "office", path)
    assert_refused(outcome, "<!ENTITY", member)


# -- images ------------------------------------------------------------------------------------


def test_png_declaring_100k_by_100k_pixels_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(hostile.png_declaring(100_000, 100_000))
    assert path.stat().st_size < 1_000
    assert_refused(run(sandbox, "image", path), "max_image_pixels", "P8FS_MAX_IMAGE_PIXELS")


def test_image_pixel_limit_both_sides(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "square.png"
    path.write_bytes(hostile.png_declaring(1_000, 1_000))
    assert run(sandbox, "image", path, ocr=False, max_image_pixels=1_000_000).kind == "ok"
    assert_refused(
        run(sandbox, "image", path, ocr=False, max_image_pixels=999_999), "max_image_pixels"
    )


def test_image_limit_raised_past_pillows_own_guard_is_honoured(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """200 megapixels is over twice Pillow's default guard, so ``Image.open`` itself refuses it
    unless the provider lifts that guard to the limit the caller asked for."""
    path = tmp_path / "poster.png"
    path.write_bytes(hostile.png_declaring(20_000, 10_000))
    assert run(sandbox, "image", path, ocr=False, max_image_pixels=200_000_000).kind == "ok"
    assert_refused(
        run(sandbox, "image", path, ocr=False, max_image_pixels=199_999_999), "max_image_pixels"
    )
    assert_refused(run(sandbox, "image", path, ocr=False), "max_image_pixels")  # the default


# -- audio and video ---------------------------------------------------------------------------


def test_mp3_claiming_days_is_refused_before_decoding(
    sandbox: Sandbox, tmp_path: Path, whisper_dir: Path
) -> None:
    frames = 0xFFFFFF
    assert hostile.mp3_seconds(frames) > 4 * 24 * 3600
    path = tmp_path / "days.mp3"
    path.write_bytes(hostile.mp3_claiming_frames(frames))
    outcome = run(sandbox, "audio", path, whisper_model=str(whisper_dir))
    assert_refused(outcome, "declares", "max_duration_seconds")


def test_claimed_days_are_refused_before_any_model_is_loaded(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The refusal costs nothing: a model that is not there is never looked for."""
    path = tmp_path / "days.mp3"
    path.write_bytes(hostile.mp3_claiming_frames(0xFFFFFF))
    outcome = run(sandbox, "audio", path, whisper_model=str(tmp_path / "no-such-model"))
    assert_refused(outcome, "declares", "P8FS_MAX_DURATION_SECONDS")


def test_declared_duration_limit_both_sides(
    sandbox: Sandbox, tmp_path: Path, whisper_dir: Path
) -> None:
    frames = 2_297  # 60.0 s at 1152 samples per frame, 44.1 kHz
    path = tmp_path / "minute.mp3"
    path.write_bytes(hostile.mp3_claiming_frames(frames))
    seconds = hostile.mp3_seconds(frames)
    model = str(whisper_dir)
    ok = run(sandbox, "audio", path, whisper_model=model, max_duration_seconds=seconds + 0.5)
    assert ok.kind == "ok"
    refused = run(sandbox, "audio", path, whisper_model=model, max_duration_seconds=seconds - 0.5)
    assert_refused(refused, "declares", "max_duration_seconds")


def test_audio_longer_than_declared_is_stopped_while_decoding(
    sandbox: Sandbox, tmp_path: Path, whisper_dir: Path
) -> None:
    """A header claiming one second over 52 s of frames passes the declared check; the decoded
    audio is counted too."""
    path = tmp_path / "understated.mp3"
    path.write_bytes(hostile.mp3_claiming_frames(40, real_frames=2_000))
    model = str(whisper_dir)
    assert run(sandbox, "audio", path, whisper_model=model, max_duration_seconds=60).kind == "ok"
    outcome = run(sandbox, "audio", path, whisper_model=model, max_duration_seconds=10)
    assert_refused(outcome, "runs longer", "max_duration_seconds", "P8FS_MAX_DURATION_SECONDS")


def test_wav_claiming_a_huge_data_chunk_costs_only_its_real_samples(
    sandbox: Sandbox, tmp_path: Path, whisper_dir: Path
) -> None:
    """FFmpeg clamps a WAV's declared data size to the file: 4 GB claimed (6 days at 8 kHz),
    one second present, one second decoded."""
    path = tmp_path / "claims.wav"
    path.write_bytes(hostile.wav_claiming(0xFFFFFFF0))
    outcome = run(sandbox, "audio", path, whisper_model=str(whisper_dir), max_duration_seconds=5)
    assert outcome.kind == "ok"
    assert outcome.peak_bytes < REFUSAL_MEMORY


def test_video_duration_limit_both_sides(sandbox: Sandbox, whisper_dir: Path) -> None:
    path = corpus_path("video/autocut_test001.mp4")  # 10.26 s
    model = str(whisper_dir)
    assert run(sandbox, "video", path, whisper_model=model, max_duration_seconds=10.5).kind == "ok"
    assert_refused(
        run(sandbox, "video", path, whisper_model=model, max_duration_seconds=10.0),
        "max_duration_seconds",
    )


# -- the settings, through the pipeline ---------------------------------------------------------


def _bomb_files(tmp_path: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    pdf = tmp_path / "twelve.pdf"
    pdf.write_bytes(hostile.pdf_with_pages(12))
    png = tmp_path / "square.png"
    png.write_bytes(hostile.png_declaring(1_000, 1_000))
    mp3 = tmp_path / "minute.mp3"
    mp3.write_bytes(hostile.mp3_claiming_frames(2_297))
    docx = corpus_path("docs/unst_handbook-1p.docx")
    import zipfile

    with zipfile.ZipFile(docx) as archive:
        declared = sum(i.file_size for i in archive.infolist())
    return {
        "P8FS_MAX_PAGES": (pdf, {"max_pages": 11}),
        "P8FS_MAX_IMAGE_PIXELS": (png, {"max_image_pixels": 999_999}),
        "P8FS_MAX_DURATION_SECONDS": (mp3, {"max_duration_seconds": 59.0}),
        "P8FS_MAX_UNCOMPRESSED_BYTES": (docx, {"max_uncompressed_bytes": declared - 1}),
    }


@pytest.mark.parametrize(
    "setting",
    [
        "P8FS_MAX_PAGES",
        "P8FS_MAX_IMAGE_PIXELS",
        "P8FS_MAX_DURATION_SECONDS",
        "P8FS_MAX_UNCOMPRESSED_BYTES",
    ],
)
async def test_limit_settings_reach_the_providers(
    setting: str,
    sqlite_database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    whisper_dir: Path,
) -> None:
    """Each limit read from its ``P8FS_*`` variable refuses the file through ``aingest`` (an
    ``errors`` row with code ``limit``, no ``files`` row). A per-call option may tighten a limit
    but not lift it: workers pass the event's metadata as options, and the uploader sets that
    (``x-amz-meta-max_pages: 999999999`` must not switch a limit off)."""
    path, limit = _bomb_files(tmp_path)[setting]
    ((name, value),) = limit.items()
    just_enough = value + 1 if name == "max_uncompressed_bytes" else value * 2
    options = {"whisper_model": str(whisper_dir), "ocr": False}

    async def ingest(**extra: Any) -> Any:
        return await aingest(
            str(path),
            "tenant-a",
            database=sqlite_database,
            settings=Settings(data_dir=tmp_path / "data"),
            options={**options, **extra},
            force=True,
        )

    monkeypatch.setenv(setting, str(value))
    assert getattr(Settings(), name) == value
    with pytest.raises(LimitExceeded, match=name):
        await ingest()
    assert await sqlite_database.count("files", "tenant-a") == 0
    errors = await sqlite_database.list_errors("tenant-a")
    assert [e.metadata["code"] for e in errors] == ["limit"]
    for lifted in (just_enough, str(just_enough), 10**18, "inf", "not a number", -1):
        with pytest.raises(LimitExceeded, match=name):
            await ingest(**{name: lifted})  # event metadata arrives as text
    assert await sqlite_database.count("files", "tenant-a") == 0

    monkeypatch.setenv(setting, str(just_enough))
    with pytest.raises(LimitExceeded, match=name):
        await ingest(**{name: value})  # tightening works
    result = await ingest()
    assert result.file.provider in ("pdf", "image", "audio", "office")
    assert await sqlite_database.count("files", "tenant-a") == 1
