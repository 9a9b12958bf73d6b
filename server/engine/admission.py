"""Admission: a bounded number of places, taken before a request costs anything, in two lanes.

Every request takes a place before it is prepared and gives it back when its call ends;
with every place taken the next caller is refused at once (RESOURCE_EXHAUSTED with a RetryInfo
delay) instead of queueing without bound. Long calls (generations asking for more than
``long_call_tokens`` tokens over their variants) and batch-marked calls hold their places for
long, so they may take at most ``long_places`` of them: the rest stay for short interactive
calls, which a server full of long generations still admits. Each lane keeps a running mean
of how long its places are held, the delay it tells a refused caller to wait.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from maira_sae.server.engine.admission_policy import Priority, is_long_call
from maira_sae.server.engine.engine_core import SchedulerObserver
from maira_sae.server.errors import ServerFull, Unavailable

# The RetryInfo delay of a full lane: about the time a place takes to free up, so that
# refused callers come back when there is room instead of spending the server on refusals.
MIN_RETRY_AFTER_S = 0.2
MAX_RETRY_AFTER_S = 10.0
_HOLD_SMOOTHING = 0.2  # weight of the newest call in the running mean of how long places are held


class Lane(enum.Enum):
    SHORT = "short"  # interactive analyses and short generations
    LONG = "long"  # long generations and batch-marked calls


@dataclass(frozen=True)
class AdmissionLimits:
    places: int  # requests admitted at once (being prepared, queued or running)
    long_places: int  # of them, the most that long or batch calls may hold
    long_call_tokens: int  # a generation asking for more tokens over its variants is long

    def __post_init__(self) -> None:
        if not 1 <= self.long_places <= self.places:
            raise ValueError(f"long_places must be in 1..{self.places}, got {self.long_places}")

    def lane(self, priority: Priority, tokens_to_generate: int) -> Lane:
        long = is_long_call(priority, tokens_to_generate, self.long_call_tokens)
        return Lane.LONG if long else Lane.SHORT


class Admission:
    """One place among the admitted requests: taken by ``AdmissionControl.admit`` before the
    request is prepared, given back once when its call ends (``release`` or leaving the
    ``with``)."""

    def __init__(self, priority: Priority, release: Callable[[float], None]) -> None:
        self.priority = priority
        self.taken_at = time.monotonic()
        self._release: Callable[[float], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release(time.monotonic() - self.taken_at)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class AdmissionControl:
    """The places, counted on the event loop only; ``observer`` hears each admission and the
    admitted count."""

    def __init__(self, limits: AdmissionLimits, observer: SchedulerObserver) -> None:
        self.limits = limits
        self._observer = observer
        self._held = dict.fromkeys(Lane, 0)
        self._mean_hold_s = dict.fromkeys(Lane, MIN_RETRY_AFTER_S)
        self.accepting = True

    @property
    def admitted(self) -> int:
        return sum(self._held.values())

    def admit(self, priority: Priority, tokens_to_generate: int = 0) -> Admission:
        """A place, or at once UNAVAILABLE (draining) or RESOURCE_EXHAUSTED (full)."""
        if not self.accepting:
            raise Unavailable(
                "the server is shutting down; retry on another replica", reason="SHUTTING_DOWN"
            )
        lane = self.limits.lane(priority, tokens_to_generate)
        if self.admitted >= self.limits.places:
            raise ServerFull(
                f"the server's queue is full ({self.limits.places} requests); retry shortly",
                retry_after_s=self._retry_after_s(lane),
                reason="QUEUE_FULL",
                metadata={"limit": "queue_size", "limitValue": self.limits.places},
            )
        if lane is Lane.LONG and self._held[Lane.LONG] >= self.limits.long_places:
            raise ServerFull(
                f"the server's places for long and batch calls are taken"
                f" ({self.limits.long_places} of {self.limits.places}; the rest are kept for"
                " short interactive calls); retry shortly",
                retry_after_s=self._retry_after_s(lane),
                reason="LONG_CALL_PLACES_FULL",
                metadata={"limit": "long_call_share", "limitValue": self.limits.long_places},
            )
        self._held[lane] += 1
        self._observer.call_admitted(priority.value, lane.value)
        self._observer.admitted_requests(self.admitted)
        return Admission(priority, lambda held_s: self._release(lane, held_s))

    def _retry_after_s(self, lane: Lane) -> float:
        """With every place taken, one frees up about every mean-hold / places seconds; a
        refused caller waits about the mean hold, by which time the lane has turned over
        (Little's law) and its retry meets room instead of another refusal."""
        return min(max(self._mean_hold_s[lane], MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    def _release(self, lane: Lane, held_s: float) -> None:
        self._mean_hold_s[lane] += _HOLD_SMOOTHING * (held_s - self._mean_hold_s[lane])
        self._held[lane] -= 1
        self._observer.admitted_requests(self.admitted)
