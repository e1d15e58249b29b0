"""Built-in chunkers plugin: registers the token chunker and the record chunker.

They go through ``p8fs_register_chunkers`` like any third-party chunker, so
``P8FS_DISABLE_PLUGINS=p8fs.builtin.chunkers`` really removes them.
"""

from __future__ import annotations

from collections.abc import Callable

from p8fs import hookimpl
from p8fs.chunking import Chunker, RecordChunker, TokenChunker


@hookimpl
def p8fs_register_chunkers(register: Callable[[type[Chunker]], None]) -> None:
    register(TokenChunker)
    register(RecordChunker)


__all__ = ["p8fs_register_chunkers"]
