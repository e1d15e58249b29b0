"""Seeded mutation of real files: the damage that hostile or broken uploads really carry.

Byte-level mutations (bit flips, overwritten bytes, truncation, zeroed ranges, splices from the
same or another file, duplicated ranges) model transport damage and crude attacks; "interesting
numbers" rewrite the ASCII integers that PDF, XML and subtitle files use for lengths, counts,
offsets and timestamps; ZIP-based documents are also mutated *inside* a member and re-packed,
which gets past the CRC checks that would reject nearly every raw byte flip, to the XML parsers
behind them. Everything is drawn from a ``random.Random`` seeded per file and example, so a
failure names a seed that reproduces it exactly.
"""

from __future__ import annotations

import io
import random
import re
import zipfile
from collections.abc import Callable

Mutation = Callable[[random.Random, bytes, list[bytes]], bytes]

#: Values that break parsers: zero, negatives, sign and width boundaries, huge counts.
INTERESTING_NUMBERS = (
    b"0",
    b"-1",
    b"1",
    b"255",
    b"65535",
    b"65536",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"99999999999999999999",
    b"-2147483648",
    b"1e308",
)
_NUMBER = re.compile(rb"-?\d+")


def _span(rng: random.Random, data: bytes, most: int) -> tuple[int, int]:
    start = rng.randrange(len(data))
    return start, min(len(data), start + rng.randint(1, max(1, most)))


def flip_bits(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite_bytes(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    # Often near the end (where PDFs keep their cross-reference table), sometimes anywhere.
    if rng.random() < 0.5:
        return data[: max(1, len(data) - rng.randint(1, min(len(data) - 1, 4096) or 1))]
    return data[: rng.randint(1, len(data))]


def zero_range(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    start, end = _span(rng, data, max(16, len(data) // 8))
    return data[:start] + bytes(end - start) + data[end:]


def splice(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """A range of this file or another one, inserted or written over a random place."""
    donor = rng.choice([data, *others])
    start, end = _span(rng, donor, 4096)
    piece = donor[start:end]
    at = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:at] + piece + data[at:]
    return data[:at] + piece + data[at + len(piece) :]


def duplicate_range(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    start, end = _span(rng, data, 2048)
    copies = rng.choice((1, 2, 16, 256))
    return data[:end] + data[start:end] * copies + data[end:]


def interesting_number(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    """Replace one ASCII integer (a length, count, offset, size or timestamp) by a bad value."""
    matches = list(_NUMBER.finditer(data, 0, min(len(data), 1 << 20)))
    if not matches:
        return overwrite_bytes(rng, data, [])
    match = rng.choice(matches)
    return data[: match.start()] + rng.choice(INTERESTING_NUMBERS) + data[match.end() :]


BYTE_MUTATIONS: tuple[Mutation, ...] = (
    flip_bits,
    overwrite_bytes,
    truncate,
    zero_range,
    splice,
    duplicate_range,
    interesting_number,
)


def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
    """One to three byte-level mutations; returns the result and their names."""
    names = []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(BYTE_MUTATIONS)
        data = mutation(rng, data, others) or b"\0"
        names.append(mutation.__name__)
    return data, "+".join(names)


def mutate_zip_member(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
    """Mutate the content of one member of a ZIP-based document and re-pack it with valid
    CRCs, so the damage reaches the XML or media parser instead of the ZIP layer."""
    source = zipfile.ZipFile(io.BytesIO(data))
    infos = [i for i in source.infolist() if not i.is_dir() and i.file_size]
    # Prefer the XML that carries the text; media members are rarely parsed.
    textual = [
        i
        for i in infos
        if i.filename.endswith((".xml", ".rels", ".html", ".xhtml", ".opf", ".ncx"))
    ]
    target = rng.choice(textual or infos)
    content, how = mutate_bytes(rng, source.read(target), [])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            body = content if info.filename == target.filename else source.read(info)
            archive.writestr(info, body)
    return out.getvalue(), f"member {target.filename}: {how}"


def mutant(
    seed: int, data: bytes, others: list[bytes], *, zipped: bool = False
) -> tuple[bytes, str]:
    """The mutant of ``data`` for ``seed`` (deterministic) and a description of what changed."""
    rng = random.Random(seed)
    if zipped and rng.random() < 0.6:
        try:
            return mutate_zip_member(rng, data, others)
        except zipfile.BadZipFile:
            pass
    return mutate_bytes(rng, data, others)
