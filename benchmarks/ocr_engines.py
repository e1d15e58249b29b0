"""OCR engines side by side on the corpus's scanned pages: accuracy, pages per second, memory.

Engines (p8fs-node's ``ocr_image``, exactly what the PDF and image providers run):

- ``rapidocr``: rapidocr-onnxruntime, PP-OCRv4 models inside the wheel (pip alone),
- ``tesseract``: the tesseract program (Debian ``tesseract-ocr`` + ``tesseract-ocr-eng``).

Pages, rendered as the PDF provider renders scans (300 dpi, grey):

- the 6 scanned book pages of ``pdf/pypdf_Seige_of_Vicksburg_Sample_OCR.pdf``, whose invisible
  text layer (OCR'd by its producer, LuraDocument) is the reference: ``CER`` is the Levenshtein
  distance between the engine's text and the layer, over the layer's length (both NFKC, with
  whitespace collapsed; a different reading order of captions and side notes costs both engines
  alike), and ``words`` the share of the layer's words of four letters or more that the engine
  found (order-free, what a keyword search sees);
- ``pdf/unst_loremipsum-flat.pdf`` and ``pdf/unst_single_table.pdf`` (image only, no text layer):
  the phrases of their MANIFEST ``expected_facts``; ``facts CER`` is each phrase's edit distance
  to its best-matching stretch of the engine's text, over the phrases' length.

Each engine runs in its own subprocess, one thread (``OMP_THREAD_LIMIT=1``, as in a worker that
runs several documents side by side), so ``ru_maxrss`` is its own peak. ``pages/s`` counts OCR
only (rendering excluded), after the engine's first call, whose time is reported as ``load``.

Run (a few minutes on 2 shared cores: rapidocr needs seconds per page)::

    uv run --all-packages --all-extras python benchmarks/ocr_engines.py [--json out.json]

Corpus: ``../shared/corpus`` relative to the repository, or ``P8FS_CORPUS_DIR`` / ``--corpus``.

Measured here (2 shared cores under a load average of ~5, so absolute speeds are pessimistic;
rapidocr-onnxruntime 1.4.4 / onnxruntime 1.32, tesseract 5.3.0)::

    engine        CER  words facts CER  pages/s  s/page  load s  peak MB
    rapidocr     9.2%  96.4%      0.4%    0.063   15.98    0.70     1137
    tesseract    2.9%  98.5%      8.8%    0.403    2.48    0.54      262

On four of the six book pages both engines are within 1-2% CER; rapidocr loses on a page with
text beside an illustration (reading order, 44% against 10%) and drops lines on another, while
tesseract misses table cells that rapidocr reads (``Base 256``, ``Base 512``, ``Chipper`` rows).
So ``auto`` prefers tesseract where it is installed (more accurate on running text, ~6x faster,
a quarter of the memory) and rapidocr is what makes OCR work from pip alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(os.environ.get("P8FS_CORPUS_DIR", REPO_ROOT.parent / "shared" / "corpus"))
DPI = 300

#: (file, 0-based page) scanned pages whose text layer is the reference.
LAYER_PAGES = [("pdf/pypdf_Seige_of_Vicksburg_Sample_OCR.pdf", page) for page in range(6)]
#: (file, 0-based page, phrases from MANIFEST.tsv expected_facts) for image-only pages.
FACT_PAGES = [
    (
        "pdf/unst_loremipsum-flat.pdf",
        0,
        ["Lorem ipsum dolor sit amet, consectetur adipiscing elit"],
    ),
    (
        "pdf/unst_single_table.pdf",
        0,
        [
            "Processing",
            "total chunks",
            "mean chunks per document (std)",
            "tables mean (std)",
            "Base 128 64,058 800.73 (484.11) N/A",
            "Base 256 32,051 400.64 (242.04) N/A",
            "Base 512 16,046 200.58 (121.01) N/A",
            "Chipper 20,843 260.27 (145.80) 96.20 (57.53)",
        ],
    ),
]


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (rapidfuzz when importable, else a plain dynamic programme)."""
    try:
        from rapidfuzz.distance import Levenshtein

        return int(Levenshtein.distance(a, b))
    except ImportError:  # pragma: no cover - rapidfuzz comes with the project's environment
        previous = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            current = [i]
            for j, cb in enumerate(b, 1):
                current.append(
                    min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
                )
            previous = current
        return previous[-1]


def best_substring_distance(phrase: str, text: str) -> int:
    """Fewest edits turning ``phrase`` into some stretch of ``text`` (Sellers' algorithm)."""
    previous = [0] * (len(text) + 1)  # a match may start anywhere in the text
    for i, cp in enumerate(phrase, 1):
        current = [i]
        for j, ct in enumerate(text, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (cp != ct)))
        previous = current
    return min(previous)


