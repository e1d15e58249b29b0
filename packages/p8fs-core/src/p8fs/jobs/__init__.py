"""LLM jobs over stored data: dreaming (DreamModel over a user's sessions and resources) and
moments (MomentBuilder over transcripts).

They need only the database and an LLM, so they live in the core, as plain classes and
functions; their commands are in :mod:`p8fs.cli.jobs` (``p8fs dreaming``, ``p8fs moments``) and
the runner schedules them (``p8fs-run dreaming ...``, the Kubernetes CronJob). Not to be confused
with ``p8fs_runner.worker``, the queue consumer that ingests files.
"""
