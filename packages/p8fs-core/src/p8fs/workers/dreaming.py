"""``p8fs.workers.dreaming``: the seed's name of :mod:`p8fs.jobs.dreaming` (same objects).

``python -m p8fs.workers.dreaming process ...`` runs ``p8fs dreaming process ...``; the command
is imported only when this file runs as a script, so importing it never loads the CLI.
"""

from p8fs.jobs.dreaming import JOB_TYPE, PROCESS, DreamingLimits, DreamingWorker, run_dreaming

__all__ = ["JOB_TYPE", "PROCESS", "DreamingLimits", "DreamingWorker", "run_dreaming"]

if __name__ == "__main__":
    from p8fs.cli.jobs import dreaming

    dreaming(prog_name="python -m p8fs.workers.dreaming")
