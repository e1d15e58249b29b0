"""Is a failure the file's, or a dependency's? Probes of what a worker needs to store a file.

A worker that sees a failure which may not be the file's fault (see
:func:`p8fs_runner.settlement.may_be_outage`) asks its probes. If one fails, the database, S3 or
the embedder is down (or refuses the worker's credentials): the worker stops pulling, reports not ready, keeps the
messages it holds and asks the probes again until they pass (:class:`Dependencies.wait_until_up`).
Spending the file's deliveries instead would dead-letter good files during any outage longer
than the tier's retry budget (about 18 minutes on the small tier).

A probe returns ``None`` when its dependency answers, or the reason it does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from p8fs_runner.events import StorageEvent

log = logging.getLogger(__name__)

#: A probe: asked with the event whose processing failed (S3 is probed on that event's bucket).
Probe = Callable[["StorageEvent | None"], Awaitable[str | None]]

#: Seconds between probes while a dependency is down.
PROBE_INTERVAL = 2.0
#: Longest a single probe may take before its dependency counts as down.
PROBE_TIMEOUT = 10.0


class Dependencies:
    """The probes of one worker, asked together."""

    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.probes = tuple(probes)
        self.interval = interval
        self.timeout = timeout

    async def check(self, event: StorageEvent | None = None) -> str | None:
        """The first dependency that does not answer, as a reason; ``None`` if all do."""
        for probe in self.probes:
            try:
                reason = await asyncio.wait_for(probe(event), timeout=self.timeout)
            except TimeoutError:
                reason = f"{_name(probe)} did not answer within {self.timeout:.0f}s"
            except Exception as exc:  # a probe that breaks says its dependency is down
                reason = f"{_name(probe)}: {type(exc).__name__}: {exc}"
            if reason is not None:
                return reason
        return None

    async def wait_until_up(
        self, event: StorageEvent | None, stop: asyncio.Event
    ) -> bool:
        """Probe every ``interval`` seconds until every dependency answers (``True``) or
        ``stop`` is set (``False``)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            if stop.is_set():
                return False
            if await self.check(event) is None:
                return True
        return False


def _name(probe: Any) -> str:
    return str(getattr(probe, "dependency", getattr(probe, "__name__", "a dependency")))


class DatabaseProbe:
    """The database answers a query (and accepts the worker's credentials)."""

    dependency = "database"

    def __init__(self, database: Callable[[], Awaitable[Any]]) -> None:
        #: Returns the :class:`p8fs.database.Database` (created on first use).
        self._database = database

    async def __call__(self, event: StorageEvent | None = None) -> str | None:
        try:
            db = await self._database()
            await db.existing_tables()
        except Exception as exc:
            return f"database unavailable: {exc}"
        return None


class S3Probe:
    """The object store answers for the event's bucket with the worker's credentials.

    ``HEAD bucket``: a refused connection, a timeout or a refusal of the credentials (403) is an
    outage; a bucket that does not exist (404) is not (its files are gone: the file's fault).
    """

    dependency = "S3"

    def __init__(self, storage_options: dict[str, Any]) -> None:
        self.storage_options = storage_options

    async def __call__(self, event: StorageEvent | None = None) -> str | None:
        if event is None or not event.uri.startswith("s3://"):
            return None
        from p8fs.storage import async_s3_filesystem

        bucket = event.bucket
        try:
            fs = await async_s3_filesystem(self.storage_options)
            await fs._call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            return None
        except Exception as exc:
            endpoint = (self.storage_options.get("client_kwargs") or {}).get("endpoint_url", "")
            return (
                f"S3 {endpoint} unavailable for bucket {bucket!r}: {type(exc).__name__}: {exc} "
                "(check P8FS_SEAWEEDFS_ENDPOINT, P8FS_S3_ACCESS_KEY and P8FS_S3_SECRET_KEY)"
            )
        return None


class EmbedderProbe:
    """The configured embedder answers (one tiny embedding request, or a model that loads).

    Only a worker with ``P8FS_EMBEDDER`` set has this probe: its files are acknowledged once
    their vectors are stored, so an embedding server that is down is an outage to wait out, like
    the database's, not a reason to spend the file's deliveries.
    """

    dependency = "embedder"

    def __init__(self, embedder: Any) -> None:
        #: A :class:`p8fs.embedding.Embedder`.
        self.embedder = embedder

    async def __call__(self, event: StorageEvent | None = None) -> str | None:
        reason: str | None = await self.embedder.probe()
        if reason is not None:
            return f"{reason} (check P8FS_EMBEDDER, P8FS_EMBEDDING_URL, P8FS_EMBEDDING_MODEL)"
        return None
