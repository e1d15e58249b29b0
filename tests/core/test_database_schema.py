"""The schema obeys the rules of every target database, checked on the table definitions."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import CHAR, BigInteger, Integer, String, Table
from sqlalchemy.sql.schema import ColumnCollectionConstraint, Index

from p8fs.database import plan_ddl
from p8fs.database.schema import TABLES, UTCDateTime
from p8fs.embedding import ResourceEmbedding
from p8fs.models import ErrorRecord, FileRecord, Job, Moment, Resource, Session

#: TiDB's (and InnoDB's) limit on one index key, in bytes.
MAX_KEY_BYTES = 3072
#: utf8mb4 reserves four bytes per character in an index key.
BYTES_PER_CHAR = 4

MODELS = {
    "files": FileRecord,
    "resources": Resource,
    "jobs": Job,
    "errors": ErrorRecord,
    "sessions": Session,
    "moments": Moment,
    "resource_embeddings": ResourceEmbedding,
}


def _keys(table: Table) -> list[tuple[str, list[str]]]:
    """Every index-backed key of a table: primary key, unique constraints, indexes."""
    keys: list[tuple[str, list[str]]] = []
    for constraint in table.constraints:
        if isinstance(constraint, ColumnCollectionConstraint) and type(constraint).__name__ in (
            "PrimaryKeyConstraint",
            "UniqueConstraint",
        ):
            keys.append((str(constraint.name), [c.name for c in constraint.columns]))
    for index in table.indexes:
        assert isinstance(index, Index)
        keys.append((str(index.name), [c.name for c in index.columns]))  # type: ignore[union-attr]
    return keys


def _key_bytes(table: Table, column: str) -> int:
    col_type = table.c[column].type
    if isinstance(col_type, String | CHAR) and col_type.length:
        return col_type.length * BYTES_PER_CHAR
    if isinstance(col_type, BigInteger | UTCDateTime):
        return 8
    if isinstance(col_type, Integer):
        return 4
    raise AssertionError(f"{table.name}.{column} ({col_type!r}) must not be part of an index key")


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_tenant_leads_every_key_and_keys_fit_tidb(table: Table) -> None:
    keys = _keys(table)
    assert keys, f"{table.name} has no key"
    for name, columns in keys:
        assert columns[0] == "tenant_id", f"{table.name}.{name} does not start with tenant_id"
        size = sum(_key_bytes(table, c) for c in columns)
        assert size <= MAX_KEY_BYTES, f"{table.name}.{name} key is {size} bytes"


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_columns_match_the_model(table: Table) -> None:
    """Every model field has a column and every column (but the uri hash) a field."""
    fields = set(MODELS[table.name].model_fields)
    columns = set(table.c.keys()) - {"uri_hash"}
    assert columns == fields


def test_tidb_plan_follows_tidb_rules() -> None:
    ddl = plan_ddl("tidb")
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl)
    assert tables == [t.name for t in TABLES]
    assert ddl.count("COLLATE utf8mb4_bin") == len(TABLES)
    assert ddl.count("CHARSET=utf8mb4") == len(TABLES)
    assert "LONGTEXT" in ddl and "DATETIME(6)" in ddl
    assert "DEFAULT CURRENT_TIMESTAMP(6)" in ddl
    assert "uri_hash CHAR(64) NOT NULL" in ddl
    assert "UNIQUE (tenant_id, uri_hash)" in ddl
    # Every statement is idempotent, so the plan can be applied again.
    statements = [s for s in ddl.split(";\n") if "CREATE" in s]
    assert all("IF NOT EXISTS" in s for s in statements)
    for index_cols in re.findall(r"CREATE INDEX IF NOT EXISTS \w+ ON \w+ \((.*?)\)", ddl):
        assert index_cols.startswith("tenant_id")


def test_postgresql_plan_uses_time_zones_and_jsonb() -> None:
    ddl = plan_ddl("postgresql")
    assert "TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP" in ddl
    assert "JSONB" in ddl and "LONGTEXT" not in ddl and "utf8mb4" not in ddl


def test_sqlite_plan() -> None:
    ddl = plan_ddl("sqlite")
    assert ddl.count("CREATE TABLE IF NOT EXISTS") == len(TABLES)
    assert "REFERENCES files (tenant_id, id) ON DELETE CASCADE" in ddl
    assert "utf8mb4" not in ddl


def test_plan_refuses_unknown_dialects() -> None:
    with pytest.raises(ValueError, match="unknown database dialect 'oracle'"):
        plan_ddl("oracle")
