"""The SQL database layer: SQLite (default), PostgreSQL and TiDB/MySQL through SQLAlchemy asyncio.

``Database`` is the repository (files, resources, jobs, errors, sessions, moments); ``plan_ddl``
renders the schema as SQL for a dialect (the seed's ``python -m p8fs.models.p8 --plan``).
"""

from p8fs.database.database import Database
from p8fs.database.errors import safe_url
from p8fs.database.schema import TABLE_NAMES, ddl_statements, metadata, plan_ddl

__all__ = ["TABLE_NAMES", "Database", "ddl_statements", "metadata", "plan_ddl", "safe_url"]
