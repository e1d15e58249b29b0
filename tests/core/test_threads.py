"""The extraction thread cache: threads are reused, a stuck one is never handed out again."""

from __future__ import annotations

import threading
import time

from p8fs.threads import ThreadCache


def _run(cache: ThreadCache, work: object = None) -> int:
    """Submit work that records its thread; wait for it; return the thread's ident."""
    done = threading.Event()
    seen: list[int] = []

    def job() -> None:
        seen.append(threading.get_ident())
        if callable(work):
            work()
        done.set()

    cache.submit(job)
    assert done.wait(5)
    return seen[0]


def _wait_idle(cache: ThreadCache, n: int) -> None:
    end = time.monotonic() + 5
    while cache.idle != n and time.monotonic() < end:
        time.sleep(0.01)
    assert cache.idle == n


def test_finished_threads_are_reused_and_survive_errors() -> None:
    cache = ThreadCache("test-reuse")
    first = _run(cache)
    _wait_idle(cache, 1)
    assert _run(cache) == first

    def boom() -> None:
        raise RuntimeError("provider bug")

    failing = threading.Event()
    cache.submit(lambda: (failing.set(), boom()))
    assert failing.wait(5)
    _wait_idle(cache, 1)
    assert _run(cache) == first, "an exception does not cost the thread"


def test_a_stuck_thread_is_never_handed_work_again() -> None:
    cache = ThreadCache("test-stuck")
    release, started = threading.Event(), threading.Event()
    stuck: list[int] = []

    def hang() -> None:
        stuck.append(threading.get_ident())
        started.set()
        release.wait(10)

    cache.submit(hang)
    assert started.wait(5)
    other = _run(cache)
    assert other != stuck[0]
    _wait_idle(cache, 1)
    assert _run(cache) == other, "the idle thread is reused, the stuck one is not"
    release.set()
    _wait_idle(cache, 2)


def test_idle_threads_exit() -> None:
    cache = ThreadCache("test-idle", idle_seconds=0.1)
    before = {t.ident for t in threading.enumerate() if t.name == "test-idle"}
    ident = _run(cache)
    assert ident not in before
    end = time.monotonic() + 5
    while any(t.ident == ident for t in threading.enumerate()) and time.monotonic() < end:
        time.sleep(0.02)
    assert not any(t.ident == ident for t in threading.enumerate())
    assert cache.idle == 0
    assert _run(cache) != 0  # and a new one starts when work comes
