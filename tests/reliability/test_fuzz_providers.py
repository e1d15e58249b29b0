"""Every provider under mutation fuzzing of real files: typed errors only, no hang, bounded memory.

For each provider a handful of real files (the shared corpus, plus files generated here where
the corpus has none: xlsx, odt, rtf, eml, images) are mutated by a seeded loop (``mutate.py``)
and each mutant is extracted in the sandbox child (``sandbox.py``) with a per-document
deadline. A mutant passes when extraction succeeds or raises a ``p8fs.errors.P8fsError``, with
output a database accepts, within the hard timeout and under :data:`MEMORY_BOUND` of extra peak
memory. Anything else fails the test, naming the seed and mutation, and the mutant is kept
under the test's ``tmp_path`` to be turned into a regression test.

CI runs :data:`EXAMPLES` mutants per provider with a fixed seed (reproducible, ~1 minute in
all); ``P8FS_FUZZ_EXAMPLES`` and ``P8FS_FUZZ_SEED`` run a longer or different campaign.
"""

from __future__ import annotations

import io
import os
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.servers import corpus_path
from tests.reliability.mutate import mutant
from tests.reliability.sandbox import DOCUMENT_SECONDS, Outcome, Request, Sandbox

SEED = int(os.environ.get("P8FS_FUZZ_SEED", "20261128"))
EXAMPLES = int(os.environ.get("P8FS_FUZZ_EXAMPLES", "60"))
MiB = 1024**2
#: Extra peak memory one extraction of a small mutated file may take. The originals take
#: 0–60 MiB here (a Whisper window, unstructured's parse); a mutant that makes a parser
#: allocate by a claimed size instead of the real one blows far past this.
MEMORY_BOUND = 300 * MiB
#: An extraction that ends this long after starting overran its deadline (``DOCUMENT_SECONDS``)
#: by more than scheduling noise explains; mutants here take well under a second.
OVERRUN_SECONDS = 3 * DOCUMENT_SECONDS


@dataclass(frozen=True)
class Target:
    """A provider and the real files its mutants are made from."""

    provider: str
    files: tuple[str, ...]
    examples: int = EXAMPLES
    options: dict[str, Any] = field(default_factory=dict)
    zipped: bool = False
    #: Why NUL characters in this provider's text are tolerated here (the database layer then
    #: refuses the file with the typed ``UnstorableText`` on PostgreSQL), or None: NUL fails.
    keeps_nul: str | None = None


# -- generated originals (formats the corpus lacks) --------------------------------------------


def _xlsx(path: Path) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    for row in (("Name", "Colour", "Price"), ("Apple", "Red", 1.25), ("Kiwi", "Green", 0.8)):
        sheet.append(row)
    workbook.create_sheet("Stock").append(("Basel", 120))
    workbook.save(path)


def _odt(path: Path) -> None:
    import pypandoc

    pypandoc.convert_text(
        "# Minutes\n\nThe board approved the budget.\n\n- one\n- two\n",
        "odt",
        format="markdown",
        outputfile=str(path),
    )


def _rtf(path: Path) -> None:
    path.write_bytes(
        rb"{\rtf1\ansi\ansicpg1252{\fonttbl\f0\fswiss Helvetica;}\f0\pard"
        rb" Dear Ms. M\'fcller,\par The invoice {\b 42} is attached.\par}"
    )


def _eml(path: Path) -> None:
    path.write_bytes(
        b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Quarterly numbers\r\n"
        b"Date: Mon, 6 Jan 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nRevenue grew 12 % to 4.2 million.\r\n"
    )


