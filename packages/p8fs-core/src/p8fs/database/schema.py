"""The tables of p8fs as SQLAlchemy Core objects, and the DDL they compile to per dialect.

One definition serves SQLite, PostgreSQL and TiDB (MySQL protocol; MariaDB stands in for it in
tests), so the few places where the dialects disagree are decided here, once:

* TiDB refuses index keys over 3,072 bytes. A URI can be longer than that, so ``files`` is made
  unique on ``(tenant_id, uri_hash)`` (sha256 hex of the URI, :func:`p8fs.ids.uri_hash`) and ids
  are ``VARCHAR(64)``; no index ever covers a ``TEXT`` column.
* MySQL's ``utf8`` is three bytes and drops emoji, and its default collations fold case and
  accents (two URIs differing only in case would collide). Every table is ``utf8mb4`` with
  ``utf8mb4_bin``.
* MySQL's ``TEXT`` stops at 64 KiB; content columns are ``LONGTEXT`` there.
* MySQL's ``DATETIME`` drops fractions of a second unless declared ``DATETIME(6)``, and SQLite
  and MySQL have no time zones: :class:`UTCDateTime` stores UTC and always returns aware UTC.
* ``tenant_id`` leads the primary key and every index, so a tenant's rows cluster together and
  no upsert can ever overwrite another tenant's row that happens to share an id.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import CHAR, DateTime, TypeDecorator, TypeEngine

#: Names accepted by :func:`plan_ddl` and the seed command, mapped to SQLAlchemy dialect names.
DIALECT_ALIASES: dict[str, str] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "tidb": "mysql",
    "mysql": "mysql",
    "mariadb": "mysql",
}

#: Length of every id column: a uuid is 36 characters, a sha256 hex digest 64.
ID_LENGTH = 64


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as a timezone-aware UTC ``datetime``.

    PostgreSQL gets ``TIMESTAMP WITH TIME ZONE``; MySQL/TiDB ``DATETIME(6)`` (microseconds, naive
    UTC); SQLite its ISO text (naive UTC, which also sorts correctly as text). A naive value
    handed in is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return value
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class current_timestamp_default(FunctionElement[datetime]):
    """``CURRENT_TIMESTAMP`` as a server default, with the precision MySQL/TiDB demand.

    MySQL and TiDB reject ``DATETIME(6) DEFAULT CURRENT_TIMESTAMP`` (the default's precision
    must match the column's), hence ``CURRENT_TIMESTAMP(6)`` there.
    """

    type = DateTime()
    inherit_cache = True
    name = "current_timestamp_default"


@compiles(current_timestamp_default)
def _current_timestamp(element: current_timestamp_default, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(current_timestamp_default, "mysql")
@compiles(current_timestamp_default, "mariadb")
def _current_timestamp_mysql(element: current_timestamp_default, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP(6)"


def _long_text() -> TypeEngine[str]:
    """Text without a practical size limit (LONGTEXT on MySQL/TiDB, where TEXT is 64 KiB)."""
    return Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def _json() -> TypeEngine[Any]:
    """JSON (JSONB on PostgreSQL); Python ``None`` is SQL NULL, not the JSON value ``null``."""
    return JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _id(name: str, **kw: Any) -> Column[str]:
    return Column(name, String(ID_LENGTH), nullable=False, **kw)


def _tenant() -> Column[str]:
    return Column("tenant_id", String(ID_LENGTH), nullable=False)


def _timestamp(name: str, *, nullable: bool = False) -> Column[datetime]:
    if nullable:
        return Column(name, UTCDateTime(), nullable=True)
    return Column(name, UTCDateTime(), nullable=False, server_default=current_timestamp_default())


#: Table options for MySQL/TiDB (ignored by the other dialects).
_MYSQL_OPTIONS: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}

metadata = MetaData()

files = Table(
    "files",
    metadata,
    _id("id"),
    _tenant(),
    Column("uri", _long_text(), nullable=False),
    Column("uri_hash", CHAR(64), nullable=False, comment="sha256 hex of uri (indexable)"),
    Column("name", Text(), nullable=False),
    Column("file_size", BigInteger()),
    Column("mime_type", String(255)),
    Column("content_hash", String(128)),
    Column("provider", String(255)),
    Column("chunk_count", Integer(), nullable=False, server_default="0"),
    Column("metadata", _json()),
    _timestamp("upload_timestamp"),
    _timestamp("updated_at"),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_files"),
    UniqueConstraint("tenant_id", "uri_hash", name="uq_files_tenant_uri_hash"),
    **_MYSQL_OPTIONS,
)
Index("ix_files_tenant_upload", files.c.tenant_id, files.c.upload_timestamp)

resources = Table(
    "resources",
    metadata,
    _id("id"),
    _tenant(),
    _id("file_id"),
    Column("name", Text(), nullable=False),
    Column("category", String(64), nullable=False, server_default="content_chunk"),
    Column(
        "content",
        Text().with_variant(
            mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_unicode_ci"), "mysql", "mariadb"
        ),
        nullable=False,
    ),
    Column("ordinal", Integer(), nullable=False),
    Column("uri", _long_text(), nullable=False),
    Column("token_count", Integer()),
    Column("metadata", _json()),
    _timestamp("created_at"),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_resources"),
    # A file's chunks are numbered once each: a duplicate ordinal is a bug, refused by the database.
    UniqueConstraint("tenant_id", "file_id", "ordinal", name="uq_resources_file_ordinal"),
    ForeignKeyConstraint(
        ["tenant_id", "file_id"],
        ["files.tenant_id", "files.id"],
        name="fk_resources_file",
        ondelete="CASCADE",
    ),
    CheckConstraint("ordinal >= 0", name="ck_resources_ordinal"),
    **_MYSQL_OPTIONS,
)
Index("ix_resources_tenant_category", resources.c.tenant_id, resources.c.category)
Index("ix_resources_tenant_created", resources.c.tenant_id, resources.c.created_at)

class VectorBlob(TypeDecorator[bytes]):
    """A float32 vector's bytes: a BLOB on SQLite and PostgreSQL, base64 text on MySQL/TiDB.

    Why text there: aiomysql 0.3 escapes ``bytes`` parameters through a PyMySQL function that
    PyMySQL 1.2 replaced by a placeholder string (every bytes parameter raises ``TypeError``),
    and TiDB is reached through the same driver.
    """

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.LONGTEXT(charset="ascii"))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name in ("mysql", "mariadb"):
            return base64.b64encode(value).decode("ascii")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else decode_vector(value)


def decode_vector(value: Any) -> bytes:
    """A stored vector's bytes, whichever way the driver returned it (bytes, memoryview, or
    the base64 text stored on MySQL/TiDB)."""
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(value)


#: One vector per chunk and embedding model (semantic search). ``content_hash`` is the sha256 of
#: the chunk text that was embedded: a chunk whose text changes loses its vector in the same
#: transaction (:meth:`p8fs.database.Database.store_file`), an unchanged one keeps it. Vectors are
#: little-endian float32 blobs of ``dimension`` values, unit length, scanned with numpy; on
#: PostgreSQL with pgvector a ``vector`` column generated from the blob is added at set-up
#: (:mod:`p8fs.database.vectors`) and ranks them in the database.
resource_embeddings = Table(
    "resource_embeddings",
    metadata,
    _tenant(),
    _id("resource_id"),
    Column("model", String(255), nullable=False),
    _id("file_id"),
    Column("dimension", Integer(), nullable=False),
    Column("content_hash", CHAR(64), nullable=False),
    Column("vector", VectorBlob(), nullable=False),
    _timestamp("created_at"),
    PrimaryKeyConstraint("tenant_id", "resource_id", "model", name="pk_resource_embeddings"),
    **_MYSQL_OPTIONS,
)
Index("ix_resource_embeddings_file", resource_embeddings.c.tenant_id, resource_embeddings.c.file_id)
# With created_at: the per-search "have the vectors changed" check (count, newest) reads the
# index only, never the 100k vector rows themselves.
Index(
    "ix_resource_embeddings_model_created",
    resource_embeddings.c.tenant_id,
    resource_embeddings.c.model,
    resource_embeddings.c.created_at,
)

jobs = Table(
    "jobs",
    metadata,
    _id("id"),
    _tenant(),
    Column("job_type", String(64), nullable=False),
    Column("status", String(32), nullable=False, server_default="PENDING"),
    Column("payload", _json()),
    Column("result", _json()),
    Column("error", _long_text()),
    _timestamp("queued_at"),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_jobs"),
    **_MYSQL_OPTIONS,
)
Index("ix_jobs_tenant_status", jobs.c.tenant_id, jobs.c.status)
Index("ix_jobs_tenant_type_status", jobs.c.tenant_id, jobs.c.job_type, jobs.c.status)

errors = Table(
    "errors",
    metadata,
    _id("id"),
    _tenant(),
    _timestamp("date"),
    Column("process", String(255)),
    Column("message", _long_text(), nullable=False),
    Column("stack_trace", _long_text()),
    Column("level", String(50), nullable=False, server_default="ERROR"),
    Column("metadata", _json()),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_errors"),
    **_MYSQL_OPTIONS,
)
Index("ix_errors_tenant_date", errors.c.tenant_id, errors.c.date)

sessions = Table(
    "sessions",
    metadata,
    _id("id"),
    _tenant(),
    Column("name", Text(), nullable=False),
    Column("query", _long_text()),
    Column("messages", _json()),
    Column("metadata", _json()),
    _timestamp("created_at"),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_sessions"),
    **_MYSQL_OPTIONS,
)
Index("ix_sessions_tenant_created", sessions.c.tenant_id, sessions.c.created_at)

moments = Table(
    "moments",
    metadata,
    _id("id"),
    _tenant(),
    Column("name", Text(), nullable=False),
    Column("content", _long_text(), nullable=False),
    Column("summary", _long_text()),
    Column("category", String(255)),
    Column("uri", _long_text()),
    _timestamp("resource_timestamp", nullable=True),
    _timestamp("resource_ends_timestamp", nullable=True),
    Column("moment_type", String(255)),
    Column("emotion_tags", _json()),
    Column("topic_tags", _json()),
    Column("present_persons", _json()),
    Column("location", Text()),
    Column("background_sounds", Text()),
    Column("metadata", _json()),
    Column("source_resource_id", String(ID_LENGTH)),
    _timestamp("created_at"),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_moments"),
    **_MYSQL_OPTIONS,
)
Index("ix_moments_tenant_timestamp", moments.c.tenant_id, moments.c.resource_timestamp)

#: Every table, parents before children (the order to create them in).
TABLES: tuple[Table, ...] = (files, resources, resource_embeddings, jobs, errors, sessions, moments)
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TABLES)


def dialect_for(name: str) -> Dialect:
    """A SQLAlchemy dialect object for a provider or dialect name (``tidb`` means MySQL)."""
    key = DIALECT_ALIASES.get(name.lower())
    if key is None:
        known = ", ".join(sorted(DIALECT_ALIASES))
        raise ValueError(f"unknown database dialect {name!r} (known: {known})")
    if key == "sqlite":
        return sqlite.dialect()
    if key == "postgresql":
        return postgresql.dialect()
    return mysql.dialect()


def ddl_statements(dialect: Dialect) -> list[str]:
    """The ``CREATE TABLE``/``CREATE INDEX`` statements, each idempotent (``IF NOT EXISTS``).

    ``CREATE INDEX IF NOT EXISTS`` is understood by SQLite, PostgreSQL, TiDB and MariaDB
    (not by Oracle's MySQL 8, which is not a target).
    """
    statements: list[str] = []
    for table in TABLES:
        statements.append(_compile(CreateTable(table, if_not_exists=True), dialect))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(_compile(CreateIndex(index, if_not_exists=True), dialect))
    return statements


#: The keyword index's names (SQLite FTS5 table, PostgreSQL column and index, MySQL index).
SQLITE_FTS_TABLE = "resources_fts"
PG_TSV_COLUMN = "search_tsv"
PG_TSV_INDEX = "ix_resources_search_tsv"
MYSQL_FULLTEXT_INDEX = "ft_resources_content"
#: ``resources.content``'s collation on MySQL/TiDB: case- and accent-insensitive, so full-text
#: matching is too (the column is never compared for identity, unlike URIs and ids).
MYSQL_CONTENT_COLLATION = "utf8mb4_unicode_ci"
#: The PostgreSQL text-search configuration used unless ``P8FS_SEARCH_TEXT_CONFIG`` says another.
DEFAULT_TEXT_CONFIG = "english"


def pg_tsv_column_ddl(text_config: str) -> str:
    """The generated ``tsvector`` column for ``text_config`` (a validated identifier)."""
    if not text_config.replace("_", "a").isalnum():
        raise ValueError(f"invalid text search configuration name {text_config!r}")
    return (
        f"ALTER TABLE resources ADD COLUMN IF NOT EXISTS {PG_TSV_COLUMN} tsvector GENERATED "
        f"ALWAYS AS (to_tsvector('{text_config}'::regconfig, content)) STORED"
    )


def search_ddl(
    dialect: str, *, text_config: str = DEFAULT_TEXT_CONFIG, fulltext: bool = True
) -> list[str]:
    """The keyword index, kept in step with ``resources`` by the database itself, so every
    transaction that writes resources updates it too (re-ingest, delete and rename included):

    * SQLite: an external-content FTS5 table over ``resources.content`` (Porter stemming,
      diacritics folded) and three triggers;
    * PostgreSQL: a generated ``tsvector`` column (``text_config``) with a GIN index;
    * MySQL/MariaDB: an InnoDB ``FULLTEXT`` index. ``fulltext=False`` for TiDB, which does not
      support one (p8fs then ranks keyword queries itself: see :mod:`p8fs.retrieval`).
    """
    if dialect == "sqlite":
        fts = SQLITE_FTS_TABLE
        return [
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5(content, content='resources', "
            "content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2')",
            f"CREATE TRIGGER IF NOT EXISTS {fts}_ai AFTER INSERT ON resources BEGIN "
            f"INSERT INTO {fts}(rowid, content) VALUES (new.rowid, new.content); END",
            f"CREATE TRIGGER IF NOT EXISTS {fts}_ad AFTER DELETE ON resources BEGIN "
            f"INSERT INTO {fts}({fts}, rowid, content) VALUES ('delete', old.rowid, old.content); "
            "END",
            f"CREATE TRIGGER IF NOT EXISTS {fts}_au AFTER UPDATE ON resources BEGIN "
            f"INSERT INTO {fts}({fts}, rowid, content) VALUES ('delete', old.rowid, old.content); "
            f"INSERT INTO {fts}(rowid, content) VALUES (new.rowid, new.content); END",
        ]
    if dialect == "postgresql":
        return [
            pg_tsv_column_ddl(text_config),
            f"CREATE INDEX IF NOT EXISTS {PG_TSV_INDEX} ON resources USING gin ({PG_TSV_COLUMN})",
        ]
    if dialect in ("mysql", "mariadb") and fulltext:
        return [
            f"CREATE FULLTEXT INDEX IF NOT EXISTS {MYSQL_FULLTEXT_INDEX} ON resources (content)"
        ]
    return []


def _compile(element: Any, dialect: Dialect) -> str:
    compiled: DDLCompiler = element.compile(dialect=dialect)
    return str(compiled).strip()


def plan_ddl(dialect: str) -> str:
    """The schema as SQL text for ``sqlite``, ``postgresql`` or ``tidb``/``mysql``.

    This is what ``python -m p8fs.models.p8 --provider tidb --plan`` prints, ready to pipe into
    ``mysql``; running it twice is harmless.
    """
    dialect_obj = dialect_for(dialect)
    header = f"-- p8fs schema for {dialect} (tables: {', '.join(TABLE_NAMES)})\n"
    statements = ddl_statements(dialect_obj)
    statements += search_ddl(dialect_obj.name, fulltext=dialect.lower() != "tidb")
    return header + "".join(stmt + ";\n\n" for stmt in statements)
