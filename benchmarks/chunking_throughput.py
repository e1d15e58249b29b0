"""Chunking throughput, side by side with the peers that bound it.

Chunking runs on every page of every file, so its cost is judged against two floors measured in
the same process on the same text: one plain tokenization pass (quicktok, the engine p8fs
counts with, and tiktoken) — a token-exact chunker cannot be cheaper than tokenizing once — and,
when installed, LangChain's tiktoken-based recursive splitter, the usual tool for this job
(``uv run --with langchain-text-splitters python benchmarks/chunking_throughput.py``).

Texts: the corpus' ``Sample.md`` (413 KB of Markdown) and the text layer of
``spf_GeoTopo-komprimiert.pdf`` (German, extracted with pypdfium2 when it is installed), each
cut into the sections the pipeline would feed the chunker.

Run: ``uv run --all-packages --all-extras python benchmarks/chunking_throughput.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p8fs.chunking import SECTION_SEPARATOR, RecordChunker, TokenChunker
from p8fs.providers import ExtractContext, Section
from p8fs.tokens import get_encoding, get_tokenizer
from tests.fixtures.servers import CORPUS_DIR


def markdown_sections() -> list[Section]:
    from p8fs.builtin.text import TextProvider

    path = CORPUS_DIR / "p8fs_sample_data" / "content" / "Sample.md"
    return list(TextProvider().extract(path, ExtractContext(filename=path.name)))


def pdf_sections() -> list[Section] | None:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        return None
    pdf = pdfium.PdfDocument(str(CORPUS_DIR / "pdf" / "spf_GeoTopo-komprimiert.pdf"))
    try:
        return [
            Section(pdf[i].get_textpage().get_text_range(), {"page": i + 1})
            for i in range(len(pdf))
        ]
    finally:
        pdf.close()


def best_of(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(label: str, sections: list[Section], repeat: int) -> None:
    text = SECTION_SEPARATOR.join(s.text for s in sections)
    megabytes = len(text.encode()) / 1e6
    tokenizer = get_tokenizer("o200k_base")
    encoding = get_encoding("o200k_base")
    runs: dict[str, Callable[[], object]] = {
        "quicktok encode (1 pass)": lambda: tokenizer.encode(text),
        "tiktoken encode_ordinary (1 pass)": lambda: encoding.encode_ordinary(text),
        "p8fs TokenChunker 512/64": lambda: sum(1 for _ in TokenChunker(512, 64).chunk(sections)),
        "p8fs TokenChunker 256/0": lambda: sum(1 for _ in TokenChunker(256, 0).chunk(sections)),
        "p8fs RecordChunker 512 (sections as records)": lambda: sum(
            1 for _ in RecordChunker(512).chunk(sections)
        ),
    }
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
            encoding_name="o200k_base", chunk_size=512, chunk_overlap=64
        )
        runs["langchain recursive splitter 512/64"] = lambda: splitter.split_text(text)
    except ImportError:
        pass
    print(
        f"\n{label}: {megabytes:.2f} MB, {len(sections)} sections, "
        f"{tokenizer.count(text)} o200k tokens"
    )
    floor = None
    for name, run in runs.items():
        seconds = best_of(repeat, run)
        floor = floor or seconds
        print(
            f"  {name:46s} {megabytes / seconds:7.2f} MB/s   {seconds / floor:5.2f}x one quicktok pass"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    get_tokenizer().count("warm up")  # loading the vocabulary is not chunking
    measure("Sample.md", markdown_sections(), args.repeat)
    pdf = pdf_sections()
    if pdf is None:
        print("\nGeoTopo PDF skipped: pypdfium2 is not installed (p8fs-node[pdf])")
    else:
        measure("spf_GeoTopo-komprimiert.pdf text", pdf, args.repeat)
    print(f"\npython {sys.version.split()[0]}; best of {args.repeat} runs each")


if __name__ == "__main__":
    main()
