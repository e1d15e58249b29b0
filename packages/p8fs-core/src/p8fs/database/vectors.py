"""Native vector search where the database has it: pgvector on PostgreSQL.

Vectors are always stored as little-endian float32 blobs (``resource_embeddings.vector``), the
one format every database and driver here can hold. Where the ``vector`` extension (pgvector)
is installed, PostgreSQL also keeps them as a pgvector column, ``resource_embeddings.embedding``,
*generated* from the blob by :data:`PG_FUNCTION` (an immutable SQL function that decodes the
IEEE 754 bits exactly). Being a generated column, it changes in the very statement that writes
the blob: no second write path, no sync job, nothing to forget on rename or delete, and the
writers (:mod:`p8fs.database.database`) need not know it exists.

Search then ranks inside PostgreSQL (``ORDER BY embedding <=> :query LIMIT k``, the tenant and
model in the ``WHERE``), an exact scan in C: no matrix is loaded into the process, so there is
no cold load and no per-process copy of a tenant's vectors. No approximate (HNSW/IVFFlat) index
is created: pgvector applies the ``WHERE`` after an approximate index's candidate list, so a
small tenant among large ones would get fewer than k results (or none); pgvector 0.8's
iterative scans fix that, the pgvector shipped with PyPI's ``pgserver`` (0.6.2) predates them.

Elsewhere (SQLite, MySQL/MariaDB, PostgreSQL without pgvector) the blobs are scanned with numpy
(:mod:`p8fs.retrieval`). :func:`sqlite_can_load_extensions` says whether this Python could load
sqlite-vec at all (the pyenv CPython here cannot: ``enable_load_extension`` is missing).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from p8fs.database.filters import file_filters

log = logging.getLogger(__name__)

#: The pgvector column generated from the float32 blob.
PG_COLUMN = "embedding"
#: The SQL function that turns a little-endian float32 blob into a pgvector ``vector``.
PG_FUNCTION = "p8fs_f32_vector"

# Exact decoding of IEEE 754 binary32: sign, 8-bit exponent, 23-bit mantissa, subnormals
# included (exponent 0). Computed in float8, where every binary32 value is exact, then cast to
# real. Infinities and NaN cannot occur: stored vectors are unit length.
_PG_FUNCTION_DDL = f"""
CREATE OR REPLACE FUNCTION {PG_FUNCTION}(b bytea) RETURNS vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT array_agg(
  CASE WHEN get_byte(b, i + 3) >= 128 THEN -1 ELSE 1 END * CASE WHEN e = 0
    THEN m * 2::float8 ^ (-149) ELSE (1 + m / 8388608) * 2::float8 ^ (e - 127) END
  ORDER BY i)::real[]::vector
FROM generate_series(0, length(b) - 4, 4) AS i,
LATERAL (SELECT ((get_byte(b, i + 3) & 127) * 2 + get_byte(b, i + 2) / 128) AS e,
  ((get_byte(b, i + 2) & 127) * 65536 + get_byte(b, i + 1) * 256 + get_byte(b, i))::float8
  AS m) AS f
