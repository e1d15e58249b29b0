"""``python -m p8fs.models.p8 --provider tidb --plan``: the original system's schema command.

With ``--plan`` it prints the DDL for the dialect (``sqlite``, ``postgresql`` or ``tidb``) so it
can be piped into a database client; without it, it applies the schema to the configured
database, exactly like ``p8fs db init``. The command is :func:`p8fs.cli.db.models_p8`; this
file only runs it as a script, and importing it loads nothing.
"""

if __name__ == "__main__":
    from p8fs.cli.db import models_p8

    models_p8(prog_name="python -m p8fs.models.p8")
