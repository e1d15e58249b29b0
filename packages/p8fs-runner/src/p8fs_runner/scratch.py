"""The start-up check of the directories a runner writes to: ``TMPDIR`` and ``P8FS_DATA_DIR``.

In Kubernetes the root filesystem is read-only and every write goes to the ``/scratch`` emptyDir
(remote files are streamed to temporary files there; embedded services and the SQLite database
live in the data folder). If the volume is missing or not writable by the pod's user, nothing
fails at start: Python's ``tempfile`` silently falls back to ``/tmp`` (read-only too), and the
first large file dies with an ``OSError`` deep inside a provider, which the queue then retries
or dead-letters as if the file were at fault. Checking once at start turns that into one clear
line naming the setting, before a single message is taken.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from p8fs.errors import ConfigurationError


def _probe(directory: Path) -> str | None:
    """Why ``directory`` cannot hold a new file, or ``None`` when it can (a file is created
    and removed: permissions, read-only mounts and full disks all show up here)."""
    if not directory.exists():
        return "it does not exist"
    if not directory.is_dir():
        return "it is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".p8fs-write-check-", dir=directory)
    except OSError as exc:
        return f"it is not writable by uid {os.getuid()} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(name)
    return None


def check_scratch(data_dir: Path, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigurationError` naming ``TMPDIR`` or ``P8FS_DATA_DIR`` when the
    runner could not write temporary files or its data folder (created here if missing)."""
    env = os.environ if environ is None else environ
    tmpdir = env.get("TMPDIR")
    if tmpdir:
        reason = _probe(Path(tmpdir))
        if reason is not None:
            raise ConfigurationError(
                f"TMPDIR={tmpdir} cannot hold temporary files: {reason}. Remote files are "
                f"streamed there; mount a writable volume at {tmpdir} (the manifests' `scratch` "
                "emptyDir) or set TMPDIR to a writable directory",
                setting="TMPDIR",
                value=tmpdir,
            )
    else:
        try:
            tempfile.gettempdir()
        except OSError as exc:  # no usable default: /tmp, /var/tmp and the cwd all refused
            raise ConfigurationError(
                f"no writable temporary directory ({exc}); set TMPDIR to a writable directory",
                setting="TMPDIR",
            ) from exc
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"it cannot be created ({exc.strerror or exc})"
    else:
        reason = _probe(data_dir)
    if reason is not None:
        raise ConfigurationError(
            f"P8FS_DATA_DIR={data_dir} is not usable: {reason}. It holds the SQLite database "
            "and embedded services' data; point P8FS_DATA_DIR at a writable volume "
            "(the manifests use /scratch/p8fs)",
            setting="P8FS_DATA_DIR",
            value=str(data_dir),
        )
