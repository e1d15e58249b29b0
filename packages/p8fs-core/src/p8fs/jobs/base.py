"""What every LLM job shares: a database it either borrows or owns."""

from __future__ import annotations

from p8fs.database import Database
from p8fs.settings import Settings


class DatabaseWorker:
    """A worker that uses the caller's :class:`Database` or opens (and later closes) its own.

    Notebook users pass nothing and get the configured database; services pass theirs and keep
    ownership of it.
    """

    def __init__(self, settings: Settings | None = None, database: Database | None = None) -> None:
        self.settings = settings or Settings()
        self._database = database
        self._owns_database = database is None
        self._schema_ready = database is not None

    async def database(self) -> Database:
        if self._database is None:
            self._database = Database.from_settings(self.settings)
        if not self._schema_ready:
            await self._database.init_schema()
            self._schema_ready = True
        return self._database

    async def close(self) -> None:
        if self._owns_database and self._database is not None:
            await self._database.dispose()
            self._database = None
