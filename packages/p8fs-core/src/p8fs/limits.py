"""Safety limits against hostile files, each defined once.

A limit has three faces: the default below, the ``P8FS_MAX_*`` setting (whose default *is* the
value below) and the per-call option of the same name. The pipeline passes the configured
settings to every provider as options; a provider imported on its own, with no pipeline and no
settings, falls back to the defaults here. Providers therefore never keep a copy of a default,
and a limit changed here changes everywhere at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

LimitName = Literal[
    "max_pages",
    "max_uncompressed_bytes",
    "max_compression_ratio",
    "max_image_pixels",
    "max_duration_seconds",
]


@dataclass(frozen=True)
class ExtractionLimits:
    """The limits one extraction runs under (see each setting's description for its meaning)."""

    #: Pages a PDF may have: far beyond any real book, far below what exhausts memory.
    max_pages: int = 10_000
    #: Bytes a document may expand to when decompressed (office ZIP members or PDF streams
    #: together): real documents with large images stay far below it, a bomb does not.
    max_uncompressed_bytes: int = 1024**3
    #: Expansion ratio of one member or stream, once it decompresses to more than 16 MiB.
    max_compression_ratio: int = 1000
    #: Pixels an image may declare: Pillow's own decompression-bomb guard.
    max_image_pixels: int = 89_478_485
    #: Seconds of audio or video: one day.
    max_duration_seconds: float = 24 * 3600.0

    def as_options(self) -> dict[str, int | float]:
        """The limits as provider options, keyed by their names."""
        return asdict(self)


DEFAULT_LIMITS = ExtractionLimits()


def extraction_limit(options: Mapping[str, Any], name: LimitName) -> Any:
    """The limit ``name`` for one call: the call's option when given, else the default.

    ``None`` counts as not given, so an option left unset by a caller never disables a limit.
    """
    value = options.get(name)
    return getattr(DEFAULT_LIMITS, name) if value is None else value
