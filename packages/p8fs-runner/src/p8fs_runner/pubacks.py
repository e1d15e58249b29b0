"""Waiting for JetStream's PubAcks with a deadline.

nats-py's ``publish_async`` returns a future that resolves when the stream's PubAck arrives, and
has no timeout of its own. When the node that took the publish dies before it answers, or the
connection drops with the request in flight, that future never resolves: a caller that awaits it
bare hangs for good, holding whatever it was about to ack. This happened to the router when a
NATS node was SIGKILLed mid-burst (it held 200 unacked events until the test gave up). Every
pipelined publish therefore waits here, with one deadline for the whole burst, and treats an
unanswered publish as failed: the caller retries it under the same ``Nats-Msg-Id``, which the
stream deduplicates if the first copy did land after all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from p8fs.errors import TransientError

if TYPE_CHECKING:  # pragma: no cover
    from nats.js.api import PubAck

#: Seconds to wait for the PubAcks of one burst. A healthy stream answers in milliseconds; an
#: election after a node loss takes a few seconds (5–8 s measured in tests/runner/test_cluster).
PUBACK_TIMEOUT = 10.0


class PubAckTimeout(TransientError):
    """The stream did not confirm a publish in time: it may or may not be stored."""


async def await_pubacks(
    futures: Sequence[asyncio.Future[PubAck]], within: float = PUBACK_TIMEOUT
) -> list[PubAck | BaseException]:
    """Each future's PubAck, or the exception it failed with, or :class:`PubAckTimeout` for one
    still unanswered after ``within`` seconds (it is cancelled, which frees its slot in
    nats-py's pending-publish limit)."""
    if futures:
        await asyncio.wait(futures, timeout=within)
    results: list[PubAck | BaseException] = []
    for future in futures:
        if not future.done():
            future.cancel()
            results.append(PubAckTimeout(f"no PubAck within {within:g} s"))
        elif future.cancelled():
            results.append(PubAckTimeout("the publish was cancelled"))
        elif (exc := future.exception()) is not None:
            results.append(exc)
        else:
            results.append(future.result())
    return results
