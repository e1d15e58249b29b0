"""A bounded-memory buffer for the rows of a file being extracted.

A provider streams chunks for as long as extraction takes (minutes for a long recording). Holding
a database transaction open all that time would block every other writer (SQLite has one write
lock) and grow TiDB's transaction, yet keeping every chunk in memory would make memory grow with
the file. So rows go here first: in memory up to a limit, then into an anonymous temporary file;
once the provider is done, one short transaction reads them back in batches.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import Any

#: Bytes kept in memory before the spool moves to a temporary file.
DEFAULT_MEMORY_LIMIT = 32 * 1024 * 1024


class RowSpool:
    """Append batches of row dicts, then iterate them back in the same order, once or more."""

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=memory_limit)
        self.rows = 0

    def write(self, batch: list[dict[str, Any]]) -> None:
        if batch:
            # Our own rows, read back by this process only: pickle keeps datetimes exact.
            pickle.dump(batch, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self.rows += len(batch)

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        self._file.seek(0)
        while True:
            try:
                yield pickle.load(self._file)
            except EOFError:
                return

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
