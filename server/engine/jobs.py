"""The work the event loop queues for the engine thread, and the queue between them.

A job is created on the caller's event loop and finished on the engine thread, which answers
through ``post`` (thread-safe, and harmless once the caller's loop has closed). A generation's
events are pending from the moment the engine sends them until the caller reports them
``taken`` (the servicer does once grpc's write of the event has returned, that is once the
transport accepted it into HTTP/2 flow control): past ``buffer_limit`` pending events the job
stops with RESOURCE_EXHAUSTED (a caller that does not read its stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from maira_sae.server.engine.request_registry import UNMARKED, RequestMarks
from maira_sae.server.engine.schedule import LeaveReason
from maira_sae.server.engine.types import GenerationEvent
from maira_sae.server.errors import ResourceExhausted

if TYPE_CHECKING:
    from maira_sae.server.engine.analysis import AnalysisResult
    from maira_sae.server.engine.preparation import PreparedAnalysis, PreparedGeneration

DEFAULT_STREAM_BUFFER_EVENTS = 512


@dataclass(eq=False)
class Job:
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.monotonic() seconds
    enqueued_at: float = field(default_factory=time.monotonic)
    marks: RequestMarks = UNMARKED  # its priority, and what its deadline is

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def post(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback`` on the caller's event loop; a loop that has closed has no caller
        left to tell, and must not take the engine thread down with it."""
        with contextlib.suppress(RuntimeError):  # also when it closes between check and call
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(callback, *args)


@dataclass(eq=False)
class AnalysisJob(Job):
    prepared: PreparedAnalysis | None = None
    future: asyncio.Future | None = None

    def resolve(self, outcome: AnalysisResult | BaseException) -> None:
        assert self.future is not None
        self.post(_settle, self.future, outcome)

    def cut(self, error: BaseException) -> None:
        """End the call now with ``error`` (on the caller's loop); the engine drops it."""
        assert self.future is not None
        _settle(self.future, error)

    def stop_reason(self) -> LeaveReason | None:
        assert self.future is not None
        return LeaveReason.CANCELLED if self.future.done() else None  # the caller went away


@dataclass(eq=False)
class GenerateJob(Job):
    """``send`` runs on the engine thread, ``receive`` and ``taken`` on the caller's loop; at
    most ``buffer_limit`` events are pending (sent, and not yet ``taken``), then the job stops
    with RESOURCE_EXHAUSTED."""

    prepared: PreparedGeneration | None = None
    buffer_limit: int = DEFAULT_STREAM_BUFFER_EVENTS
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    _pending: int = 0
    _overflowed: bool = False
    _cut: BaseException | None = None  # set on the caller's loop: the call ends with it
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, item: GenerationEvent | BaseException | None) -> None:
        """An event, or the end: an error or None. Nothing is sent after an overflow."""
        with self._lock:
            if self._overflowed:
                return
            if isinstance(item, BaseException | None):
                pass  # the end always fits
            elif self._pending >= self.buffer_limit:
                self._overflowed = True
                self.stop.set()
                item = ResourceExhausted(
                    f"the caller stopped reading: {self.buffer_limit} events of this stream "
                    "were waiting for the connection to take them "
                    "(batching.stream_buffer_events), so its generation was stopped; read "
                    "the stream as it arrives",
                    retry_after_s=1.0,
                    reason="STREAM_BUFFER_FULL",
                    metadata={"limit": "stream_buffer_events", "limitValue": self.buffer_limit},
                )
            else:
                self._pending += 1
        self.post(self.events.put_nowait, item)

    def stop_reason(self) -> LeaveReason | None:
        if self._overflowed:
            return LeaveReason.STREAM_OVERFLOW
        return LeaveReason.CANCELLED if self.stop.is_set() else None

    async def receive(self) -> GenerationEvent | BaseException | None:
        """The next event, or the end; once ``cut``, its error before any event still queued."""
        item = await self.events.get()
        return item if self._cut is None else self._cut

    def cut(self, error: BaseException) -> None:
        """End the call now with ``error`` (on the caller's loop): its rows leave at the next
        step, and the events not yet received are dropped."""
        self._cut = error
        self.stop.set()
        self.events.put_nowait(error)

    def taken(self) -> None:
        """One received event has left the server (the transport took it)."""
        with self._lock:
            self._pending -= 1


def _settle(future: asyncio.Future, outcome: object) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class JobQueue:
    """Jobs from the event loop to the engine thread, in arrival order."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._condition = threading.Condition()
        self._closed = False

    def put(self, job: Job) -> None:
        with self._condition:
            self._jobs.append(job)
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def take_all(self, *, wait: bool) -> list[Job] | None:
        """Every queued job (waiting for one when ``wait``); None once closed and empty."""
        with self._condition:
            if wait and not self._jobs and not self._closed:
                self._condition.wait()
            if self._closed and not self._jobs and wait:
                return None
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def arriving_analyses(self, room: int, window_s: float) -> list[AnalysisJob]:
        """Up to ``room`` analysis jobs arriving within ``window_s``; a generation met on the
        way stays queued for the next step."""
        arriving: list[AnalysisJob] = []
        window_end = time.monotonic() + window_s
        while len(arriving) < room:
            with self._condition:
                remaining = window_end - time.monotonic()
                if not self._jobs and remaining > 0 and not self._closed:
                    self._condition.wait(remaining)
                if not self._jobs or not isinstance(self._jobs[0], AnalysisJob):
                    return arriving
                arriving.append(self._jobs.popleft())  # type: ignore[arg-type]
        return arriving
