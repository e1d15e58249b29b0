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
    aiohttp is importable again right after, for s3fs. ``ws://``/``wss://`` URLs keep it
    (any of a comma-separated list).
    """
    if "nats.aio.client" in sys.modules or "aiohttp" in sys.modules:
        return
    if url is not None and any(u.strip().startswith(("ws://", "wss://")) for u in url.split(",")):
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
    """Connect with the settings' URLs, credentials and TLS; logs disconnects and reconnects.

    The settings ask nats-py to reconnect forever (a broker restart must not kill a worker),
    which nats-py also applies to the *first* connection; ``deadline`` bounds that one, so a
    wrong URL fails in seconds with the URL (redacted) in the message. With several URLs
    (``P8FS_NATS_URL`` listing a cluster's nodes) nats-py tries each in turn: a node that is
    down at start is skipped, and only when none answers within ``deadline`` is it an error,
    which names every URL tried.
    """
    import asyncio
    import contextlib

    import nats

    options = settings.nats_connect_options()
    options.update(overrides)
    where = settings.redacted_nats_url()
    servers = options.get("servers") or []
    if len(servers) > 1:
        target = f"any of the {len(servers)} NATS servers of P8FS_NATS_URL ({where})"
    else:
        target = f"NATS at {where} (P8FS_NATS_URL)"

    async def connected_to(nc: Client) -> str:
        url = nc.connected_url
        return f"{url.hostname}:{url.port}" if url is not None else "?"

    client: list[Client] = []

    async def disconnected() -> None:
        # nats-py calls this on our own close() too (its status is CLOSED by then): only a
        # lost connection is news; a quick command closing its connection is not.
        if client and client[0].is_closed:
            log.debug("closed the connection to NATS (%s)", where)
        else:
            log.info("disconnected from NATS (%s)", where)

    async def reconnected() -> None:
        now = await connected_to(client[0]) if client else "?"
        log.info("reconnected to NATS at %s (of %s)", now, where)

    loop = asyncio.get_running_loop()
    refused: asyncio.Future[Exception] = loop.create_future()

    async def error(exc: Exception) -> None:
        log.debug("NATS error: %s", exc)
        # Wrong credentials will not heal by retrying: stop the first connection's retry
        # loop at once instead of letting it run into the deadline with a bare TimeoutError.
        if not refused.done() and _is_auth_error(exc):
            refused.set_result(exc)

    options.setdefault("name", name)
    options.setdefault("disconnected_cb", disconnected)
    options.setdefault("reconnected_cb", reconnected)
    options.setdefault("error_cb", error)
    connecting = asyncio.ensure_future(nats.connect(**options))
    try:
        done, _ = await asyncio.wait(
            {connecting, refused}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
        )
        if connecting in done:
            nc = connecting.result()
            client.append(nc)
            if len(servers) > 1:
                log.info("connected to NATS at %s (of %s)", await connected_to(nc), where)
            return nc
        if refused in done:
            problem = f"the server refused our credentials ({refused.result()})"
        else:
            problem = f"no connection within {deadline:.0f} s"
        raise NatsUnavailable(
            f"cannot connect to {target} with the P8FS_NATS_* credentials: {problem}"
        )
    except NatsUnavailable:
        raise
    except Exception as exc:
        raise NatsUnavailable(
            f"cannot connect to {target} with the P8FS_NATS_* credentials: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting


def _is_auth_error(exc: BaseException) -> bool:
    """nats-py reports a refused login as AuthorizationError or as a plain Error quoting the
    server's ``-ERR 'Authorization Violation'`` (or an authentication/JWT failure)."""
    from nats.errors import AuthorizationError

    text = str(exc).lower()
    return isinstance(exc, AuthorizationError) or any(
        word in text
        for word in ("authorization violation", "authentication", "user authentication")
    )
