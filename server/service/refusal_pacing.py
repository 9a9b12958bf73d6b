"""Refusal pacing: a connection that ignores RetryInfo is answered at the pace it was told.

A full server refuses a call at once (RESOURCE_EXHAUSTED with a RetryInfo delay). A client
that ignores the delay and calls again at once spends the server's event loop on refusals
(about a millisecond each), hundreds a second, and starves the calls it is serving. So when a
connection is refused again before the delay it was last given has passed, that refusal is
held back until the delay ends (never past the call's own deadline): the connection is
answered no faster than it was asked to call. A client that honours RetryInfo is never held,
and a call the server can admit is never delayed: only refusals are held, and a held call
stays refused.

Connections are told apart by their peer address (``context.peer()``): behind a proxy that
pools many callers on one connection they share one pace (``batching.pace_refusals`` turns
this off).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

MAX_PEERS = 4096  # connections remembered; the least recently refused is forgotten first


class RefusalPacer:
    """When each recently refused connection may be refused again without waiting."""

    def __init__(
        self,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._max_peers = max_peers
        self._clock = clock
        self._sleep = sleep
        self._not_before: OrderedDict[str, float] = OrderedDict()

    async def pace(self, peer: str, retry_after_s: float, time_left_s: float | None) -> float:
        """Waits until ``peer``'s previous refusal delay has passed (at most ``time_left_s``,
        the time the call has before its deadline), records this refusal's delay, and
        returns the seconds waited (0 for a connection that kept its pace)."""
        wait_s = self._not_before.get(peer, 0.0) - self._clock()
        if time_left_s is not None:
            wait_s = min(wait_s, time_left_s)
        if wait_s > 0:
            await self._sleep(wait_s)
        else:
            wait_s = 0.0
        self._remember(peer, self._clock() + retry_after_s)
        return wait_s

    def _remember(self, peer: str, not_before: float) -> None:
        self._not_before[peer] = max(not_before, self._not_before.get(peer, 0.0))
        self._not_before.move_to_end(peer)
        while len(self._not_before) > self._max_peers:
            self._not_before.popitem(last=False)
