"""PDF text extraction side by side: pages per second, peak memory and agreement with pdftotext.

Engines, each run in its own subprocess (so one engine's imports and caches cannot flatter or
burden another, and ``ru_maxrss`` is that engine's own peak):

- ``p8fs``: p8fs-node's ``PdfProvider`` *plus* p8fs's ``TokenChunker`` (the work ingestion does),
- ``p8fs-extract``: the same provider without chunking,
- ``p8fs-layout``: the provider with ``layout=True`` (pdfminer.six reading order),
- ``pypdfium2``: raw pypdfium2, page by page (the floor p8fs builds on),
- ``pypdf`` and ``pdfminer.six``: their plain ``extract_text``,
- ``unstructured``: ``partition_pdf(strategy="fast")``.

unstructured's PDF extra pulls torch and CUDA wheels (6.8 GB), so it is not in the project
environment. Its *fast* path needs none of that; give the benchmark a separate interpreter where
it can import, e.g. (any temporary folder)::

    uv venv $TMP/unst --python 3.11
    uv pip install --python $TMP/unst/bin/python unstructured==0.27.35 pdfminer.six pikepdf \\
        pi_heif pypdf spacy opencv-python-headless pdf2image pandas scipy onnx onnxruntime \\
        huggingface-hub matplotlib
    uv pip install --python $TMP/unst/bin/python --no-deps unstructured-inference
    python benchmarks/pdf_throughput.py --unstructured-python $TMP/unst/bin/python

Offline, unstructured's fast path would try to download spaCy's ``en_core_web_sm`` (and return
nothing without it); the worker gives it a blank English pipeline with a sentencizer, as
p8fs-node does (text unchanged). Telemetry is switched off with ``DO_NOT_TRACK``.

Corpus: the PDFs of ``../shared/corpus`` (``P8FS_CORPUS_DIR`` or ``--corpus``) that have a text
layer, i.e. where ``pdftotext`` (poppler-utils) prints something; files that need a password,
are unreadable, or whose pdftotext output is known to be wrong are left out and listed.

Agreement with pdftotext, on text normalised the same way for every engine (Unicode NFKC, so
ligatures compare equal; whitespace collapsed): ``F1`` is the token-multiset F1 (what a search
index sees), ``order`` is difflib's ratio on the token sequences (reading order), both summed
over all files weighted by size.

Book (after the table, or alone with ``--book``; ``--no-book`` skips it): one book-length PDF, built at run time from corpus PDFs with pypdfium2's
page import (:data:`BOOK_PARTS`: GeoTopo five times and tracemonkey three times, 627 pages;
nothing generated is committed), processed whole the way ``p8fs process`` does it (the real
pipeline: sniffing, the PDF provider with its stream check, chunking, the files and resources
rows in a fresh SQLite database each time), side by side with raw pypdfium2 reading every
page's text. Both run in one worker process, alternating, after a warm-up of each; the report
is the median whole-file wall time of each over ``--repeat`` runs and the ratio p8fs/raw (the
target is at most 1.5), with CPU seconds and the machine's load average beside them, since a
shared machine moves wall time.

Timing: each file's best of ``--rounds`` x ``--repeat`` runs (one run for the slow engines),
each worker after a warm-up extraction that is not counted; rounds alternate the engines so
that load from other processes spreads over all of them. Pages per second = all pages / sum of the files' times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(os.environ.get("P8FS_CORPUS_DIR", REPO_ROOT.parent / "shared" / "corpus"))

#: Files whose pdftotext output is itself wrong, so agreement with it would mislead.
REFERENCE_UNRELIABLE = {
    "pm_issue-791-non-unicode-cmap.pdf": "pdftotext prints mojibake for its non-Unicode CMap",
}

ENGINES = [
    "p8fs",
    "p8fs-extract",
    "p8fs-layout",
    "pypdfium2",
    "pypdf",
    "pdfminer.six",
    "unstructured",
    "unstructured-forced",
]
#: Engines that run under ``--unstructured-python``.
UNSTRUCTURED_ENGINES = {"unstructured", "unstructured-forced"}
#: Engines fast enough that repeating them is cheap (and needed: a file takes milliseconds).
FAST_ENGINES = {"p8fs", "p8fs-extract", "pypdfium2"}

Extractor = Callable[[str], str]


# -- workers (run in a subprocess; stdlib imports only at module level) ---------------------------


def _p8fs_extractor(*, chunk: bool, layout: bool) -> Extractor:
    from p8fs.providers import ExtractContext
    from p8fs_node.pdf import PdfProvider

    provider = PdfProvider()
    chunker = None
    if chunk:
        from p8fs.chunking import TokenChunker

        chunker = TokenChunker()

    def extract(path: str) -> str:
        context = ExtractContext(options={"ocr": False, "layout": layout})
        texts: list[str] = []

        def sections() -> Any:
            for section in provider.extract(path, context):
                texts.append(section.text)
                yield section

        if chunker is None:
            for _ in sections():
                pass
        else:
            for _ in chunker.chunk(sections()):
                pass
        return "\n\n".join(texts)

    return extract


def _pypdfium2_extractor() -> Extractor:
    import pypdfium2

    def extract(path: str) -> str:
        doc = pypdfium2.PdfDocument(path)
        texts = []
        for index in range(len(doc)):
            page = doc[index]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        doc.close()
        return "\n".join(texts)

    return extract


def _pypdf_extractor() -> Extractor:
    from pypdf import PdfReader

    def extract(path: str) -> str:
        reader = PdfReader(path)
        return "\n".join(page.extract_text() or "" for page in reader.pages)

    return extract


def _pdfminer_extractor() -> Extractor:
    from pdfminer.high_level import extract_text

    def extract(path: str) -> str:
        return str(extract_text(path))

    return extract


def _unstructured_extractor(*, forced: bool = False) -> Extractor:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    import spacy
    from unstructured.nlp import tokenize

    def blank_pipeline(*_args: Any, **_kwargs: Any) -> Any:
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        return nlp

    try:
        spacy.load("en_core_web_sm")
    except OSError:  # not installed: never download, use the blank pipeline instead
        tokenize._load_spacy_model = blank_pipeline
        tokenize._get_nlp.cache_clear()
    import unstructured.partition.pdf as unstructured_pdf
    from unstructured.partition.pdf import partition_pdf

    if forced:
        # unstructured's fast strategy silently returns nothing for a PDF its heuristic calls
        # "too complex" (it falls back to hi_res, whose model is not installed); with the check
        # off, this measures what its fast path costs when it really extracts every page.
        unstructured_pdf.is_pdf_too_complex = lambda *_args, **_kwargs: False

    def extract(path: str) -> str:
        elements = partition_pdf(filename=path, strategy="fast", languages=["eng"])
        return "\n\n".join(element.text for element in elements)

    return extract


def _make_extractor(engine: str) -> Extractor:
    if engine == "p8fs":
        return _p8fs_extractor(chunk=True, layout=False)
    if engine == "p8fs-extract":
        return _p8fs_extractor(chunk=False, layout=False)
    if engine == "p8fs-layout":
        return _p8fs_extractor(chunk=False, layout=True)
    if engine == "pypdfium2":
        return _pypdfium2_extractor()
    if engine == "pypdf":
        return _pypdf_extractor()
    if engine == "pdfminer.six":
        return _pdfminer_extractor()
    if engine == "unstructured":
        return _unstructured_extractor()
    if engine == "unstructured-forced":
        return _unstructured_extractor(forced=True)
    raise SystemExit(f"unknown engine {engine!r}")


#: The corpus PDFs a book is assembled from, and how many copies of each (in this order).
BOOK_PARTS = (("pdf/spf_GeoTopo-komprimiert.pdf", 5), ("pdf/pdfjs_tracemonkey.pdf", 3))


def build_book(corpus: Path, target: Path) -> int:
    """Write a book-length PDF assembled from :data:`BOOK_PARTS` to ``target``; its page count."""
    import pypdfium2

    book = pypdfium2.PdfDocument.new()
    try:
        for relative, copies in BOOK_PARTS:
            part = pypdfium2.PdfDocument(corpus / relative)
            try:
                for _ in range(copies):
                    book.import_pages(part)
            finally:
                part.close()
        book.save(target)
        return len(book)
    finally:
        book.close()


def run_book_worker() -> None:
    """Read ``{"book": path, "repeat": n, "warmup": path}``; time raw pypdfium2 and p8fs on it.

    Alternating the two in one process puts both under the same load, run by run.
    """
    import asyncio
    import logging
    import statistics
    import tempfile

    logging.disable(logging.WARNING)
    job = json.load(sys.stdin)
    book, warmup = job["book"], job["warmup"]
    raw = _pypdfium2_extractor()

    from p8fs.database import Database
    from p8fs.pipeline import aingest

    async def ingest(path: str, folder: str) -> tuple[float, float, int]:
        database = Database(f"sqlite+aiosqlite:///{folder}/p8fs.db")
        try:
            # A worker that has stored a file before: tables created, connections open.
            await aingest(warmup, "bench", database=database)
            start, start_cpu = time.perf_counter(), time.process_time()
            result = await aingest(path, "bench", database=database)
            return time.perf_counter() - start, time.process_time() - start_cpu, result.chunks
        finally:
            await database.dispose()

    def p8fs_once(path: str) -> tuple[float, float, int]:
        with tempfile.TemporaryDirectory(prefix="p8fs-book-") as folder:
            return asyncio.run(ingest(path, folder))

    def raw_once(path: str) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        raw(path)
        return time.perf_counter() - start, time.process_time() - start_cpu

    raw_once(warmup)
    p8fs_once(warmup)
    raw_runs: list[tuple[float, float]] = []
    p8fs_runs: list[tuple[float, float]] = []
    chunks = 0
    for _ in range(job["repeat"]):
        raw_runs.append(raw_once(book))
        wall, cpu, chunks = p8fs_once(book)
        p8fs_runs.append((wall, cpu))
    median = statistics.median
    json.dump(
        {
            "raw_seconds": [w for w, _ in raw_runs],
            "p8fs_seconds": [w for w, _ in p8fs_runs],
            "raw_median": median(w for w, _ in raw_runs),
            "p8fs_median": median(w for w, _ in p8fs_runs),
            "raw_cpu_median": median(c for _, c in raw_runs),
            "p8fs_cpu_median": median(c for _, c in p8fs_runs),
            "chunks": chunks,
        },
        sys.stdout,
    )


def book_benchmark(corpus: Path, repeat: int, json_path: Path | None) -> None:
    """``--book``: the whole-file comparison described in the module docstring."""
    import statistics
    import tempfile

    with tempfile.TemporaryDirectory(prefix="p8fs-book-") as folder:
        book = Path(folder) / "book.pdf"
        pages = build_book(corpus, book)
        size = book.stat().st_size
        job = {"book": str(book), "repeat": repeat, "warmup": str(corpus / BOOK_PARTS[-1][0])}
        load_before = os.getloadavg()[0]
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--book-worker"],
            input=json.dumps(job).encode(),
            capture_output=True,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
            check=False,
        )
        load_after = os.getloadavg()[0]
    if done.returncode != 0:
        raise SystemExit(done.stderr.decode("utf-8", "replace"))
    result = json.loads(done.stdout)
    result.update(pages=pages, bytes=size)
    result["ratio"] = result["p8fs_median"] / result["raw_median"]
    result["cpu_ratio"] = result["p8fs_cpu_median"] / result["raw_cpu_median"]
    # Each p8fs run follows a raw run: their ratio sees the same load, so its median drifts
    # less than the ratio of medians when other work comes and goes; the best runs are the
    # least disturbed (the per-file table above uses best-of too).
    result["paired_ratio"] = statistics.median(
        p / r for p, r in zip(result["p8fs_seconds"], result["raw_seconds"], strict=True)
    )
    result["best_ratio"] = min(result["p8fs_seconds"]) / min(result["raw_seconds"])
    result["load_average"] = [load_before, load_after]
    print(
        f"book: {pages} pages ({' + '.join(f'{Path(p).name} x{n}' for p, n in BOOK_PARTS)}), "
        f"{result['chunks']} chunks, {repeat} runs each, load average {load_before:.1f} -> "
        f"{load_after:.1f} on {os.cpu_count()} CPUs\n"
    )
    print("| engine | median wall s | median CPU s | runs (wall s) |")
    print("|---|--:|--:|---|")
    for engine in ("raw", "p8fs"):
        runs = ", ".join(f"{s:.2f}" for s in result[f"{engine}_seconds"])
        name = "raw pypdfium2" if engine == "raw" else "p8fs (extract, chunk, store)"
        print(
            f"| {name} | {result[f'{engine}_median']:.2f} | {result[f'{engine}_cpu_median']:.2f} "
            f"| {runs} |"
        )
    print(
        f"\np8fs / raw: {result['ratio']:.2f} wall (median of pairs {result['paired_ratio']:.2f}, "
        f"best {result['best_ratio']:.2f}), {result['cpu_ratio']:.2f} CPU (target: wall <= 1.5)"
    )
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_worker(engine: str) -> None:
    """Read ``{"files": [...], "repeat": n, "warmup": path}`` on stdin, print results as JSON."""
    import logging

    logging.disable(logging.WARNING)  # pdfminer and friends log per object; not our output
    job = json.load(sys.stdin)
    extract = _make_extractor(engine)
    extract(job["warmup"])
    baseline = _maxrss_mb()
    results = []
    for path in job["files"]:
        best = best_cpu = float("inf")
        text = ""
        for _ in range(job["repeat"]):
            start, start_cpu = time.perf_counter(), time.process_time()
            text = extract(path)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
            best = min(best, time.perf_counter() - start)
        results.append({"file": path, "seconds": best, "cpu_seconds": best_cpu, "text": text})
    json.dump(
        {"engine": engine, "results": results, "baseline_mb": baseline, "peak_mb": _maxrss_mb()},
        sys.stdout,
    )


# -- the comparison ---------------------------------------------------------------------------


def normalise_tokens(text: str) -> list[str]:
    import unicodedata

    return unicodedata.normalize("NFKC", text).split()


def agreement(reference: list[str], candidate: list[str]) -> tuple[int, int, int, float]:
    """(common tokens, reference tokens, candidate tokens, matched tokens in order)."""
    import difflib

    common = sum((Counter(reference) & Counter(candidate)).values())
    matcher = difflib.SequenceMatcher(None, reference, candidate, autojunk=False)
    in_order = sum(block.size for block in matcher.get_matching_blocks())
    return common, len(reference), len(candidate), in_order


def pdftotext(path: Path) -> str | None:
    try:
        done = subprocess.run(
            ["pdftotext", "-enc", "UTF-8", str(path), "-"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SystemExit(
            "pdftotext not found: install poppler-utils (apt-get install poppler-utils)"
        ) from exc
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def page_count(path: Path) -> int:
    import pypdfium2

    with pypdfium2.PdfDocument(path) as doc:
        return len(doc)


def select_files(corpus: Path) -> tuple[list[Path], dict[str, str], dict[str, str]]:
    """The text-layer PDFs, their pdftotext references, and the files left out with why."""
    candidates = sorted((corpus / "pdf").glob("*.pdf")) + sorted(
        (corpus / "p8fs_sample_data").rglob("*.pdf")
    )
    chosen: list[Path] = []
    references: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for path in candidates:
        if path.name in REFERENCE_UNRELIABLE:
            skipped[path.name] = REFERENCE_UNRELIABLE[path.name]
            continue
        text = pdftotext(path)
        if text is None:
            skipped[path.name] = "pdftotext cannot open it (password or damage)"
        elif not text.strip():
            skipped[path.name] = "no text layer (image only)"
        else:
            chosen.append(path)
            references[str(path)] = text
    return chosen, references, skipped


def run_engine(engine: str, python: str, files: list[Path], repeat: int) -> dict[str, Any] | str:
    """The worker's JSON result, or why the engine could not run."""
    job = {
        "files": [str(f) for f in files],
        "repeat": repeat if engine in FAST_ENGINES else 1,
        "warmup": str(min(files, key=lambda f: f.stat().st_size)),
    }
    env = dict(os.environ, DO_NOT_TRACK="1", SCARF_NO_ANALYTICS="true", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker", engine],
        input=json.dumps(job).encode(),
        capture_output=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return " | ".join(tail) or f"exit status {done.returncode}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def print_table(rows: list[dict[str, Any]], by_engine: dict[str, dict[str, Any]]) -> None:
    """The summary as a Markdown table (ready to paste into a report)."""

    def ratio(
        row: dict[str, Any], peer: str, *, inverse: bool = False, key: str = "pages_per_second"
    ) -> str:
        other = by_engine.get(peer)
        if other is None:
            return "-"
        if inverse:
            return f"{other[key] / row[key]:.2f}"
        return f"{row[key] / other[key]:.1f}x"

    print(
        "| engine | pages | CPU s | pages/s | x unstr. | x forced | raw/this | common pages/s "
        "| x unstr. (common) | peak MB | +MB | F1 | order | no text |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['pages']} | {row['cpu_seconds']:.3f} "
            f"| {row['pages_per_second']:.1f} | {ratio(row, 'unstructured')} "
            f"| {ratio(row, 'unstructured-forced')} | {ratio(row, 'pypdfium2', inverse=True)} "
            f"| {row['common_pages_per_second']:.1f} "
            f"| {ratio(row, 'unstructured', key='common_pages_per_second')} "
            f"| {row['peak_rss_mb']:.1f} | {row['rss_growth_mb']:.1f} | {row['f1']:.3f} "
            f"| {row['order']:.3f} | {row['pages_in_empty_results']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per file and round for fast engines"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (fast engines)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument(
        "--unstructured-python",
        help="interpreter where unstructured.partition.pdf imports (see the module docstring)",
    )
    parser.add_argument("--per-file", action="store_true", help="also print per-file agreement")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument(
        "--book",
        action="store_true",
        help="only the book-length PDF: whole-file wall time of p8fs next to raw pypdfium2",
    )
    parser.add_argument("--no-book", action="store_true", help="skip the book-length PDF")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--book-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    if args.book_worker:
        run_book_worker()
        return
    if args.book:
        book_benchmark(args.corpus, max(args.repeat, 1), args.json)
        return

    files, references, skipped = select_files(args.corpus)
    if not files:
        raise SystemExit(f"no text-layer PDFs found under {args.corpus}")
    pages = {str(f): page_count(f) for f in files}
    total_pages = sum(pages.values())
    ref_tokens = {k: normalise_tokens(v) for k, v in references.items()}
    print(f"{len(files)} PDFs with a text layer, {total_pages} pages; left out:")
    for name, why in skipped.items():
        print(f"  {name}: {why}")
    print()

    engines = args.engines.split(",")
    outcomes: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    # Rounds alternate the engines, so load from other processes on a shared machine spreads
    # over all of them instead of penalising whichever ran at a bad moment.
    for round_number in range(args.rounds):
        for engine in engines:
            if engine in failures or (round_number and engine not in FAST_ENGINES):
                continue
            python = sys.executable
            if engine in UNSTRUCTURED_ENGINES:
                python = args.unstructured_python or sys.executable
            print(f"round {round_number + 1}: {engine} ...", file=sys.stderr, flush=True)
            outcome = run_engine(engine, python, files, args.repeat)
            if isinstance(outcome, str):
                failures[engine] = outcome
            elif engine not in outcomes:
                outcomes[engine] = outcome
            else:
                merged = outcomes[engine]
                for old, new in zip(merged["results"], outcome["results"], strict=True):
                    old["seconds"] = min(old["seconds"], new["seconds"])
                    old["cpu_seconds"] = min(old["cpu_seconds"], new["cpu_seconds"])
                merged["peak_mb"] = max(merged["peak_mb"], outcome["peak_mb"])
                merged["baseline_mb"] = min(merged["baseline_mb"], outcome["baseline_mb"])

    # The files every engine returned some text for: throughput on these compares equal work
    # (unstructured as shipped returns nothing, quickly, for a PDF it deems "too complex").
    common_files = {
        str(f)
        for f in files
        if all(
            item["text"].strip()
            for outcome in outcomes.values()
            for item in outcome["results"]
            if item["file"] == str(f)
        )
    }
    common_pages = sum(pages[f] for f in common_files)
    rows: list[dict[str, Any]] = []
    per_file: dict[str, dict[str, float]] = {}
    for engine in engines:
        if engine not in outcomes:
            continue
        outcome = outcomes[engine]
        seconds = cpu_seconds = common_cpu_seconds = 0.0
        common = ref_total = cand_total = in_order = 0
        empty_pages = 0
        for item in outcome["results"]:
            seconds += item["seconds"]
            cpu_seconds += item["cpu_seconds"]
            if item["file"] in common_files:
                common_cpu_seconds += item["cpu_seconds"]
            tokens = normalise_tokens(item["text"])
            if not tokens:
                empty_pages += pages[item["file"]]
            c, r, n, o = agreement(ref_tokens[item["file"]], tokens)
            common, ref_total, cand_total, in_order = (
                common + c,
                ref_total + r,
                cand_total + n,
                in_order + o,
            )
            f1 = 2 * c / (r + n) if r + n else 1.0
            per_file.setdefault(Path(item["file"]).name, {})[engine] = f1
        rows.append(
            {
                "engine": engine,
                "pages": total_pages,
                "pages_in_empty_results": empty_pages,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "pages_per_second": total_pages / cpu_seconds if cpu_seconds else float("inf"),
                "wall_pages_per_second": total_pages / seconds if seconds else float("inf"),
                "common_pages": common_pages,
                "common_pages_per_second": (
                    common_pages / common_cpu_seconds if common_cpu_seconds else float("inf")
                ),
                "peak_rss_mb": outcome["peak_mb"],
                "rss_growth_mb": outcome["peak_mb"] - outcome["baseline_mb"],
                "f1": 2 * common / (ref_total + cand_total) if ref_total + cand_total else 1.0,
                "order": 2 * in_order / (ref_total + cand_total) if ref_total + cand_total else 1.0,
            }
        )

    by_engine = {row["engine"]: row for row in rows}
    print_table(rows, by_engine)
    print(
        f"\ncommon files (every engine returned text): {len(common_files)} of {len(files)} files, "
        f"{common_pages} of {total_pages} pages"
    )
    for engine, why in failures.items():
        print(f"| {engine} | could not run: {why} |")
    print(
        "\npages/s from CPU time (the machine is shared, wall time is noisy; wall figures in the "
        "--json output). x unstr. / x forced = pages/s relative to unstructured fast as shipped / "
        "with its complexity check off;\ncommon pages/s = on the files every engine returned "
        "text for (equal work); raw/this = raw pypdfium2 pages/s over this engine's "
        "(target for p8fs, chunking included: <= 1.5); peak MB = worker's max RSS; +MB = growth "
        "during extraction after imports and warm-up;\nF1/order = agreement with pdftotext; no "
        "text = pages of files for which the engine returned no text at all."
    )
    if args.per_file:
        engines = [row["engine"] for row in rows]
        print("\nper-file token F1 against pdftotext")
        print(f"{'file':<44}" + "".join(f"{e[:13]:>14}" for e in engines))
        for name, scores in per_file.items():
            print(
                f"{name[:43]:<44}"
                + "".join(f"{scores.get(e, float('nan')):>14.3f}" for e in engines)
            )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "failures": failures, "skipped": skipped}, indent=2)
        )
    if not args.no_book:
        print()
        book_json = args.json.with_suffix(".book.json") if args.json else None
        book_benchmark(args.corpus, max(args.repeat, 5), book_json)


if __name__ == "__main__":
    main()
