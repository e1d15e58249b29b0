"""Reusable daemon threads for blocking work that may never return (a provider stuck in C code).

A thread can't be killed, so extraction runs each document in a daemon thread that is simply
abandoned when its deadline passes. Starting a new thread per document costs more than the
whole extraction of a small text file (measured: the start handshake alone was 4% of a queue
worker's busy time at a hundred files a second), so finished threads wait here to be reused.
A thread whose work never returns is never handed out again; new work gets a new thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

#: An idle thread exits after this many seconds without work.
IDLE_SECONDS = 60.0


class ThreadCache:
    """Runs callables in reused daemon threads, one callable per thread at a time."""

    def __init__(self, name: str, idle_seconds: float = IDLE_SECONDS) -> None:
        self.name = name
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` in an idle thread, or a new one. ``work`` must handle its own errors
        (anything it raises is dropped: there is nobody to raise it to)."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
            worker.thread.start()
        worker.inbox.put(work)

    @property
    def idle(self) -> int:
        """Threads waiting for work now."""
        with self._lock:
            return len(self._idle)

    def _park(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _retire(self, worker: _Worker) -> bool:
        """Remove an idle ``worker`` that timed out; ``False`` if it was just handed work."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False


class _Worker:
    def __init__(self, cache: ThreadCache) -> None:
        self.cache = cache
        self.inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=cache.name, daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                work = self.inbox.get(timeout=self.cache.idle_seconds)
            except queue.Empty:
                if self.cache._retire(self):
                    return
                continue  # popped by submit() at the last moment: its work is on the way
            try:
                work()
            except BaseException:
                pass
            self.cache._park(self)
