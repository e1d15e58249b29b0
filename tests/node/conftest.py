"""Every test under tests/node runs with outbound network blocked except loopback.

Why: p8fs-node must never reach the internet (no telemetry, no model or tokenizer download).
Libraries that phone home usually swallow the error when the connection fails, so merely
blocking would hide the attempt; the guard therefore *records* every blocked attempt and fails
the test that made it. Loopback (127.0.0.0/8, ::1, ``localhost``) and Unix sockets keep working,
so tests can still talk to the real local servers they start.

The guard is a ``sys.addaudithook`` hook on CPython's socket events (``connect`` and
``connect_ex``, ``sendto``, ``sendmsg``, ``getaddrinfo``, ``gethostbyname``), active only while
a test in this folder runs; it cannot see child processes or C libraries that open sockets
without going through Python. ``tests/node/test_offline.py`` covers those with a subprocess in a network
namespace that has no route out.

A test that deliberately provokes a blocked attempt (to prove the guard works) is marked
``@pytest.mark.allow_outbound_attempts`` and inspects the ``network_guard`` fixture itself.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class OutboundConnectionBlocked(ConnectionRefusedError):
    """Raised instead of opening a non-loopback connection while the guard is active."""


class OutboundLookupBlocked(socket.gaierror):
    """Raised instead of resolving a non-loopback host name while the guard is active."""


def is_loopback_host(host: Any) -> bool:
    """Whether ``host`` (a name or address, as sockets receive it) stays on this machine."""
    if host is None:
        return True
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().strip("[]").split("%", 1)[0].rstrip(".").lower()
    if name == "" or name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _is_local_address(address: Any) -> bool:
    """Whether a ``connect``/``sendto`` address tuple (or Unix path) stays on this machine."""
    if isinstance(address, str | bytes | bytearray):  # AF_UNIX path or abstract name
        return True
    if isinstance(address, tuple) and address:
        return is_loopback_host(address[0])
    return False


class NetworkGuard:
    """What was blocked while one test ran (the audit hook below does the blocking)."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._lock = threading.Lock()

    def block(self, what: str, error: OSError) -> None:
        with self._lock:
            self.attempts.append(what)
        raise error


#: The guard of the running test, or ``None`` outside tests/node (the hook is then a no-op).
_active: NetworkGuard | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """A ``sys.addaudithook`` hook: sees every socket call made through CPython's ``_socket``,
    however the caller imported it, so early-bound references cannot slip past it."""
    guard = _active
    if guard is None or not event.startswith("socket."):
        return
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1]
        if address is None or getattr(sock, "family", None) not in _INET:
            return
        if not _is_local_address(address):
            guard.block(
                f"{event} {address!r}",
                OutboundConnectionBlocked(f"outbound {event} to {address!r} blocked in tests"),
            )
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
        if not is_loopback_host(host):
            guard.block(
                f"{event} {host!r}",
                OutboundLookupBlocked(socket.EAI_NONAME, f"lookup of {host!r} blocked in tests"),
            )


_INET = (socket.AF_INET, socket.AF_INET6)
sys.addaudithook(_audit)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_outbound_attempts: the test provokes blocked network attempts on purpose and "
        "checks network_guard.attempts itself",
    )


@pytest.fixture(autouse=True)
def network_guard(request: pytest.FixtureRequest) -> Iterator[NetworkGuard]:
    """Block non-loopback network for the test; fail it if anything tried to get out."""
    global _active
    guard = NetworkGuard()
    previous, _active = _active, guard
    try:
        yield guard
    finally:
        _active = previous
    if guard.attempts and request.node.get_closest_marker("allow_outbound_attempts") is None:
        pytest.fail(
            "the test tried to reach the network (blocked): " + "; ".join(guard.attempts[:10]),
            pytrace=False,
        )
