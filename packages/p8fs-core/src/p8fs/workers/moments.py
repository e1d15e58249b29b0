"""``p8fs.workers.moments``: the earlier name of :mod:`p8fs.jobs.moments` (same objects).

``python -m p8fs.workers.moments process ...`` runs ``p8fs moments process ...``; the command is
imported only when this file runs as a script, so importing it never loads the CLI.
"""

from p8fs.jobs.moments import PROCESS, MomentRun, MomentWorker, file_text, run_moments

__all__ = ["PROCESS", "MomentRun", "MomentWorker", "file_text", "run_moments"]

if __name__ == "__main__":
    from p8fs.cli.jobs import moments

    moments(prog_name="python -m p8fs.workers.moments")
