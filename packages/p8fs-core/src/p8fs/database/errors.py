"""Which database failures are worth a retry, decided once for the three dialects.

A queue worker retries a :class:`~p8fs.errors.TransientError` with a growing delay and
dead-letters anything else, so the line drawn here decides between "try again in a minute" and
"give up on this file". Connection trouble, lock waits, deadlocks and serialization failures heal
by themselves: transient. A bad column or a violated constraint will fail the same way forever:
they are left as they are. A wrong password, an unknown database or a schema that was never
created is a :class:`~p8fs.errors.ConfigurationError` naming what to fix, because retrying cannot
help.
"""

from __future__ import annotations

import re

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from p8fs.errors import ConfigurationError, P8fsError, TransientError

#: PostgreSQL SQLSTATE classes/codes that heal on retry: connection exceptions (08),
#: serialization failure and deadlock (40001, 40P01), lock not available (55P03), insufficient
#: resources (53), operator intervention such as shutdown or "cannot connect now" (57P01-57P05).
_PG_TRANSIENT_PREFIXES = ("08", "53", "57P")
_PG_TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03"})
#: PostgreSQL codes that mean the settings are wrong: bad password or role, unknown database.
_PG_CONFIG_CODES = frozenset({"28000", "28P01", "3D000"})

#: "No such table" in each dialect: the schema was never created on this database.
_PG_MISSING_TABLE = "42P01"
_MYSQL_MISSING_TABLE = 1146
_SQLITE_MISSING_TABLE = re.compile(r"no such table", re.I)

#: MySQL/MariaDB/TiDB error numbers that mean the settings are wrong: access denied to the
#: database (1044) or for the user (1045), unknown database (1049).
_MYSQL_CONFIG_CODES = frozenset({1044, 1045, 1049})
#: MySQL error numbers that are OperationalError in PyMySQL but will never heal: bad column
#: (1054), bad syntax (1064), unknown table (1146), data too long / wrong value (1406, 1366).
_MYSQL_PERMANENT_CODES = frozenset({1054, 1064, 1146, 1366, 1406})

#: SQLite raises OperationalError for everything; only these messages are about contention.
_SQLITE_TRANSIENT = re.compile(r"locked|busy|disk i/o error", re.I)
#: SQLite cannot open its file: a missing folder or no permission, which waiting will not fix.
_SQLITE_CONFIG = re.compile(r"unable to open database", re.I)


class UnstorableText(P8fsError):
    """A value holds a character the database cannot store (NUL on PostgreSQL).

    PostgreSQL's ``TEXT`` and ``JSONB`` refuse U+0000 outright. Rather than change the text
    behind the caller's back, the write is refused before it starts, naming the row and column,
    so the caller can decide (a provider would usually replace it and say so).
    """

    code = "unstorable_text"


def safe_url(url: str | URL) -> str:
    """The URL as text with any password masked, fit for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show only its scheme
        return str(url).split(":", 1)[0] + "://<unparsable>"


def _mysql_code(orig: BaseException) -> int | None:
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def classify(exc: BaseException, url: str | URL) -> BaseException | None:
    """The typed error ``exc`` should become, or ``None`` to let it propagate unchanged."""
    if isinstance(exc, P8fsError):
        return None
    where = safe_url(url)
    if isinstance(exc, (OSError, sa_exc.TimeoutError)):  # refused, reset, DNS, pool timeout
        return TransientError(
            f"database {where} unreachable: {type(exc).__name__}: {_first_line(exc)}",
            url=where,
        )
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    message = _first_line(orig if orig is not None else exc)
    pgcode = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    mysql_code = _mysql_code(orig) if orig is not None else None

    is_sqlite = _backend(url) == "sqlite"
    if (
        pgcode == _PG_MISSING_TABLE
        or mysql_code == _MYSQL_MISSING_TABLE
        or (is_sqlite and _SQLITE_MISSING_TABLE.search(message))
    ):
        return ConfigurationError(
            f"database {where} has no p8fs schema ({message}); run `p8fs db init` "
            "(or `python -m p8fs.models.p8`) against it first",
            url=where,
        )
    sqlite_config = is_sqlite and bool(_SQLITE_CONFIG.search(message))
    if pgcode in _PG_CONFIG_CODES or mysql_code in _MYSQL_CONFIG_CODES or sqlite_config:
        return ConfigurationError(
            f"database {where} refused the connection settings ({message}); check "
            "P8FS_DATABASE_URL (or P8FS_DATA_DIR, P8FS_PG_*, P8FS_TIDB_*)",
            url=where,
        )
    transient = exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError)
    if isinstance(pgcode, str):
        transient = (
            transient or pgcode in _PG_TRANSIENT_CODES or pgcode.startswith(_PG_TRANSIENT_PREFIXES)
        )
    elif isinstance(exc, sa_exc.OperationalError):
        if mysql_code is not None:
            transient = transient or mysql_code not in _MYSQL_PERMANENT_CODES
        elif is_sqlite:
            transient = transient or bool(_SQLITE_TRANSIENT.search(message))
        else:
            transient = True
    if not transient:
        return None
    return TransientError(
        f"database {where} failed transiently: {type(orig or exc).__name__}: {message}",
        url=where,
    )


def _backend(url: str | URL) -> str:
    try:
        return make_url(url).get_backend_name()
    except Exception:
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
