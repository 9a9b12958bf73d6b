"""Refusal pacing: a connection that ignores RetryInfo is answered at the pace it was told.

A full server refuses a call at once (RESOURCE_EXHAUSTED with a RetryInfo delay). A client
that ignores the delay and calls again at once spends the server's event loop on refusals
(about a millisecond each), hundreds a second, and starves the calls it is serving. So each
connection (by peer address) is refused at once only

- when the call can be a retry that waited: a refusal's delay on this connection has passed
  (within a grace of one more delay, at least ``MIN_RETRY_GRACE_S``) and no other call has
  claimed it; or
- within the rate of one refusal per delay for each call open on the connection (a generic
  cell rate algorithm, virtual-scheduling form: each such refusal moves the connection's
  theoretical arrival time on by ``delay / open calls``; a refusal is answered when that time
  is at most one delay ahead).

Any other refusal is held back until the rate allows it, never past the call's deadline. A
caller that waits the delay before it calls again is never held on that call, however many
share its connection (a process's channels share one; a proxy pools its callers'); a call the
server can admit is never delayed; a held call stays refused.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_PEERS = 4096  # connections remembered; the least recently refused is forgotten first
MAX_RETRIES_OWED = 1024  # per connection: refusals whose callers may come back
MIN_RETRY_GRACE_S = 1.0  # a retry is recognised until its delay, and one more, has passed


@dataclass
class _Connection:
    next_refusal_at: float  # the rate's theoretical arrival time
    # When each refusal's caller may retry, and until when that counts as a retry: in order.
    retries_owed: deque[tuple[float, float]] = field(default_factory=deque)

    def claim_retry(self, now: float) -> bool:
        """A refusal's delay has passed and its retry is not claimed yet: claim it."""
        while self.retries_owed and self.retries_owed[0][1] < now:
            self.retries_owed.popleft()
        if self.retries_owed and self.retries_owed[0][0] <= now:
            self.retries_owed.popleft()
            return True
        return False

    def owe_retry(self, answered_at: float, retry_after_s: float) -> None:
        grace_s = max(retry_after_s, MIN_RETRY_GRACE_S)
        self.retries_owed.append(
            (answered_at + retry_after_s, answered_at + retry_after_s + grace_s)
        )
        if len(self.retries_owed) > MAX_RETRIES_OWED:
            self.retries_owed.popleft()


class RefusalPacer:
    """Open calls and the refusal schedule of each connection, on the event loop only."""

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
        self._connections: OrderedDict[str, _Connection] = OrderedDict()

    def call_opened(self, peer: str) -> None:
        self._open_calls[peer] = self._open_calls.get(peer, 0) + 1

    def call_closed(self, peer: str) -> None:
        left = self._open_calls.get(peer, 1) - 1
        if left > 0:
            self._open_calls[peer] = left
        else:
            self._open_calls.pop(peer, None)

    async def pace(self, peer: str, retry_after_s: float, time_left_s: float | None) -> float:
        """Waits until ``peer`` may be refused (at most ``time_left_s``, the time the call has
        before its deadline), and returns the seconds waited: 0 for a connection that kept the
        pace its refusals' delays set."""
        now = self._clock()
        connection = self._connection(peer, now)
        wait_s = 0.0
        if not connection.claim_retry(now):
            wait_s = self._rate_wait_s(connection, peer, now, retry_after_s)
        if time_left_s is not None:
            wait_s = min(wait_s, time_left_s)
        wait_s = max(wait_s, 0.0)
        if wait_s:
            await self._sleep(wait_s)
        connection.owe_retry(self._clock(), retry_after_s)
        return wait_s

    def _rate_wait_s(
        self, connection: _Connection, peer: str, now: float, retry_after_s: float
    ) -> float:
        """How long a refusal waits for the rate of one per delay per open call; it takes its
        turn now, so refusals held together are answered one interval apart."""
        interval = retry_after_s / max(1, self._open_calls.get(peer, 0))
        due = max(connection.next_refusal_at, now)
        connection.next_refusal_at = due + interval
        return due + interval - retry_after_s - now

    def _connection(self, peer: str, now: float) -> _Connection:
        connection = self._connections.get(peer)
        if connection is None:
            connection = self._connections[peer] = _Connection(next_refusal_at=now)
            while len(self._connections) > self._max_peers:
                self._connections.popitem(last=False)
        self._connections.move_to_end(peer)
        return connection
