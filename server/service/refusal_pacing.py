"""Refusal pacing: a connection that ignores RetryInfo is answered at the pace it was told.

A full server refuses a call at once (RESOURCE_EXHAUSTED with a RetryInfo delay). A client
that ignores the delay and calls again at once spends the server's event loop on refusals
(about a millisecond each), hundreds a second, and starves the calls it is serving. A caller
that honours the delay is refused at most once per delay for each call it has open; so a
connection is refused at once up to that rate, ``open calls / delay``, and a refusal past it
is held back until the rate allows it (never past the call's own deadline). Callers that keep
the pace are never held, however many share a connection (gRPC shares one connection between
the channels of a process, and a proxy pools its callers'); a call the server can admit is
never delayed; a held call stays refused.

The rate is kept per connection as a generic cell rate algorithm (the virtual-scheduling
form): each refusal moves the connection's theoretical arrival time on by ``delay / open
calls``, and a refusal is answered when that time is at most one delay ahead.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

MAX_PEERS = 4096  # connections remembered; the least recently refused is forgotten first


class RefusalPacer:
    """Open calls and the refusal schedule of each connection (by peer address), on the event
    loop only."""

    def __init__(
        self,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._max_peers = max_peers
        self._clock = clock
        self._sleep = sleep
        self._open_calls: dict[str, int] = {}
        self._next_refusal_at: OrderedDict[str, float] = OrderedDict()

    def call_opened(self, peer: str) -> None:
        self._open_calls[peer] = self._open_calls.get(peer, 0) + 1

    def call_closed(self, peer: str) -> None:
        left = self._open_calls.get(peer, 1) - 1
        if left > 0:
            self._open_calls[peer] = left
        else:
            self._open_calls.pop(peer, None)

    async def pace(self, peer: str, retry_after_s: float, time_left_s: float | None) -> float:
        """Waits until ``peer`` may be refused again (at most ``time_left_s``, the time the
        call has before its deadline) and returns the seconds waited: 0 for a connection that
        kept the pace its refusals' delays set."""
        now = self._clock()
        interval = retry_after_s / max(1, self._open_calls.get(peer, 0))
        due = max(self._next_refusal_at.get(peer, now), now)
        self._remember(peer, due + interval)  # before waiting: calls waiting together queue
        wait_s = due + interval - retry_after_s - now
        if time_left_s is not None:
            wait_s = min(wait_s, time_left_s)
        if wait_s <= 0:
            return 0.0
        await self._sleep(wait_s)
        return wait_s

    def _remember(self, peer: str, next_refusal_at: float) -> None:
        self._next_refusal_at[peer] = next_refusal_at
        self._next_refusal_at.move_to_end(peer)
        while len(self._next_refusal_at) > self._max_peers:
            self._next_refusal_at.popitem(last=False)
