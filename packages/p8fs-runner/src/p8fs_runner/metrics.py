"""Prometheus metrics and the Kubernetes probes, served on ``P8FS_METRICS_PORT`` (default 9090,
0 turns the server off).

``/metrics`` is the Prometheus text format; ``/healthz`` answers 200 while the process's event
loop runs (a wedged loop fails the liveness probe); ``/readyz`` answers 200 only while the process
is connected to NATS and its database answered, so a worker that lost its broker stops receiving
traffic from nobody but also shows up as not ready. The server is a few lines of asyncio rather
than a web framework: a worker's start must stay fast and its image small.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

PROCESSED = Counter(
    "p8fs_files_processed_total", "Events processed and acknowledged, per tier.", ["tier"]
)
FAILED = Counter(
    "p8fs_files_failed_total",
    "Failed deliveries per tier and kind (transient: retried later; permanent: dead-lettered).",
    ["tier", "kind"],
)
REDELIVERED = Counter(
    "p8fs_messages_redelivered_total",
    "Deliveries received that were not the first delivery of their message.",
    ["tier"],
)
DEAD_LETTERED = Counter(
    "p8fs_dead_letters_total", "Events published to the dead-letter stream.", ["tier"]
)
BYTES = Counter("p8fs_bytes_processed_total", "Bytes of files processed, per tier.", ["tier"])
SECONDS = Histogram(
    "p8fs_processing_seconds",
    "Seconds spent processing one event, per tier.",
    ["tier"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
PAUSED = Gauge(
    "p8fs_worker_paused",
    "1 while a worker has stopped pulling because a dependency (database, S3) is down, per tier.",
    ["tier"],
)
IN_FLIGHT = Gauge("p8fs_in_flight", "Events being processed right now, per tier.", ["tier"])
ROUTED = Counter("p8fs_events_routed_total", "Events routed by the router, per tier.", ["tier"])

#: Returns ``True`` when ready; ``False``, or a string saying why (the body of the 503), when not.
ReadyCheck = Callable[[], Awaitable[bool | str]]

_RESPONSES = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP/1.1 on one port."""

    def __init__(self, ready: ReadyCheck | None = None, host: str = "0.0.0.0") -> None:
        self.ready = ready
        self.host = host
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self, port: int) -> int:
        """Listen on ``port`` (0: any free port); returns the bound port."""
        self._server = await asyncio.start_server(self._handle, self.host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics and probes on http://%s:%d/metrics", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _not_ready(self) -> str | None:
        """Why this process is not ready, or ``None``."""
        if self.ready is None:
            return None
        try:
            answer = await asyncio.wait_for(self.ready(), timeout=2.0)
        except Exception as exc:
            return f"readiness check failed: {type(exc).__name__}: {exc}"
        if answer is True:
            return None
        return answer or ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5.0)
            while (await asyncio.wait_for(reader.readline(), timeout=5.0)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            content_type = "text/plain; charset=utf-8"
            if path == "/metrics":
                status, body, content_type = 200, generate_latest(), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, body = 200, b"ok\n"
            elif path == "/readyz":
                reason = await self._not_ready()
                if reason is None:
                    status, body = 200, b"ready\n"
                else:
                    status, body = 503, f"not ready{': ' if reason else ''}{reason}\n".encode()
            else:
                status, body = 404, b"not found\n"
            head = (
                f"HTTP/1.1 {status} {_RESPONSES[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def start_probe_server(
    ready: ReadyCheck | None, port: int, host: str | None = None
) -> ProbeServer | None:
    """Start the probe server on ``host:port`` (``P8FS_METRICS_HOST``/``P8FS_METRICS_PORT``), or
    not at all for port 0.

    A port already taken (two workers on one laptop) is logged, not fatal: metrics are not worth
    refusing to process files.
    """
    if port <= 0:
        return None
    server = ProbeServer(ready, host or "0.0.0.0")
    try:
        await server.start(port)
    except OSError as exc:
        log.warning("metrics server not started on port %d: %s", port, exc)
        return None
    return server
