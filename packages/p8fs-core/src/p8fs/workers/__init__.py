"""Compatibility names for the original system's users: the LLM jobs are :mod:`p8fs.jobs`.

The seed documents ``python -m p8fs.workers.dreaming process ...`` and
``from p8fs.workers.dreaming import DreamingWorker``; both keep working through the modules here,
which hold no code of their own. New code imports :mod:`p8fs.jobs` (``p8fs.workers`` was easy to
confuse with ``p8fs_runner.worker``, the queue consumer).
"""
