"""The engine as the event loop sees it: admission, the queue, and the engine thread.

The event loop never runs torch: requests are admitted here (a bounded count of work being
prepared, queued or running; RESOURCE_EXHAUSTED at once when full, and before the caller pays
for any preparation: ``admit`` comes first, ``analyse``/``generate`` take its ``Admission``),
queued, and picked up by one engine thread, which runs an ``EngineCore`` one step at a time
(``engine_core``; what a step decides is ``schedule``'s docstring). Encode and TopFeatures
requests arriving within a short window share a forward pass (while generations run, no
window is waited for), so analysis never waits for a whole generation, nor generations for a
stream of analyses. Work whose deadline has passed is dropped before it reaches the model; a
cancelled call, an expired one, and one whose caller does not read its stream
(``stream_buffer_events`` unsent) leave at the next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from maira_sae.server.engine.admission_policy import AdmissionPolicy
from maira_sae.server.engine.engine_core import EngineCore, SchedulerObserver
from maira_sae.server.engine.executor import ModelRunner
from maira_sae.server.engine.jobs import (
    DEFAULT_STREAM_BUFFER_EVENTS,
    AnalysisJob,
    GenerateJob,
    Job,
    JobQueue,
)
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.types import GenerationEvent
from maira_sae.server.errors import ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from maira_sae.server.engine.analysis import AnalysisResult
    from maira_sae.server.engine.preparation import PreparedAnalysis, PreparedGeneration

# The RetryInfo delay of a full queue: about the time a place takes to free up, so that
# refused callers come back when there is room instead of spending the server on refusals.
MIN_RETRY_AFTER_S = 0.2
MAX_RETRY_AFTER_S = 10.0
_HOLD_SMOOTHING = 0.2  # weight of the newest call in the running mean of how long places are held


class Admission:
    """One place among the admitted requests: taken by ``Scheduler.admit`` before the request
    is prepared, given back once when its call ends (``release`` or leaving the ``with``)."""

    def __init__(self, release: Callable[[float], None]) -> None:
        self._release: Callable[[float], None] | None = release
        self._taken_at = time.monotonic()

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release(time.monotonic() - self._taken_at)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class AsyncEngine:
    def __init__(
        self,
        runner: ModelRunner,
        *,
        queue_size: int,
        max_batch_size: int,
        batch_window_s: float,
        stream_buffer_events: int = DEFAULT_STREAM_BUFFER_EVENTS,
        limits: BatchLimits | None = None,
        policy: AdmissionPolicy | None = None,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self._queue_size = queue_size
        self._batch_window_s = batch_window_s
        self._stream_buffer_events = stream_buffer_events
        self._observer = observer or SchedulerObserver()
        self._core = EngineCore(
            runner,
            limits=limits or BatchLimits(),
            max_analysis_batch=max_batch_size,
            policy=policy,
            observer=self._observer,
        )
        self._queue = JobQueue()
        self._admitted = 0  # queued plus running; touched on the event loop only
        self._mean_hold_s = MIN_RETRY_AFTER_S  # running mean of how long a place is held
        self._accepting = True
        self._thread = threading.Thread(target=self._serve, name="maira-sae-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_accepting(self) -> None:
        """Drain: new work is refused with UNAVAILABLE; admitted work still completes."""
        self._accepting = False

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.close()
        self._thread.join(timeout_s)

    def admit(self) -> Admission:
        """A place for one request, or at once UNAVAILABLE (draining) or RESOURCE_EXHAUSTED
        (full). Call it before preparing the request, on the event loop."""
        if not self._accepting:
            raise Unavailable(
                "the server is shutting down; retry on another replica", reason="SHUTTING_DOWN"
            )
        if self._admitted >= self._queue_size:
            raise ResourceExhausted(
                f"the server's queue is full ({self._queue_size} requests); retry shortly",
                retry_after_s=self._retry_after_s(),
                reason="QUEUE_FULL",
                metadata={"limit": "queue_size", "limitValue": self._queue_size},
            )
        self._admitted += 1
        self._observer.queue_depth(self._admitted)
        return Admission(self._release)

    async def analyse(
        self,
        prepared: PreparedAnalysis,
        deadline: float | None,
        admission: Admission | None = None,
    ) -> AnalysisResult:
        """Queue a prepared request and wait for its result; ``admission`` is the place taken
        for it (None: take one now), given back when this returns."""
        with admission or self.admit():
            loop = asyncio.get_running_loop()
            job = AnalysisJob(
                loop=loop, deadline=deadline, prepared=prepared, future=loop.create_future()
            )
            self._queue.put(job)
            assert job.future is not None
            return await job.future

    async def generate(
        self,
        prepared: PreparedGeneration,
        deadline: float | None,
        admission: Admission | None = None,
    ) -> AsyncIterator[GenerationEvent]:
        """Stream the events of one generation; closing the iterator stops the generation."""
        with admission or self.admit():
            job = GenerateJob(
                loop=asyncio.get_running_loop(),
                deadline=deadline,
                prepared=prepared,
                buffer_limit=self._stream_buffer_events,
            )
            self._queue.put(job)
            try:
                while True:
                    item = await job.receive()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                job.stop.set()

    def _retry_after_s(self) -> float:
        """With every place taken, one frees up about every mean-hold / queue-size seconds; a
        refused caller waits about the mean hold, by which time the queue has turned over
        (Little's law) and its retry meets room instead of another refusal."""
        return min(max(self._mean_hold_s, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    def _release(self, held_s: float) -> None:
        self._mean_hold_s += _HOLD_SMOOTHING * (held_s - self._mean_hold_s)
        self._admitted -= 1
        self._observer.queue_depth(self._admitted)

    # ---- the engine thread -------------------------------------------------------------

    def _serve(self) -> None:
        core = self._core
        while True:
            jobs = self._queue.take_all(wait=core.idle)
            if jobs is None:
                return
            self._add(jobs)
            room = core.room_for_analyses()
            if room and not core.idle:  # only analyses wait: a moment for company
                self._add(self._queue.arriving_analyses(room, self._batch_window_s))
            core.step()

    def _add(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if isinstance(job, AnalysisJob):
                self._core.add_analysis(job)
            else:
                assert isinstance(job, GenerateJob)
                self._core.add_generation(job)


def deadline_from_timeout(time_remaining: Callable[[], float | None]) -> float | None:
    """Convert grpc's ``context.time_remaining()`` into a monotonic deadline."""
    remaining = time_remaining()
    return None if remaining is None else time.monotonic() + remaining