$$
"""

_logged: set[str] = set()


def _once(key: str, message: str, *args: Any) -> None:
    """Log ``message`` at INFO the first time ``key`` is seen in this process (a fallback is
    worth one line, not one per query)."""
    if key not in _logged:
        _logged.add(key)
        log.info(message, *args)


def setup_postgresql(conn: Connection) -> bool:
    """Add the pgvector column to ``resource_embeddings`` if pgvector can be used; return
    whether it is there (``False``: vectors are scanned with numpy).

    The extension is created when it is installed on the server but not yet in this database
    (that needs a role allowed to ``CREATE EXTENSION``; without one, an administrator runs
    ``CREATE EXTENSION vector`` once). Adding the column to a table that already holds vectors
    computes it for each of them (about 0.4 ms per 384-d vector here), once.
    """
    if has_pg_column(conn):
        return True
    available = conn.execute(
        text(
            "SELECT installed_version IS NOT NULL FROM pg_available_extensions "
            "WHERE name = 'vector'"
        )
    ).first()
    if available is None:
        _once(
            "pg-none",
            "pgvector is not installed on this PostgreSQL server: vectors are scanned with numpy",
        )
        return False
    if not available[0]:
        savepoint = conn.begin_nested()
        try:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
            savepoint.commit()
        except Exception as exc:  # no privilege: keep the blobs, say why once
            savepoint.rollback()
            _once(
                "pg-create",
                "pgvector is installed but this role cannot CREATE EXTENSION vector (%s): "
                "vectors are scanned with numpy until an administrator creates it",
                str(exc).splitlines()[0],
            )
            return False
    conn.exec_driver_sql(_PG_FUNCTION_DDL)
    # The blob goes out of line (TOAST) first, so the scanned column stays in the row: with
    # both inline-able, PostgreSQL toasted the pgvector column and every query detoasted each
    # vector (measured at 100,000 x 384-d: 0.3 s a scan, 0.05 s with the column in the row).
    conn.exec_driver_sql(
        f"ALTER TABLE resource_embeddings ADD COLUMN IF NOT EXISTS {PG_COLUMN} vector "
        f"GENERATED ALWAYS AS ({PG_FUNCTION}(vector)) STORED, "
        f"ALTER COLUMN vector SET STORAGE EXTERNAL, ALTER COLUMN {PG_COLUMN} SET STORAGE MAIN"
    )
    return True


def has_pg_column(conn: Connection) -> bool:
    """Whether ``resource_embeddings`` has the pgvector column (read from the catalog)."""
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('resource_embeddings') "
            "AND attname = :col AND NOT attisdropped"
        ),
        {"col": PG_COLUMN},
    ).first()
    return found is not None


def pg_nearest(
    conn: Connection,
    tenant_id: str,
    model: str,
    query: Sequence[float],
    *,
    limit: int,
    uri_prefix: str | None = None,
    mime_types: Sequence[str] = (),
) -> list[tuple[str, float]]:
    """(resource id, cosine similarity) of the tenant's ``limit`` vectors of ``model`` nearest
    to the unit vector ``query``, best first, ranked by pgvector's ``<=>`` (cosine distance)."""

    where, params = file_filters(uri_prefix, mime_types)
    files_join = (
        " JOIN files f ON f.tenant_id = e.tenant_id AND f.id = e.file_id" if where else ""
    )
    # repr of a float32 is the shortest text that reads back as the same float32.
    params.update(
        tenant=tenant_id,
        model=model,
        dim=len(query),
        limit=limit,
        query="[" + ",".join(repr(float(v)) for v in query) + "]",
    )
    distance = f"e.{PG_COLUMN} <=> CAST(:query AS vector)"
    sql = (
        f"SELECT e.resource_id, 1 - ({distance}) AS score FROM resource_embeddings e{files_join} "
        f"WHERE e.tenant_id = :tenant AND e.model = :model AND e.dimension = :dim{where} "
        f"ORDER BY {distance}, e.resource_id LIMIT :limit"
    )
    return [(str(rid), float(score)) for rid, score in conn.execute(text(sql), params).all()]


def sqlite_can_load_extensions() -> bool:
    """Whether this Python's ``sqlite3`` can load extensions such as sqlite-vec.

    CPython built without ``--enable-loadable-sqlite-extensions`` (pyenv's default, and this
    machine's) lacks ``Connection.enable_load_extension``; Debian's python3 has it. Logs once
    when it cannot, since the numpy scan is then the only way.
    """
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return True
    _once(
        "sqlite-ext",
        "this Python's sqlite3 cannot load extensions (built without "
        "enable_load_extension), so sqlite-vec is out of reach: vectors are scanned with numpy",
    )
    return False
