"""Connecting to NATS from :class:`~p8fs_runner.settings.RunnerSettings`, with errors that say
which server and which setting, and never print a secret."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from p8fs.errors import TransientError

if TYPE_CHECKING:  # pragma: no cover
    from nats.aio.client import Client

    from p8fs_runner.settings import RunnerSettings

log = logging.getLogger(__name__)


def import_nats_fast(url: str | None = None) -> None:
    """Import nats-py without aiohttp, unless the URL needs WebSockets.

    nats-py imports aiohttp at start-up only for its WebSocket transport; that import is most of
    a worker's start time (0.3 s idle, ~1 s on a loaded node; measured with ``-X importtime``),
    and a worker must have its first fetch out within a second. Hiding aiohttp while nats-py is
    imported makes it fall back to "no WebSocket support" (its own ``ImportError`` branch);
    aiohttp is importable again right after, for s3fs. ``ws://``/``wss://`` URLs keep it.
    """
    if "nats.aio.client" in sys.modules or "aiohttp" in sys.modules:
        return
    if url is not None and url.startswith(("ws://", "wss://")):
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # `import aiohttp` -> ImportError
    try:
        import nats.aio.client  # noqa: F401
    finally:
        del sys.modules["aiohttp"]


class NatsUnavailable(TransientError):
    """The NATS server did not answer (or refused our credentials)."""

    code = "nats_unavailable"


async def connect_nats(
    settings: RunnerSettings,
    *,
    name: str = "p8fs-runner",
    deadline: float = 10.0,
    **overrides: Any,
) -> Client:
    """Connect with the settings' URL, credentials and TLS; logs disconnects and reconnects.

    The settings ask nats-py to reconnect forever (a broker restart must not kill a worker),
    which nats-py also applies to the *first* connection; ``deadline`` bounds that one, so a
    wrong URL fails in seconds with the URL (redacted) in the message.
    """
    import asyncio

    import nats

    options = settings.nats_connect_options()
    options.update(overrides)
    where = settings.redacted_nats_url()

    async def disconnected() -> None:
        log.info("disconnected from NATS at %s", where)

    async def reconnected() -> None:
        log.info("reconnected to NATS at %s", where)

    async def error(exc: Exception) -> None:
        log.debug("NATS error: %s", exc)

    options.setdefault("name", name)
    options.setdefault("disconnected_cb", disconnected)
    options.setdefault("reconnected_cb", reconnected)
    options.setdefault("error_cb", error)
    try:
        return await asyncio.wait_for(nats.connect(**options), timeout=deadline)
    except Exception as exc:
        raise NatsUnavailable(
            f"cannot connect to NATS at {where} (P8FS_NATS_URL and P8FS_NATS_* credentials): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
