"""Content providers that only the runner tests register: a slow one and a flaky one.

They go through the real plugin registry (``register_test_providers``), so the worker under test
runs the real pipeline: S3 download, provider in a worker thread, chunking, one transaction.

* ``.slow`` files: the first line is ``sleep=<seconds>``; the provider sleeps that long in small
  steps (honouring the document deadline), then yields the text. A file that is slow to process
  without depending on the machine's speed.
* ``.flaky`` files: the provider raises ``TransientError`` every time (a dependency that never
  comes back), so the worker retries until its deliveries run out.

Every call is appended to the file named by ``P8FS_TEST_PROVIDER_LOG`` (one line per call), so a
test can prove how many times a file was processed, even in a subprocess.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from p8fs.errors import TransientError
from p8fs.providers import ContentProvider, ExtractContext, Section, Source, open_binary


def _log_call(kind: str, context: ExtractContext) -> None:
    path = os.environ.get("P8FS_TEST_PROVIDER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{kind} {context.uri}\n")


class SlowProvider(ContentProvider):
    name = "test-slow"
    extensions = (".slow",)
    priority = 100

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        _log_call("slow", context)
        with open_binary(source) as stream:  # a path, or a small object held in memory
            text = stream.read().decode("utf-8")
        first, _, rest = text.partition("\n")
        seconds = float(first.removeprefix("sleep="))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            context.check_deadline()
            time.sleep(0.05)
        yield Section(rest or "slow file", {"kind": "page", "page": 1})


class FlakyProvider(ContentProvider):
    name = "test-flaky"
    extensions = (".flaky",)
    priority = 100

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        _log_call("flaky", context)
        raise TransientError(f"the test dependency of {context.filename} is down")
        yield  # pragma: no cover - makes this a generator


def register_test_providers() -> None:
    """Add the two providers to this process's registry (idempotent)."""
    from p8fs.plugins import get_registry

    registry = get_registry()
    for cls in (SlowProvider, FlakyProvider):
        if cls.name not in registry.providers:
            registry.add_provider(cls, "runner-tests")


def calls(log_path: str | os.PathLike[str]) -> list[str]:
    try:
        with open(log_path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return []


if __name__ == "__main__":  # a worker process with the test providers registered
    import sys

    register_test_providers()
    from p8fs_runner.cli import main

    main(args=sys.argv[1:], prog_name="p8fs-run")
