"""The repository every part of p8fs stores through: one class, three dialects, real transactions.

:class:`Database` wraps one SQLAlchemy async engine. Each public method is one transaction and
is scoped to a tenant wherever the table has one, so no call can read or overwrite another
tenant's rows (the tenant also leads every primary key: even a colliding id stays separate).

Every operation is a plain synchronous function of a SQLAlchemy ``Connection``, run in one
transaction by :meth:`Database._run` (reads) or :meth:`Database._write` (writes). On PostgreSQL
and TiDB that is ``AsyncConnection.run_sync`` over the async driver. On a SQLite file it is the
standard ``sqlite3`` driver in a thread: one hop per transaction, where aiosqlite makes three
or four per statement (measured: 2.4 ms of CPU per stored file instead of 7.7), and all writes
go through one writer thread, so our own writers never wait on each other's lock.

Failures are sorted for the queue (see :mod:`p8fs.database.errors`): a database that is down,
locked or deadlocked raises :class:`~p8fs.errors.TransientError` so the message is retried; a
violated constraint raises SQLAlchemy's own ``IntegrityError`` and rolls everything back.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import (
    Table,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine, Row, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import ColumnElement

from p8fs.database import schema, search_sql
from p8fs.database.errors import UnstorableText, classify, safe_url
from p8fs.database.filters import file_filters
from p8fs.database.spool import RowSpool
from p8fs.errors import ConfigurationError, InvalidPath, TransientError
from p8fs.ids import content_hash, uri_hash
from p8fs.models import (
    FINAL_JOB_STATUSES,
    ErrorRecord,
    FileRecord,
    Job,
    JobStatus,
    Moment,
    Resource,
    Session,
)

if TYPE_CHECKING:
    from p8fs.settings import Settings

RecordT = TypeVar("RecordT", bound=BaseModel)
#: One unit of work, run inside a transaction the database layer opens.
Op = Callable[[Connection], Any]

#: Most writes one group commit carries (each file's rows are spooled, so this bounds time).
GROUP_COMMIT_MAX = 64
T = TypeVar("T")

#: Resources inserted per statement when storing a stream (bounded statement size).
RESOURCE_BATCH_SIZE = 200

#: SQLite waits this long for another writer's lock before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: Threads reading a SQLite file at once (WAL: readers never wait for the writer).
SQLITE_READERS = 4

#: URL backend names -> the dialect family this class speaks.
_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}

#: Columns holding JSON, per table (dumped in pydantic's JSON mode so nested datetimes survive).
_JSON_COLUMNS: dict[str, frozenset[str]] = {
    table.name: frozenset(c.name for c in table.columns if "JSON" in type(c.type).__name__.upper())
    for table in schema.TABLES
}


def _json_dumps(value: Any) -> str:
    # ensure_ascii=False keeps non-ASCII text readable in the database (and smaller).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Database:
    """Async access to the p8fs tables on SQLite, PostgreSQL or TiDB/MySQL.

    Construct it with a SQLAlchemy async URL (``sqlite+aiosqlite:///…``,
    ``postgresql+asyncpg://…``, ``mysql+aiomysql://…``) or :meth:`from_settings`; call
    :meth:`init_schema` once (it is idempotent) and :meth:`dispose` (or use ``async with``) at the
    end. Creating the object does not connect.
    """

    url: str
    dialect: str

    def __init__(
        self,
        url: str,
        *,
        sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
        group_commit: bool | None = None,
        text_search_config: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigurationError(
                f"P8FS_DATABASE_URL is not a valid SQLAlchemy URL: {type(exc).__name__}"
            ) from exc
        dialect = _DIALECTS.get(parsed.get_backend_name())
        if dialect is None:
            raise ConfigurationError(
                f"unsupported database {safe_url(parsed)}: use sqlite+aiosqlite, "
                "postgresql+asyncpg or mysql+aiomysql (P8FS_DATABASE_URL / P8FS_STORAGE_PROVIDER)"
            )
        self.url = url
        self.dialect = dialect
        #: PostgreSQL text-search configuration of the keyword index (``P8FS_SEARCH_TEXT_CONFIG``);
        #: ``None`` keeps whatever the index was built with (``english`` for a new one).
        self.text_search_config = text_search_config
        #: How keyword queries are answered (set by :meth:`init_schema`, else on first search).
        self.keyword_backend: str | None = None
        self._pg_text_config: str | None = None
        #: Coalesce concurrent writes into shared transactions (default: on for SQLite, whose
        #: writers queue for one lock anyway, so one commit for many files is pure gain).
        self.group_commit = dialect == "sqlite" if group_commit is None else group_commit
        self._pending_writes: list[tuple[Op, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._url: URL = parsed
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps}
        if dialect != "sqlite":
            # A restarted server leaves dead connections in the pool: test them before use.
            kwargs.update(pool_pre_ping=True, pool_recycle=1800)
        if dialect == "mysql":
            # UTC sessions, so CURRENT_TIMESTAMP defaults are UTC like every value we write.
            connect_args: dict[str, Any] = {"init_command": "SET time_zone = '+00:00'"}
            if "charset" not in parsed.query:
                connect_args["charset"] = "utf8mb4"
            kwargs["connect_args"] = connect_args
            # InnoDB's REPEATABLE READ takes gap locks on DELETE … WHERE file_id = ?, so two
            # files stored at once deadlock each other; READ COMMITTED takes none (TiDB's
            # pessimistic mode supports it too).
            kwargs["isolation_level"] = "READ COMMITTED"
        extra_connect_args = engine_kwargs.pop("connect_args", None) or {}
        kwargs.update(engine_kwargs)
        if extra_connect_args:
            kwargs["connect_args"] = {**kwargs.get("connect_args", {}), **extra_connect_args}
        try:
            self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        except ImportError as exc:
            raise ConfigurationError(
                f"the driver for {safe_url(parsed)} is not installed ({exc}); install "
                "p8fs-core[postgresql] or p8fs-core[tidb]"
            ) from exc
        #: The synchronous engine SQLite operations run on (in threads); ``None`` for server
        #: databases and in-memory SQLite (a memory database is per connection: it stays on
        #: the async engine's single connection).
        self.sqlite_engine: Engine | None = None
        self._sqlite_writer: ThreadPoolExecutor | None = None
        self._sqlite_readers: ThreadPoolExecutor | None = None
        if dialect == "sqlite":
            pragmas = _sqlite_pragmas(sqlite_busy_timeout_ms)
            event.listen(self.engine.sync_engine, "connect", pragmas)
            if parsed.database not in (None, "", ":memory:") and "mode=memory" not in url:
                self.sqlite_engine = create_engine(
                    parsed.set(drivername="sqlite+pysqlite"), **kwargs
                )
                event.listen(self.sqlite_engine, "connect", pragmas)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Database:
        """The database the settings point at; creates the SQLite file's folder if needed."""
        if settings is None:
            from p8fs.settings import get_settings

            settings = get_settings()
        url = settings.resolved_database_url()
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return cls(url, text_search_config=settings.search_text_config)

    def __repr__(self) -> str:
        return f"Database({safe_url(self._url)!r})"

    @property
    def safe_url(self) -> str:
        """The URL with the password masked."""
        return safe_url(self._url)

    # -- life cycle ---------------------------------------------------------------------

    async def init_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (safe to run any number of times).

        The statements are exactly :func:`~p8fs.database.schema.plan_ddl`'s, each with
        ``IF NOT EXISTS``, so what ``--plan`` shows is what is applied; the keyword index
        (:func:`~p8fs.database.schema.search_ddl`) is created only where the catalog lacks it.
        """
        statements = schema.ddl_statements(self.engine.dialect)

        def create(conn: Connection) -> None:
            for statement in statements:
                conn.exec_driver_sql(statement)
            self._setup_search(conn)

        for attempt in range(3):
            try:
                await self._write(create)
                return
            except Exception as exc:
                # Two processes initialising at once can both pass IF NOT EXISTS on PostgreSQL
                # and collide in its catalog; the second attempt then finds everything present.
                if attempt == 2 or "already exists" not in str(exc):
                    raise

    async def existing_tables(self) -> list[str]:
        """Which of the p8fs tables exist in the database now."""

        def _names(sync_conn: Any) -> list[str]:
            from sqlalchemy import inspect

            present = set(inspect(sync_conn).get_table_names())
            return [name for name in schema.TABLE_NAMES if name in present]

        names: list[str] = await self._run(_names)
        return names

    async def dispose(self) -> None:
        """Close every pooled connection (the object stays usable: it reconnects when used)."""
        await self.engine.dispose()
        writer, readers = self._sqlite_writer, self._sqlite_readers
        self._sqlite_writer = self._sqlite_readers = None
        for pool in (writer, readers):
            if pool is not None:
                pool.shutdown(wait=False)
        if self.sqlite_engine is not None:
            await asyncio.to_thread(self.sqlite_engine.dispose)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction on the async engine; connection failures become ``TransientError``."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            raise self._typed(exc) from exc

    def _typed(self, exc: Exception) -> BaseException:
        typed = classify(exc, self._url)
        return exc if typed is None else typed

    async def _transaction(self, ops: Sequence[Op], *, write: bool) -> list[Any]:
        """Run ``ops`` in one transaction and return their results (or raise, rolled back)."""
        if self.sqlite_engine is None:
            async with self._begin() as conn:
                return await conn.run_sync(lambda sync_conn: [op(sync_conn) for op in ops])
        pool = self._sqlite_pool(write)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, _sqlite_transaction, self.sqlite_engine, ops
            )
        except Exception as exc:
            raise self._typed(exc) from exc

    def _sqlite_pool(self, write: bool) -> ThreadPoolExecutor:
        if write:
            if self._sqlite_writer is None:
                self._sqlite_writer = ThreadPoolExecutor(1, thread_name_prefix="p8fs-sqlite-write")
            return self._sqlite_writer
        if self._sqlite_readers is None:
            self._sqlite_readers = ThreadPoolExecutor(
                SQLITE_READERS, thread_name_prefix="p8fs-sqlite-read"
            )
        return self._sqlite_readers

    async def _run(self, op: Op) -> Any:
        """A read, in a transaction of its own."""
        return (await self._transaction([op], write=False))[0]

    async def _write(self, op: Op) -> Any:
        """Run ``op`` in a write transaction and return its result once committed.

        With :attr:`group_commit`, writes that arrive while a commit is in progress wait and
        then share one transaction (one commit for many files). If that shared transaction
        fails, each write is retried alone, so one bad row fails only its own caller. Either
        way a caller returns only after its own rows are committed.
        """
        if not self.group_commit:
            return (await self._transaction([op], write=True))[0]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending_writes.append((op, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain_writes(), name="p8fs-group-commit")
        return await future

    async def _drain_writes(self) -> None:
        try:
            while self._pending_writes:
                batch = self._pending_writes[:GROUP_COMMIT_MAX]
                del self._pending_writes[:GROUP_COMMIT_MAX]
                await self._commit_group(batch)
        except BaseException as exc:
            # Cancelled with the loop: nobody may wait forever for a commit that never comes.
            for _, future in self._pending_writes:
                if not future.done():
                    future.set_exception(
                        TransientError("the database writer stopped", cause=str(exc))
                    )
            self._pending_writes.clear()
            raise

    async def _commit_group(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        if len(batch) > 1:
            try:
                results = await self._transaction([op for op, _ in batch], write=True)
            except Exception:
                pass  # somebody's write failed: retry each alone below
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
        for op, future in batch:
            try:
                [result] = await self._transaction([op], write=True)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    # -- files and resources --------------------------------------------------------------

    async def get_file(self, tenant_id: str, file_id: str) -> FileRecord | None:
        t = schema.files
        stmt = select(t).where(t.c.tenant_id == tenant_id, t.c.id == file_id)
        row = await self._run(lambda conn: conn.execute(stmt).first())
        return None if row is None else _to_model(FileRecord, row)

    async def get_file_by_uri(self, tenant_id: str, uri: str) -> FileRecord | None:
        t = schema.files
        # The hash finds the row through the unique index; comparing the uri too guards against
        # the (astronomically unlikely) collision.
        stmt = select(t).where(t.c.tenant_id == tenant_id, t.c.uri_hash == uri_hash(uri))
        rows = await self._run(lambda conn: conn.execute(stmt).all())
        for row in rows:
            if row.uri == uri:
                return _to_model(FileRecord, row)
        return None

    async def store_file(self, file: FileRecord, resources: Sequence[Resource]) -> None:
        """Upsert ``file`` and make ``resources`` its only resources, in one transaction.

        Either the file row and all its new resources are committed, or nothing changes: a
        failure half-way leaves the previous version intact.
        """
        file_row, resource_rows = self._file_rows(file, resources)
        await self._write(lambda conn: self._store_file(conn, file_row, resource_rows))

    async def store_file_stream(
        self,
        file: FileRecord | Callable[[], FileRecord],
        resources: AsyncIterable[Resource] | Iterable[Resource],
        *,
        batch_size: int = RESOURCE_BATCH_SIZE,
        job: Callable[[FileRecord], Job] | None = None,
    ) -> FileRecord:
        """:meth:`store_file` for resources that arrive while a provider is still extracting.

        ``resources`` is consumed first, into a bounded-memory :class:`RowSpool`, with no
        transaction open (an extraction error therefore changes nothing). ``file`` may be a
        callable, called once the resources are exhausted, so the row can carry the final
        ``chunk_count``. Then one short transaction upserts the file, deletes its old resources
        and inserts the new ones in batches. Returns the file record exactly as stored (call
        ``file`` only through here, so the row and what the caller reports are the same).
        ``job``, given the stored record, returns a ``jobs`` row committed in the same
        transaction (a queue worker's DONE, so it costs no commit of its own).
        """
        with RowSpool() as spool:
            batch: list[dict[str, Any]] = []
            hashes: dict[str, str] = {}
            async for resource in _aiter(resources):
                batch.append(_to_row(resource, schema.resources))
                hashes[resource.id] = content_hash(resource.content)
                if len(batch) >= batch_size:
                    spool.write(batch)
                    batch = []
            spool.write(batch)
            record = file() if callable(file) else file
            file_row = self._file_row(record)
            job_row = None if job is None else _to_row(job(record), schema.jobs)

            def store(conn: Connection) -> None:
                self._upsert(conn, schema.files, [file_row])
                self._delete_resources(conn, record.tenant_id, record.id)
                for rows in spool.batches():
                    self._check_resource_rows(record, rows)
                    conn.execute(insert(schema.resources), rows)
                search_sql.prune_embeddings(conn, record.tenant_id, record.id, hashes)
                if job_row is not None:
                    self._upsert(conn, schema.jobs, [job_row])

            await self._write(store)
            return record

    async def replace_file(
        self,
        old_file_id: str,
        tenant_id: str,
        file: FileRecord,
        resources: Sequence[Resource],
    ) -> None:
        """Delete file ``old_file_id`` (and its resources) and store ``file``, in one transaction.

        A rename: the old path's rows disappear exactly when the new path's appear.
        """
        if file.tenant_id != tenant_id:
            raise InvalidPath(
                f"replace_file: file belongs to tenant {file.tenant_id!r}, not {tenant_id!r}",
                tenant_id=tenant_id,
            )
        file_row, resource_rows = self._file_rows(file, resources)

        def replace(conn: Connection) -> None:
            vectors = search_sql.file_embeddings_by_ordinal(conn, tenant_id, old_file_id)
            self._delete_file(conn, tenant_id, old_file_id)
            self._store_file(conn, file_row, resource_rows)
            self._carry_embeddings(conn, file_row, resource_rows, vectors)

        await self._write(replace)

    async def delete_file(self, tenant_id: str, file_id: str) -> bool:
        """Remove a file and its resources; ``False`` when there was no such file."""
        return bool(await self._write(lambda conn: self._delete_file(conn, tenant_id, file_id)))

    async def list_files(self, tenant_id: str, limit: int = 1000) -> list[FileRecord]:
        """A tenant's files, oldest upload first."""
        t = schema.files
        stmt = (
            select(t)
            .where(t.c.tenant_id == tenant_id)
            .order_by(t.c.upload_timestamp, t.c.id)
            .limit(limit)
        )
        return await self._fetch(FileRecord, stmt)

    async def list_resources(
        self,
        tenant_id: str,
        *,
        file_id: str | None = None,
        category: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Resource]:
        """A tenant's resources: one file's in chunk order, or all of them by creation time."""
        t = schema.resources
        stmt = select(t).where(t.c.tenant_id == tenant_id)
        if file_id is not None:
            stmt = stmt.where(t.c.file_id == file_id)
        if category is not None:
            stmt = stmt.where(t.c.category == category)
        if file_id is not None:
            stmt = stmt.order_by(t.c.ordinal, t.c.id)
        elif newest_first:
            stmt = stmt.order_by(t.c.created_at.desc(), t.c.file_id, t.c.ordinal, t.c.id)
        else:
            stmt = stmt.order_by(t.c.created_at, t.c.file_id, t.c.ordinal, t.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return await self._fetch(Resource, stmt)

    async def count(self, table: str, tenant_id: str | None = None) -> int:
        """Rows in one of the p8fs tables, for one tenant or all."""
        if table not in schema.TABLE_NAMES:
            raise ValueError(f"unknown table {table!r}; known: {', '.join(schema.TABLE_NAMES)}")
        t = schema.metadata.tables[table]
        stmt = select(func.count()).select_from(t)
        if tenant_id is not None:
            stmt = stmt.where(t.c.tenant_id == tenant_id)
        return int(await self._run(lambda conn: conn.execute(stmt).scalar_one()))

    # -- errors ---------------------------------------------------------------------------

    async def record_error(self, error: ErrorRecord) -> None:
        """Store an error row (idempotent by id, so a redelivered failure is not doubled)."""
        row = _to_row(error, schema.errors)
        await self._write(lambda conn: self._upsert(conn, schema.errors, [row]))

    async def list_errors(
        self, tenant_id: str | None = None, limit: int = 100
    ) -> list[ErrorRecord]:
        """Errors, newest first, of one tenant or of all (for operators)."""
        t = schema.errors
        stmt = select(t)
        if tenant_id is not None:
            stmt = stmt.where(t.c.tenant_id == tenant_id)
        stmt = stmt.order_by(t.c.date.desc(), t.c.id).limit(limit)
        return await self._fetch(ErrorRecord, stmt)

    # -- jobs -----------------------------------------------------------------------------

    async def upsert_job(self, job: Job) -> None:
        """Insert or update a job, except that a finished job is never reopened: writing an
        unfinished status (PENDING, RUNNING, ...) over DONE, COMPLETED or FAILED changes nothing.
        """
        row = _to_row(job, schema.jobs)
        await self._write(lambda conn: self._upsert(conn, schema.jobs, [row]))

    async def get_job(self, tenant_id: str, job_id: str) -> Job | None:
        t = schema.jobs
        stmt = select(t).where(t.c.tenant_id == tenant_id, t.c.id == job_id)
        found = await self._fetch(Job, stmt)
        return found[0] if found else None

    async def list_jobs(
        self,
        *,
        tenant_id: str | None = None,
        job_type: str | None = None,
        status: JobStatus | str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs in queue order (oldest first), filtered; without a tenant, across tenants."""
        t = schema.jobs
        stmt = select(t)
        if tenant_id is not None:
            stmt = stmt.where(t.c.tenant_id == tenant_id)
        if job_type is not None:
            stmt = stmt.where(t.c.job_type == job_type)
        if status is not None:
            stmt = stmt.where(t.c.status == JobStatus(status).value)
        stmt = stmt.order_by(t.c.queued_at, t.c.id).limit(limit)
        return await self._fetch(Job, stmt)

    # -- sessions and moments -------------------------------------------------------------

    async def upsert_session(self, session: Session) -> None:
        row = _to_row(session, schema.sessions)
        await self._write(lambda conn: self._upsert(conn, schema.sessions, [row]))

    async def list_sessions(self, tenant_id: str, limit: int = 100) -> list[Session]:
        """A tenant's sessions, newest first (what the dreaming agent reads)."""
        t = schema.sessions
        stmt = (
            select(t)
            .where(t.c.tenant_id == tenant_id)
            .order_by(t.c.created_at.desc(), t.c.id)
            .limit(limit)
        )
        return await self._fetch(Session, stmt)

    async def store_moments(self, moments: Sequence[Moment]) -> None:
        """Upsert moments by id, all in one transaction."""
        if not moments:
            return
        rows = [_to_row(m, schema.moments) for m in moments]
        await self._write(lambda conn: self._upsert(conn, schema.moments, rows))

    async def replace_moments(
        self,
        tenant_id: str,
        moments: Sequence[Moment],
        *,
        uri: str | None = None,
        source_resource_id: str | None = None,
    ) -> int:
        """Make ``moments`` the only moments of one source, in one transaction.

        The source is the tenant's moments with this ``uri`` or this ``source_resource_id``
        (either or both). Processing a transcript again may yield fewer moments than before;
        an upsert alone would keep the old extra rows, so those are deleted in the same
        transaction that writes the new ones (readers never see the source half-replaced).
        Returns how many old rows were deleted.
        """
        if uri is None and source_resource_id is None:
            raise ValueError("replace_moments needs the source: uri or source_resource_id")
        if any(m.tenant_id != tenant_id for m in moments):
            raise ValueError(f"replace_moments: every moment must belong to tenant {tenant_id!r}")
        t = schema.moments
        rows = [_to_row(m, schema.moments) for m in moments]
        same_source = []
        if uri is not None:
            same_source.append(t.c.uri == uri)
        if source_resource_id is not None:
            same_source.append(t.c.source_resource_id == source_resource_id)
        keep = [row["id"] for row in rows]

        def replace(conn: Connection) -> int:
            stmt = delete(t).where(t.c.tenant_id == tenant_id, or_(*same_source))
            if keep:
                stmt = stmt.where(t.c.id.not_in(keep))
            deleted = conn.execute(stmt).rowcount
            if rows:
                self._upsert(conn, t, rows)
            return int(deleted or 0)

        return int(await self._write(replace))

    async def list_moments(self, tenant_id: str, limit: int = 1000) -> list[Moment]:
        """A tenant's moments in time order (moments without a timestamp last)."""
        t = schema.moments
        no_time: ColumnElement[int] = case((t.c.resource_timestamp.is_(None), 1), else_=0)
        stmt = (
            select(t)
            .where(t.c.tenant_id == tenant_id)
            .order_by(no_time, t.c.resource_timestamp, t.c.created_at, t.c.id)
            .limit(limit)
        )
        return await self._fetch(Moment, stmt)

    # -- search ---------------------------------------------------------------------------

    def _setup_search(self, conn: Connection) -> None:
        self.keyword_backend = search_sql.setup_keyword_index(
            conn, self.dialect, self.text_search_config
        )
        if self.dialect == "postgresql":
            self._pg_text_config = search_sql.pg_text_config(conn)

    async def _keyword_backend(self) -> str:
        if self.keyword_backend is None:
            await self.init_schema()
        assert self.keyword_backend is not None
        return self.keyword_backend

    async def keyword_search(
        self,
        tenant_id: str,
        terms: Sequence[str],
        *,
        limit: int = 10,
        uri_prefix: str | None = None,
        mime_types: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The tenant's chunks matching any of ``terms`` (words: letters and digits only), best
        first, each a dict with the chunk, its file's name, URI and MIME type, and ``score``."""
        backend = await self._keyword_backend()
        config = self._pg_text_config or schema.DEFAULT_TEXT_CONFIG
        found: list[dict[str, Any]] = await self._run(
            lambda conn: search_sql.keyword_query(
                conn,
                backend,
                tenant_id,
                terms,
                limit=limit,
                uri_prefix=uri_prefix,
                mime_types=mime_types,
                text_config=config,
            )
        )
        return found

    async def resources_for_search(
        self, tenant_id: str, resource_ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Search rows (chunk and file) for these resource ids of the tenant, in no order."""
        if not resource_ids:
            return []
        found: list[dict[str, Any]] = await self._run(
            lambda conn: search_sql.resources_by_ids(conn, tenant_id, resource_ids)
        )
        return found

    async def pending_embeddings(
        self,
        tenant_id: str,
        model: str,
        *,
        file_id: str | None = None,
        page_size: int = 512,
    ) -> AsyncIterator[tuple[list[tuple[str, str, str]], int]]:
        """Pages of the tenant's (or one file's) chunks that have no vector of ``model`` for
        their current text: ``([(resource id, content, content hash), ...], skipped)``."""
        r, e = schema.resources, schema.resource_embeddings
        after = ""
        while True:
            stmt = select(r.c.id, r.c.content).where(r.c.tenant_id == tenant_id, r.c.id > after)
            if file_id is not None:
                stmt = stmt.where(r.c.file_id == file_id)
            stmt = stmt.order_by(r.c.id).limit(page_size)
            rows = await self._run(functools.partial(_all_rows, stmt))
            if not rows:
                return
            after = rows[-1].id
            ids = [row.id for row in rows]
            have_stmt = select(e.c.resource_id, e.c.content_hash).where(
                e.c.tenant_id == tenant_id, e.c.model == model, e.c.resource_id.in_(ids)
            )
            have = dict(await self._run(functools.partial(_all_rows, have_stmt)))
            page = []
            for row in rows:
                digest = content_hash(row.content)
                if have.get(row.id) != digest:
                    page.append((row.id, row.content, digest))
            yield page, len(rows) - len(page)
            if len(rows) < page_size:
                return

    async def store_embeddings(
        self, tenant_id: str, model: str, items: Sequence[tuple[str, str, Any]]
    ) -> int:
        """Store vectors (resource id, content hash, float32 vector) of ``model``; only for
        chunks that still exist with that very text (checked in the writing transaction).
        Returns how many were stored."""
        if not items:
            return 0
        r = schema.resources
        ids = [rid for rid, _, _ in items]
        blobs = {rid: (digest, _blob(vec)) for rid, digest, vec in items}

        def store(conn: Connection) -> int:
            current = conn.execute(
                select(r.c.id, r.c.file_id, r.c.content).where(
                    r.c.tenant_id == tenant_id, r.c.id.in_(ids)
                )
            ).all()
            keep = []
            for row in current:
                digest, (blob, dim) = blobs[row.id]
                if content_hash(row.content) == digest:
                    keep.append((row.id, row.file_id, digest, blob, dim))
            if keep:
                rows = search_sql.embedding_rows(tenant_id, model, keep)
                self._upsert(conn, schema.resource_embeddings, rows)
            return len(keep)

        return int(await self._write(store))

    async def embedding_version(self, tenant_id: str, model: str) -> tuple[int, str]:
        """A token that changes whenever the tenant's vectors of ``model`` change (count and
        newest write): what a cached matrix of them is checked against."""
        e = schema.resource_embeddings
        stmt = select(func.count(), func.max(e.c.created_at)).where(
            e.c.tenant_id == tenant_id, e.c.model == model
        )
        count, newest = (await self._run(lambda conn: conn.execute(stmt).one())) or (0, None)
        return int(count or 0), str(newest)

    async def load_vectors(
        self,
        tenant_id: str,
        model: str,
        *,
        uri_prefix: str | None = None,
        mime_types: Sequence[str] = (),
    ) -> list[tuple[str, bytes, int]]:
        """The tenant's vectors of ``model`` as (resource id, float32 blob, dimension), filtered
        by the chunk's file URI prefix and MIME type."""
        where, params = file_filters(uri_prefix, mime_types)
        params.update(tenant=tenant_id, model=model)
        sql = text(
            "SELECT e.resource_id, e.vector, e.dimension FROM resource_embeddings e "
            "JOIN files f ON f.tenant_id = e.tenant_id AND f.id = e.file_id "
            f"WHERE e.tenant_id = :tenant AND e.model = :model{where}"
        )
        rows = await self._run(lambda conn: conn.execute(sql, params).all())
        return [(row[0], schema.decode_vector(row[1]), int(row[2])) for row in rows]

    async def embedding_models(self, tenant_id: str) -> dict[str, int]:
        """How many vectors the tenant has per model."""
        e = schema.resource_embeddings
        stmt = select(e.c.model, func.count()).where(e.c.tenant_id == tenant_id).group_by(e.c.model)
        rows = await self._run(lambda conn: conn.execute(stmt).all())
        return {str(model): int(n) for model, n in rows}

    # -- internals ------------------------------------------------------------------------

    def _file_row(self, file: FileRecord) -> dict[str, Any]:
        row = _to_row(file, schema.files)
        row["uri_hash"] = uri_hash(file.uri)
        self._check_storable(schema.files, [row])
        return row

    def _check_resource_rows(self, file: FileRecord, rows: list[dict[str, Any]]) -> None:
        """Refuse resources that are not ``file``'s (wrong tenant or file id), or unstorable."""
        for row in rows:
            if row["tenant_id"] != file.tenant_id:
                raise InvalidPath(
                    f"resource {row['name']!r} belongs to tenant {row['tenant_id']!r}, "
                    f"its file to {file.tenant_id!r}",
                    tenant_id=file.tenant_id,
                )
            if row["file_id"] != file.id:
                raise ValueError(
                    f"resource {row['name']!r} has file_id {row['file_id']!r}, "
                    f"not the stored file's {file.id!r}"
                )
        self._check_storable(schema.resources, rows)

    def _file_rows(
        self, file: FileRecord, resources: Sequence[Resource]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Rows for a file and its resources, checked before any transaction starts."""
        file_row = self._file_row(file)
        resource_rows = [_to_row(r, schema.resources) for r in resources]
        self._check_resource_rows(file, resource_rows)
        return file_row, resource_rows

    def _check_storable(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Refuse NUL characters on PostgreSQL before the transaction starts."""
        if self.dialect != "postgresql":
            return
        for row in rows:
            for column, value in row.items():
                if _contains_nul(value):
                    raise UnstorableText(
                        f"PostgreSQL cannot store NUL (U+0000) characters: {table.name}.{column} "
                        f"of row {row.get('id')!r} contains one",
                        table=table.name,
                        column=column,
                        id=row.get("id"),
                    )

    def _store_file(
        self, conn: Connection, file_row: dict[str, Any], resource_rows: list[dict[str, Any]]
    ) -> None:
        self._upsert(conn, schema.files, [file_row])
        self._delete_resources(conn, file_row["tenant_id"], file_row["id"])
        if resource_rows:
            conn.execute(insert(schema.resources), resource_rows)
        hashes = {row["id"]: content_hash(row["content"]) for row in resource_rows}
        search_sql.prune_embeddings(conn, file_row["tenant_id"], file_row["id"], hashes)

    def _carry_embeddings(
        self,
        conn: Connection,
        file_row: dict[str, Any],
        resource_rows: list[dict[str, Any]],
        vectors: list[dict[str, Any]],
    ) -> None:
        """A renamed file's chunks keep their vectors (same ordinal, same text): a rename
        costs no embedding call."""
        by_ordinal = {row["ordinal"]: row for row in resource_rows}
        carried = []
        for vec in vectors:
            new = by_ordinal.get(vec["ordinal"])
            if new is not None and content_hash(new["content"]) == vec["content_hash"]:
                carried.append(
                    (
                        vec["model"],
                        (
                            new["id"],
                            file_row["id"],
                            vec["content_hash"],
                            vec["vector"],
                            vec["dimension"],
                        ),
                    )
                )
        for model in {m for m, _ in carried}:
            rows = search_sql.embedding_rows(
                file_row["tenant_id"], model, [item for m, item in carried if m == model]
            )
            self._upsert(conn, schema.resource_embeddings, rows)

    def _delete_resources(self, conn: Connection, tenant_id: str, file_id: str) -> None:
        r = schema.resources
        conn.execute(delete(r).where(r.c.tenant_id == tenant_id, r.c.file_id == file_id))

    def _delete_file(self, conn: Connection, tenant_id: str, file_id: str) -> bool:
        f = schema.files
        # Resources go explicitly rather than by ON DELETE CASCADE: TiDB before 6.6 parses
        # foreign keys without enforcing them. Their vectors go with them.
        search_sql.delete_file_embeddings(conn, tenant_id, file_id)
        self._delete_resources(conn, tenant_id, file_id)
        result = conn.execute(delete(f).where(f.c.tenant_id == tenant_id, f.c.id == file_id))
        return bool(result.rowcount)

    def _upsert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """INSERT … ON CONFLICT (tenant_id, id) DO UPDATE, or ON DUPLICATE KEY UPDATE on MySQL."""
        self._check_storable(table, rows)
        conn.execute(_upsert_statement(self.dialect, table), rows)

    async def _fetch(self, model: type[RecordT], stmt: Any) -> list[RecordT]:
        rows = await self._run(lambda conn: conn.execute(stmt).all())
        return [_to_model(model, row) for row in rows]


@functools.cache
def _upsert_statement(dialect: str, table: Table) -> Any:
    """The upsert for ``table`` on ``dialect``, built once: building it costs more than running
    it (``excluded`` makes a proxy of every column), and reusing one statement object also lets
    SQLAlchemy reuse its cache key and compiled form.

    For ``jobs`` the update is conditional: a row in a final status (DONE, COMPLETED, FAILED) is
    left as it is by a write of an unfinished one. Checked in the statement, not read first, so
    two writers racing (a slow delivery's late RUNNING, a redelivery) cannot interleave.
    """
    key = {c.name for c in table.primary_key.columns}
    columns = [c.name for c in table.columns if c.name not in key]
    final = sorted(status.value for status in FINAL_JOB_STATUSES)
    guarded = table is schema.jobs
    if dialect == "mysql":
        my = mysql_dialect.insert(table)
        if not guarded:
            return my.on_duplicate_key_update({name: my.inserted[name] for name in columns})
        keep = and_(table.c.status.in_(final), my.inserted.status.not_in(final))
        # MySQL applies the assignments in order, each seeing the ones before: status goes last,
        # so every condition reads the row's old status.
        ordered = sorted(columns, key=lambda name: name == "status")
        return my.on_duplicate_key_update(
            [(name, case((keep, table.c[name]), else_=my.inserted[name])) for name in ordered]
        )
    ins = (pg_dialect if dialect == "postgresql" else sqlite_dialect).insert(table)
    return ins.on_conflict_do_update(
        index_elements=[table.c[name] for name in sorted(key)],
        set_={name: ins.excluded[name] for name in columns},
        where=(
            or_(table.c.status.not_in(final), ins.excluded.status.in_(final)) if guarded else None
        ),
    )


def _all_rows(stmt: Any, conn: Connection) -> list[Any]:
    return list(conn.execute(stmt).all())


def _blob(vector: Any) -> tuple[bytes, int]:
    """A vector as little-endian float32 bytes, and its length."""
    import numpy as np

    array = np.asarray(vector, dtype="<f4").ravel()
    return array.tobytes(), int(array.shape[0])


def _to_row(record: BaseModel, table: Table) -> dict[str, Any]:
    """A model as column values: JSON columns in JSON mode, enums as their values."""
    json_columns = _JSON_COLUMNS[table.name]
    row = record.model_dump(exclude=set(json_columns))
    row.update(record.model_dump(mode="json", include=set(json_columns)))
    for name, value in row.items():
        if isinstance(value, Enum):
            row[name] = value.value
    return row


async def _aiter(items: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False


def _to_model(model: type[RecordT], row: Row[Any]) -> RecordT:
    data = {k: v for k, v in row._mapping.items() if k in model.model_fields}
    # JSON columns written before a field existed (or by hand) may be NULL: let defaults apply.
    for name in [k for k, v in data.items() if v is None]:
        field = model.model_fields[name]
        if not field.is_required() and field.default_factory is not None:
            del data[name]
    return model.model_validate(data)


def _sqlite_transaction(engine: Engine, ops: Sequence[Op]) -> list[Any]:
    """``ops`` in one transaction on ``engine`` (runs in a SQLite thread)."""
    with engine.begin() as conn:
        return [op(conn) for op in ops]


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    """A connect hook: WAL (readers never block the writer), a busy timeout (a second writer
    waits for the lock instead of failing at once) and foreign keys (off by default in SQLite).
    """

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return on_connect