def _image(fmt: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        from PIL import Image, ImageDraw, ImageFont

        image = Image.new("RGB", (360, 90), "white")
        ImageDraw.Draw(image).text(
            (12, 20), "INVOICE 42", fill="black", font=ImageFont.load_default(size=40)
        )
        image.save(path, format=fmt)

    return build


GENERATED: dict[str, Callable[[Path], None]] = {
    "inventory.xlsx": _xlsx,
    "minutes.odt": _odt,
    "letter.rtf": _rtf,
    "note.eml": _eml,
    "invoice.png": _image("PNG"),
    "invoice.jpg": _image("JPEG"),
    "invoice.gif": _image("GIF"),
    "invoice.tiff": _image("TIFF"),
}

TARGETS = {
    "pdf": Target(
        "pdf",
        (
            "p8fs_sample_data/p8fs_node/documents/sample.pdf",
            "pdf/spf_minimal-document.pdf",
            "pdf/unst_rotated-page-90.pdf",
            "pdf/spf_libreoffice-form.pdf",
            "pdf/pypdf_r2-empty-password.pdf",
            "pdf/spf_imagemagick-CCITTFaxDecode.pdf",
            "pdf/pdfjs_vertical.pdf",
        ),
        examples=EXAMPLES * 2,  # fast (milliseconds each) and the most attacked format
        options={"ocr": False},
    ),
    "pdf-layout-ocr": Target(
        "pdf",
        ("pdf/spf_minimal-document.pdf", "pdf/spf_imagemagick-CCITTFaxDecode.pdf"),
        examples=max(4, EXAMPLES // 3),
        options={"layout": True},  # pdfminer.six's parser, and OCR of image-only pages
    ),
    "office": Target(
        "office",
        (
            "docs/unst_handbook-1p.docx",
            "docs/unst_docx-tables.docx",
            "docs/unst_fake-power-point.pptx",
            "docs/unst_fake-power-point-table.pptx",
            "inventory.xlsx",
            "minutes.odt",
            "docs/unst_winter-sports.epub",
        ),
        zipped=True,
    ),
    "office-text": Target(
        "office",
        (
            "docs/unst_fake-html-cp1252.html",
            "docs/unst_example-10k-1p.html",
            "letter.rtf",
            "note.eml",
        ),
        examples=max(4, EXAMPLES * 2 // 3),
    ),
    "image": Target(
        "image",
        ("invoice.png", "invoice.jpg", "invoice.gif", "invoice.tiff"),
        examples=max(4, EXAMPLES * 2 // 3),
    ),
    "audio": Target(
        "audio",
        (
            "audio/ds_LDC93S1.wav",
            "audio/sr_english.wav",
            "audio/sr_french.aiff",
            "audio/fw_multilingual.mp3",
        ),
        examples=max(4, EXAMPLES * 2 // 3),
    ),
    "video": Target(
        "video",
        ("video/autocut_test001.mp4", "video/moviepy_big_buck_bunny_432_433.webm"),
        examples=max(4, EXAMPLES // 3),
    ),
    "text": Target(
        "text",
        (
            "docs/unst_norwich-city.txt",
            "docs/unst_fake-text-utf-32.txt",
            "docs/unst_codeblock.md",
            "docs/unst_umlauts-non-utf8.md",
            "p8fs_sample_data/p8fs_node/structured/sample.json",
        ),
        keeps_nul="p8fs.builtin.text keeps U+0000 as it is; on PostgreSQL the write is then "
        "refused with UnstorableText (typed), costing the whole file",
    ),
    "subtitles": Target(
        "subtitles",
        ("transcripts/podcastns_example.srt", "video/autocut_test.srt"),
        keeps_nul="the subtitles plugin keeps U+0000 as it is; on PostgreSQL the write is then "
        "refused with UnstorableText (typed), costing the whole file",
    ),
}


def _original(name: str, folder: Path) -> Path:
    if name in GENERATED:
        path = folder / name
        if not path.exists():
            GENERATED[name](path)
        return path
    return corpus_path(name)


@dataclass
class Campaign:
    """The outcomes of one target's mutants, and the ones that broke a rule."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    peak: int = 0
    slowest: float = 0.0

    def summary(self, target: str) -> str:
        counts = ", ".join(f"{label} {n}" for label, n in sorted(self.outcomes.items()))
        return (
            f"fuzz {target}: {sum(self.outcomes.values())} mutants (seed {SEED}): {counts}; "
            f"max extra peak memory {self.peak / MiB:.0f} MiB; slowest {self.slowest:.2f} s"
        )


def _label(outcome: Outcome, target: Target) -> str:
    if outcome.kind == "bad_output" and outcome.detail.startswith("NUL") and target.keeps_nul:
        return "nul_text(UnstorableText on PostgreSQL)"
    return outcome.label()


def _check(outcome: Outcome, target: Target) -> str | None:
    """Why this outcome breaks the contract, or None."""
    tolerated = (
        outcome.kind == "bad_output" and outcome.detail.startswith("NUL") and target.keeps_nul
    )
    if not outcome.acceptable and not tolerated:
        return f"{outcome.kind} {outcome.error or ''}: {outcome.message} {outcome.detail}".strip()
    if outcome.peak_bytes > MEMORY_BOUND:
        return f"took {outcome.peak_bytes / MiB:.0f} MiB of extra memory"
    if outcome.seconds > OVERRUN_SECONDS:
        # Finished, but long past its deadline: a call that no deadline check can interrupt.
        return f"ran {outcome.seconds:.0f} s against a {DOCUMENT_SECONDS:.0f} s deadline"
    return None


@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_files_give_only_typed_errors(
    name: str, sandbox: Sandbox, tmp_path: Path, whisper_dir: Path
) -> None:
    target = TARGETS[name]
    options = {"whisper_model": str(whisper_dir), **target.options}
    originals = [_original(f, tmp_path) for f in target.files]
    contents = [p.read_bytes() for p in originals]

    # The originals first: they must extract (this also warms the child's imports up).
    for path in originals:
        outcome = sandbox.run(Request(target.provider, str(path), path.name, None, options))
        assert outcome.kind == "ok", f"original {path.name}: {outcome}"

    campaign = Campaign()
    kept = tmp_path / "mutants"
    kept.mkdir()
    for index in range(target.examples):
        which = index % len(originals)
        seed = SEED * 100_003 + zlib.crc32(name.encode()) + index
        others = contents[:which] + contents[which + 1 :]
        data, how = mutant(seed, contents[which], others, zipped=target.zipped)
        path = kept / f"{index:03d}-{originals[which].name}"
        path.write_bytes(data)
        outcome = sandbox.run(
            Request(target.provider, str(path), originals[which].name, None, options)
        )
        campaign.outcomes[_label(outcome, target)] += 1
        campaign.peak = max(campaign.peak, outcome.peak_bytes)
        campaign.slowest = max(campaign.slowest, outcome.seconds)
        problem = _check(outcome, target)
        if problem:
            campaign.failures.append(f"{path.name} (seed {seed}, {how}): {problem}")
        else:
            path.unlink()
    print(campaign.summary(name))
    assert not campaign.failures, (
        f"{len(campaign.failures)} of {target.examples} mutants broke the contract "
        f"(kept in {kept}):\n" + "\n".join(campaign.failures)
    )


# -- regressions: minimized inputs from fuzzing campaigns ----------------------------------------


def _office(path: Path) -> tuple[list[Any], Any]:
    from p8fs.providers import ExtractContext
    from p8fs_node.office import OfficeProvider

    context = ExtractContext(filename=path.name)
    return list(OfficeProvider().extract(path, context)), context


def test_regression_damaged_deflate_data_in_a_member_is_corrupt_document(tmp_path: Path) -> None:
    """Seed 1, office mutant 028: one flipped bit inside document.xml's deflate data made the
    member check raise ``zlib.error`` (the CRC is never reached)."""
    import struct
    import zipfile

    from p8fs.errors import CorruptDocument

    data = bytearray(corpus_path("docs/unst_handbook-1p.docx").read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("word/document.xml")
    name_length, extra_length = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_length + extra_length
    data[start + 3 : start + 40] = bytes(37)  # a zeroed run in the Huffman tables
    path = tmp_path / "damaged.docx"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDocument, match=r"word/document\.xml"):
        _office(path)


def test_regression_unknown_xml_encoding_in_epub_container_costs_only_the_metadata(
    tmp_path: Path,
) -> None:
    """Seed 1, office mutant 118: ``encoding="utf-1"`` in META-INF/container.xml raised
    ``LookupError`` from the metadata reader."""
    import zipfile

    source = corpus_path("docs/unst_winter-sports.epub")
    path = tmp_path / "odd-encoding.epub"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as copy:
        for info in original.infolist():
            body = original.read(info)
            if info.filename == "META-INF/container.xml":
                body = body.replace(b"encoding='utf-8'", b"encoding='utf-1'")
                assert b"utf-1" in body
            copy.writestr(info, body)
    sections, _ = _office(path)
    assert sections and "Switzerland" in " ".join(s.text for s in sections)


def test_regression_email_date_past_year_9999_is_a_typed_error(tmp_path: Path) -> None:
    """Seed 1, office-text mutant 099: a Date header with an 11-digit year made the e-mail
    package raise ``OverflowError`` while the header section was built. The header section now
    keeps such a header as written; unstructured's own parser still fails on it, and that
    becomes a ``CorruptDocument`` naming the cause."""
    from p8fs.errors import CorruptDocument
    from p8fs.providers import ExtractContext
    from p8fs_node.office import _email_header_section

    path = tmp_path / "far-future.eml"
    path.write_bytes(
        b"From: Alice <alice@example.org>\r\nSubject: Numbers\r\n"
        b"Date: Mon, 6 Jan 99999999999 10:00:00 +0000\r\n\r\nRevenue grew.\r\n"
    )
    header = _email_header_section(path, ExtractContext())
    assert header is not None
    assert "Date: Mon, 6 Jan 99999999999 10:00:00 +0000" in header.text
    with pytest.raises(CorruptDocument, match="OverflowError"):
        _office(path)


def test_regression_nul_in_an_email_is_dropped_with_a_warning(tmp_path: Path) -> None:
    """Seed 20261128, office-text mutants 007/015: a zeroed range left U+0000 in the text,
    which PostgreSQL refuses to store (the whole file would be lost for it)."""
    path = tmp_path / "zeroed.eml"
    path.write_bytes(
        b"From: alice@example.org\r\nSubject: Q\x00uarterly\r\n\r\nRevenue\x00\x00 grew.\r\n"
    )
    sections, context = _office(path)
    text = " ".join(s.text for s in sections)
    assert "\x00" not in text and "Revenue grew." in text and "Subject: Quarterly" in text
    assert context.metadata["subject"] == "Quarterly"
    assert any("NUL character(s) dropped" in w for w in context.warnings)


def test_regression_malformed_utf16_in_the_pdf_info_dictionary_costs_only_that_value(
    tmp_path: Path,
) -> None:
    """Seed 2, pdf mutant 573: a spliced info dictionary held UTF-16 with an unpaired
    surrogate, and pypdfium2's ``get_metadata_dict`` raised ``UnicodeDecodeError``."""
    from p8fs.providers import ExtractContext
    from p8fs_node.pdf import PdfProvider
    from tests.reliability import hostile

    content = b"BT /F1 12 Tf 72 712 Td (" + hostile.PAGE_TEXT + b") Tj ET"
    pdf = hostile.pdf_document(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            hostile.pdf_stream(content),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            # "A", an unpaired high surrogate, "B"; and a well-formed author.
            b"<< /Title <FEFF0041D8000042> /Author (Ada) >>",
        ],
        trailer=b"/Info 6 0 R",
    )
    path = tmp_path / "bad-title.pdf"
    path.write_bytes(pdf)
    context = ExtractContext(filename=path.name, options={"ocr": False})
    sections = list(PdfProvider().extract(path, context))
    assert [s.text.strip() for s in sections] == [hostile.PAGE_TEXT.decode()]
    assert context.metadata["author"] == "Ada"
    assert context.metadata["title"].startswith("A") and context.metadata["title"].endswith("B")


# -- the harness itself: a hang, a crash, a memory hog and a stray exception are all caught --------


class _Sleeper:
    """Blocks like a native call that never returns (no deadline check can reach it)."""

    def extract(self, source: Any, context: Any) -> Any:
        import time

        time.sleep(3600)
        yield from ()


class _Crasher:
    def extract(self, source: Any, context: Any) -> Any:
        os.abort()
        yield from ()


class _Hog:
    def extract(self, source: Any, context: Any) -> Any:
        hog = bytearray(MEMORY_BOUND + 64 * MiB)
        hog[::4096] = b"x" * len(hog[::4096])  # touch every page: resident, not just reserved
        yield from ()


class _Raiser:
    def extract(self, source: Any, context: Any) -> Any:
        raise KeyError("a bug, not a typed error")
        yield from ()


def test_the_sandbox_reports_hangs_crashes_hogs_and_untyped_errors(tmp_path: Path) -> None:
    path = tmp_path / "any.bin"
    path.write_bytes(b"x")
    target = Target("any", ())

    def run(box: Sandbox, cls: str) -> Outcome:
        return box.run(Request(f"{__name__}:{cls}", str(path), path.name))

    with Sandbox(hang_seconds=5) as box:
        hang = run(box, "_Sleeper")
        assert hang.kind == "hang" and _check(hang, target)
        died = run(box, "_Crasher")
        assert died.kind == "died" and _check(died, target)
        hog = run(box, "_Hog")
        assert hog.kind == "ok" and hog.peak_bytes > MEMORY_BOUND and _check(hog, target)
        raised = run(box, "_Raiser")
        assert raised.kind == "untyped" and raised.error == "KeyError" and _check(raised, target)
        # Replaced children keep serving: a real provider still works afterwards.
        assert box.run(Request("text", str(path), "any.txt")).kind == "ok"
        assert box.restarts == 2


@pytest.mark.parametrize("width", [b"-2147483648.84", b"-2147483648"], ids=["zero", "2**31"])
def test_regression_a_page_of_hostile_width_is_not_rendered_for_ocr(
    tmp_path: Path, width: bytes
) -> None:
    """Seed 3, pdf-layout-ocr mutant 075: ``/MediaBox [0 0 -2147483648.84 3.84]`` gave a page
    of width 0 that draws something but has no text, so OCR tried to render it and pypdfium2
    raised ``ValueError: Crop exceeds page dimensions``. Its neighbour ``-2147483648`` makes
    the page 2**31 points wide: rendered, a strip tesseract refuses, which failed the whole
    document."""
    from p8fs.providers import ExtractContext
    from p8fs_node.ocr import ocr_unavailable_reason
    from p8fs_node.pdf import PdfProvider
    from tests.reliability import hostile

    if ocr_unavailable_reason():
        pytest.skip(f"the OCR path is what this covers: {ocr_unavailable_reason()}")
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %s 3.84] /Contents 4 0 R >>" % width
    pdf = hostile.pdf_document(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            page,
            hostile.pdf_stream(b"0 0 1 1 re f"),  # draws, but no text
        ]
    )
    path = tmp_path / "no-width.pdf"
    path.write_bytes(pdf)
    context = ExtractContext(filename=path.name)
    assert list(PdfProvider().extract(path, context)) == []
    assert context.metadata["pages_without_text"] == [1]


def test_regression_audio_stream_without_a_decoder_is_corrupt_document(
    tmp_path: Path, whisper_dir: Path
) -> None:
    """Seed 3, audio mutant 000: a WAV header declaring 4112 bits per sample leaves PyAV's
    stream without a codec context, and ``media_facts`` raised ``AttributeError``."""
    import struct

    from p8fs.errors import CorruptDocument
    from p8fs.providers import ExtractContext
    from p8fs_node.audio import AudioProvider
    from p8fs_node.video import VideoProvider

    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 4112)
    samples = bytes(32000)
    wav = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + struct.pack("<I", 16)
    wav += fmt + b"data" + struct.pack("<I", len(samples)) + samples
    path = tmp_path / "no-decoder.wav"
    path.write_bytes(wav)
    for provider in (AudioProvider(), VideoProvider()):
        context = ExtractContext(filename=path.name, options={"whisper_model": str(whisper_dir)})
        with pytest.raises(CorruptDocument, match="cannot be decoded"):
            list(provider.extract(path, context))
