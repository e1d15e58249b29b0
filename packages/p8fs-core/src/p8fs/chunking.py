"""Chunkers: cut a document's sections into chunks of at most N tokens, losing nothing.

Contract (checked by property tests): the document text is the sections' texts joined by
:data:`SECTION_SEPARATOR`; concatenating every chunk's ``text[chunk.overlap:]`` gives that text
back exactly, and no chunk exceeds ``max_tokens`` unless a single indivisible unit does.
Structure (page numbers, headings, time ranges) travels in each chunk's ``metadata``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from p8fs.providers import Section

#: What stands between two sections' texts in the document text a chunker reproduces.
SECTION_SEPARATOR = "\n\n"


@dataclass(slots=True)
class Chunk:
    """One stored piece of text.

    ``overlap`` is how many leading characters of ``text`` repeat the end of the previous chunk
    (0 for the first), so the original is ``"".join(c.text[c.overlap:] for c in chunks)``.
    """

    text: str
    index: int
    token_count: int
    overlap: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


class Chunker(ABC):
    """Base class of chunkers registered through ``p8fs_register_chunkers``."""

    name: ClassVar[str]

    def __init__(self, max_tokens: int = 512, overlap_tokens: int = 64, encoding: str = "o200k_base"):
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError("overlap_tokens must be >= 0 and smaller than max_tokens")
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.encoding = encoding

    @abstractmethod
    def chunk(self, sections: Iterable[Section]) -> Iterator[Chunk]:
        """Yield chunks in order, consuming ``sections`` lazily (memory must not grow with input)."""
