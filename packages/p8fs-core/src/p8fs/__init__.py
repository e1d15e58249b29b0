"""p8fs: turn files in object storage into searchable text chunks and typed agent output.

`import p8fs` must stay fast and light: it is what every worker pays at start-up and what a
plugin author imports first. Only the hook marker and the version live here eagerly; the
pipeline entry points are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p8fs.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "aingest", "asearch", "hookimpl", "ingest", "search"]

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.pipeline import aingest, ingest
    from p8fs.retrieval import asearch, search


def __getattr__(name: str) -> Any:
    # Lazy so that `import p8fs` does not pull SQLAlchemy and friends.
    if name in ("ingest", "aingest"):
        from p8fs import pipeline

        return getattr(pipeline, name)
    if name in ("search", "asearch"):
        import importlib

        # The module is p8fs.retrieval: a submodule named "search" would shadow the function.
        return getattr(importlib.import_module("p8fs.retrieval"), name)
    raise AttributeError(f"module 'p8fs' has no attribute {name!r}")
