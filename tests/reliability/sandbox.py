"""Run provider extractions in a child process, so that a hang, a crash or a memory blow-up
fails the test that caused it instead of taking the test run down with it.

Why a process: PDFium, FFmpeg, tesseract and lxml run native code that Python cannot interrupt;
a hostile file that makes one of them loop forever would block CI, and one that makes it
allocate gigabytes would kill the runner. The child serves one request at a time over a pipe;
the parent waits at most a hard timeout (well past the document's own deadline) and kills and
replaces the child when it does not answer. Each answer carries the typed outcome and the peak
resident memory the extraction added (``VmHWM`` is reset through ``/proc/self/clear_refs``
before each request, so peaks are per request and include native allocations).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

#: Per-document time limit the extractions run with (``ExtractContext.deadline``).
DOCUMENT_SECONDS = 10.0
#: How long past that the parent waits before declaring a hang (generous: CI machines are
#: shared; a true hang never answers at all).
HANG_GRACE_SECONDS = 50.0


@dataclass(frozen=True)
class Request:
    provider: str
    path: str
    filename: str
    mime_type: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    deadline_seconds: float = DOCUMENT_SECONDS


@dataclass(frozen=True)
class Outcome:
    """What one extraction did.

    ``kind``: ``ok`` (sections produced, or none), ``typed`` (a ``P8fsError``), ``untyped`` (any
    other exception: a bug), ``bad_output`` (text or metadata a database would refuse: a bug),
    ``hang`` (no answer within the hard timeout) or ``died`` (the child process crashed).
    """

    kind: str
    error: str | None = None
    code: str | None = None
    message: str = ""
    sections: int = 0
    peak_bytes: int = 0
    seconds: float = 0.0
    detail: str = ""

    @property
    def acceptable(self) -> bool:
        return self.kind in ("ok", "typed")

    def label(self) -> str:
        return self.kind if self.kind != "typed" else f"typed:{self.error}"


class Sandbox:
    """One child process serving extraction requests (restarted after a hang or crash)."""

    def __init__(self, hang_seconds: float = DOCUMENT_SECONDS + HANG_GRACE_SECONDS) -> None:
        self.hang_seconds = hang_seconds
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        self.restarts = 0

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Connection:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=serve, args=(child,), name="p8fs-fuzz-sandbox", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        return parent

    def run(self, request: Request) -> Outcome:
        conn = self._conn or self._start()
        started = time.monotonic()
        conn.send(request)
        # The first request of a child also pays for its imports (unstructured takes seconds).
        if conn.poll(self.hang_seconds):
            try:
                return conn.recv()  # type: ignore[no-any-return]
            except EOFError:
                pass
        else:
            self._kill()
            return Outcome("hang", seconds=time.monotonic() - started)
        exitcode = self._process.exitcode if self._process is not None else None
        self._kill()
        return Outcome("died", detail=f"exit code {exitcode}", seconds=time.monotonic() - started)

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(10)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None
        self.restarts += 1

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(10)
        self._process, self._conn = None, None


# -- the child -------------------------------------------------------------------------------


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux 4.0+); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def serve(conn: Connection) -> None:
    """The child's loop: answer each request with an :class:`Outcome` until ``None`` comes."""
    from p8fs.plugins import get_registry

    registry = get_registry()
    while True:
        request = conn.recv()
        if request is None:
            return
        conn.send(extract(registry, request))


def _database_safe(text: str) -> str | None:
    """Why a database would refuse ``text`` (PostgreSQL: no NUL; every driver: valid UTF-8)."""
    if "\x00" in text:
        return "NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not encodable as UTF-8 ({exc.reason})"
    return None


def _provider(registry: Any, name: str) -> Any:
    """A registered provider by name, or ``"module:Class"`` (the harness's own tests use it)."""
    if ":" not in name:
        return registry.provider_instance(name)
    import importlib

    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)()


def extract(registry: Any, request: Request) -> Outcome:
    """Run one extraction to the end, checking what a database would make of its output."""
    from p8fs.errors import P8fsError
    from p8fs.providers import ExtractContext

    provider = _provider(registry, request.provider)
    context = ExtractContext(
        uri=request.filename,
        filename=request.filename,
        mime_type=request.mime_type,
        options=dict(request.options),
        deadline=time.monotonic() + request.deadline_seconds,
    )
    baseline = _status_kb("VmRSS") if _reset_peak() else None
    started = time.monotonic()
    sections = 0
    problem: str | None = None
    try:
        for section in provider.extract(Path(request.path), context):
            sections += 1
            problem = problem or _database_safe(section.text)
            problem = problem or _database_safe(json.dumps(section.metadata, ensure_ascii=False))
        stored = json.dumps(
            {"metadata": context.metadata, "warnings": context.warnings}, ensure_ascii=False
        )
        problem = problem or _database_safe(stored)
        if problem is None and "\\u0000" in stored:
            problem = "NUL character in metadata (PostgreSQL JSONB refuses \\u0000)"
        outcome = Outcome("bad_output", detail=problem) if problem else Outcome("ok")
    except P8fsError as exc:
        outcome = Outcome("typed", error=type(exc).__name__, code=exc.code, message=str(exc))
    except BaseException as exc:  # any other exception is what we look for
        outcome = Outcome(
            "untyped",
            error=type(exc).__name__,
            message=str(exc)[:500],
            detail=traceback.format_exc(limit=12),
        )
    seconds = time.monotonic() - started
    peak = (_status_kb("VmHWM") - baseline) * 1024 if baseline is not None else 0
    return Outcome(
        outcome.kind,
        outcome.error,
        outcome.code,
        outcome.message,
        sections,
        max(peak, 0),
        seconds,
        outcome.detail,
    )
