"""p8fs: turn files in object storage into searchable text chunks and typed agent output.

`import p8fs` must stay fast and light: it is what every worker pays at start-up and what a
plugin author imports first. Only the hook marker and the version live here eagerly; the
pipeline entry points are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p8fs.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "aingest", "hookimpl", "ingest"]

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.pipeline import aingest, ingest


def __getattr__(name: str) -> Any:
    # Lazy so that `import p8fs` does not pull SQLAlchemy and friends.
    if name in ("ingest", "aingest"):
        from p8fs import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'p8fs' has no attribute {name!r}")