def words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[^\W\d_]{4,}", unicodedata.normalize("NFKC", text))]


# -- worker: one engine, in its own process --------------------------------------------------------


def render(corpus: Path, name: str, page: int) -> Any:
    import pypdfium2

    doc = pypdfium2.PdfDocument(corpus / name)
    try:
        return doc[page].render(scale=DPI / 72, grayscale=True).to_pil().copy()
    finally:
        doc.close()


def run_engine(engine: str, corpus: Path) -> dict[str, Any]:
    from p8fs_node.ocr import ocr_image, ocr_unavailable_reason

    reason = ocr_unavailable_reason(engine)
    if reason:
        return {"engine": engine, "unavailable": reason}
    pages = [(name, page) for name, page in LAYER_PAGES] + [(n, p) for n, p, _ in FACT_PAGES]
    images = [render(corpus, name, page) for name, page in pages]
    started = time.perf_counter()
    ocr_image(images[0].crop((0, 0, 64, 64)), engine=engine)  # load models / start the program
    load = time.perf_counter() - started
    texts, seconds = [], []
    for image in images:
        started = time.perf_counter()
        texts.append(ocr_image(image, engine=engine))
        seconds.append(time.perf_counter() - started)
    return {
        "engine": engine,
        "load_seconds": load,
        "pages": [{"file": n, "page": p + 1} for n, p in pages],
        "texts": texts,
        "seconds": seconds,
        # Children too: tesseract runs as a program, and its memory is part of the cost.
        "max_rss_mb": (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        )
        / 1024,
    }


# -- parent: run each engine, score, print ---------------------------------------------------------


def score(run: dict[str, Any], corpus: Path) -> dict[str, Any]:
    import pypdfium2

    texts = run["texts"]
    edits = reference_chars = found = reference_words = 0
    for index, (name, page) in enumerate(LAYER_PAGES):
        doc = pypdfium2.PdfDocument(corpus / name)
        textpage = doc[page].get_textpage()
        reference = textpage.get_text_range()
        textpage.close()
        doc.close()
        expected, got = normalise(reference), normalise(texts[index])
        edits += levenshtein(got, expected)
        reference_chars += len(expected)
        seen = set(words(got))
        listed = words(expected)
        found += sum(1 for w in listed if w in seen)
        reference_words += len(listed)
    fact_edits = fact_chars = 0
    for offset, (_, _, phrases) in enumerate(FACT_PAGES, len(LAYER_PAGES)):
        got = normalise(texts[offset])
        for phrase in phrases:
            fact_edits += best_substring_distance(normalise(phrase), got)
            fact_chars += len(normalise(phrase))
    return {
        "cer": edits / reference_chars,
        "words": found / reference_words,
        "facts_cer": fact_edits / fact_chars,
        "pages_per_second": len(texts) / sum(run["seconds"]),
        "seconds_per_page": sum(run["seconds"]) / len(texts),
        "load_seconds": run["load_seconds"],
        "max_rss_mb": run["max_rss_mb"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--engines", default="rapidocr,tesseract")
    parser.add_argument("--json", type=Path, help="also write every page's text and figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_engine(args.worker, args.corpus)))
        return 0

    env = dict(os.environ, OMP_THREAD_LIMIT="1", DO_NOT_TRACK="1")
    runs, rows = [], []
    for engine in args.engines.split(","):
        result = subprocess.run(
            [sys.executable, __file__, "--worker", engine, "--corpus", str(args.corpus)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        run = json.loads(result.stdout.strip().splitlines()[-1])
        runs.append(run)
        if "unavailable" in run:
            print(f"{engine}: not measured ({run['unavailable']})")
            continue
        rows.append((engine, score(run, args.corpus)))
    pages = len(LAYER_PAGES) + len(FACT_PAGES)
    print(f"\n{pages} scanned pages at {DPI} dpi, one thread per engine\n")
    print(
        f"{'engine':<10} {'CER':>6} {'words':>6} {'facts CER':>9} {'pages/s':>8} "
        f"{'s/page':>7} {'load s':>7} {'peak MB':>8}"
    )
    for engine, s in rows:
        print(
            f"{engine:<10} {s['cer']:>6.1%} {s['words']:>6.1%} {s['facts_cer']:>9.1%} "
            f"{s['pages_per_second']:>8.3f} {s['seconds_per_page']:>7.2f} "
            f"{s['load_seconds']:>7.2f} {s['max_rss_mb']:>8.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "scores": dict(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
