"""Admission, deadlines and micro-batching in front of the engine's single thread.

The event loop never runs torch: requests are admitted here (a bounded count of queued plus
running work; RESOURCE_EXHAUSTED at once when full), queued, and picked up by one engine
thread. Encode and TopFeatures requests that arrive within a short window share one forward
pass; a GenerateSteered call runs its variants as one batch on its own. Work whose deadline has
passed is dropped before it reaches the model; a cancelled stream stops at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from maira_sae.server.engine.types import GeneratedToken, GenerationEvent
from maira_sae.server.errors import (
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

if TYPE_CHECKING:
    from maira_sae.server.engine.engine import (
        AnalysisResult,
        PreparedAnalysis,
        PreparedGeneration,
    )

log = logging.getLogger(__name__)


class ModelRunner(Protocol):
    """What the scheduler runs on its thread: the engine, or a fake in tests."""

    def analyse(self, batch: Sequence[PreparedAnalysis]) -> list[AnalysisResult]: ...

    def generate(
        self,
        prepared: PreparedGeneration,
        emit: Callable[[GenerationEvent], None],
        should_stop: Callable[[], bool],
    ) -> None: ...


class SchedulerObserver:
    """What the scheduler reports; the metrics module implements it. Defaults do nothing."""

    def queue_depth(self, depth: int) -> None: ...
    def batch_started(self, size: int, waits_s: list[float]) -> None: ...
    def busy(self, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def tokens_generated(self, count: int) -> None: ...


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.monotonic() seconds
    enqueued_at: float = field(default_factory=time.monotonic)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def post(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback`` on the caller's event loop; a loop that has closed has no caller
        left to tell, and must not take the engine thread down with it."""
        with contextlib.suppress(RuntimeError):  # also when it closes between check and call
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(callback, *args)


@dataclass(eq=False)
class _AnalysisJob(_Job):
    prepared: PreparedAnalysis | None = None
    future: asyncio.Future | None = None

    def resolve(self, outcome: AnalysisResult | BaseException) -> None:
        assert self.future is not None
        self.post(_settle, self.future, outcome)


@dataclass(eq=False)
class _GenerateJob(_Job):
    prepared: PreparedGeneration | None = None
    events: asyncio.Queue | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def send(self, item: GenerationEvent | BaseException | None) -> None:
        assert self.events is not None
        self.post(self.events.put_nowait, item)


def _settle(future: asyncio.Future, outcome: object) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Scheduler:
    def __init__(
        self,
        engine: ModelRunner,
        *,
        queue_size: int,
        max_batch_size: int,
        batch_window_s: float,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self._engine = engine
        self._queue_size = queue_size
        self._max_batch_size = max_batch_size
        self._batch_window_s = batch_window_s
        self._observer = observer or SchedulerObserver()
        self._jobs: deque[_Job] = deque()
        self._condition = threading.Condition()
        self._admitted = 0  # queued plus running; touched on the event loop only
        self._accepting = True
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="maira-sae-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_accepting(self) -> None:
        """Drain: new work is refused with UNAVAILABLE; admitted work still completes."""
        self._accepting = False

    def close(self, timeout_s: float = 10.0) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout_s)

    async def analyse(self, prepared: PreparedAnalysis, deadline: float | None) -> AnalysisResult:
        loop = asyncio.get_running_loop()
        job = _AnalysisJob(
            loop=loop, deadline=deadline, prepared=prepared, future=loop.create_future()
        )
        self._admit(job)
        try:
            assert job.future is not None
            return await job.future
        finally:
            self._release()

    async def generate(
        self, prepared: PreparedGeneration, deadline: float | None
    ) -> AsyncIterator[GenerationEvent]:
        """Stream the events of one generation; closing the iterator stops the generation."""
        loop = asyncio.get_running_loop()
        job = _GenerateJob(loop=loop, deadline=deadline, prepared=prepared, events=asyncio.Queue())
        self._admit(job)
        try:
            while True:
                assert job.events is not None
                item = await job.events.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.stop.set()
            self._release()

    def _admit(self, job: _Job) -> None:
        if not self._accepting:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self._admitted >= self._queue_size:
            raise ResourceExhausted(
                f"the server's queue is full ({self._queue_size} requests); retry shortly",
                retry_after_s=0.2,
            )
        self._admitted += 1
        self._observer.queue_depth(self._admitted)
        with self._condition:
            self._jobs.append(job)
            self._condition.notify()

    def _release(self) -> None:
        self._admitted -= 1
        self._observer.queue_depth(self._admitted)

    # ---- the engine thread -------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self._next_job(timeout_s=None)
            if job is None:
                return
            started = time.monotonic()
            if isinstance(job, _GenerateJob):
                self._run_generation(job)
            else:
                assert isinstance(job, _AnalysisJob)
                self._run_analysis(self._collect_batch(job))
            self._observer.busy(time.monotonic() - started)

    def _next_job(self, timeout_s: float | None) -> _Job | None:
        with self._condition:
            if not self._jobs and not self._closed:
                self._condition.wait(timeout_s)
            if self._closed and not self._jobs:
                return None
            return self._jobs.popleft() if self._jobs else None

    def _collect_batch(self, first: _AnalysisJob) -> list[_AnalysisJob]:
        """The first job plus analysis jobs arriving within the window, up to the batch size.
        A generation job met on the way stays at the head of the queue for the next turn."""
        batch = [first]
        window_end = time.monotonic() + self._batch_window_s
        while len(batch) < self._max_batch_size:
            with self._condition:
                remaining = window_end - time.monotonic()
                if not self._jobs and remaining > 0 and not self._closed:
                    self._condition.wait(remaining)
                if not self._jobs or not isinstance(self._jobs[0], _AnalysisJob):
                    break
                batch.append(self._jobs.popleft())  # type: ignore[arg-type]
        return batch

    def _run_analysis(self, batch: list[_AnalysisJob]) -> None:
        runnable = [job for job in batch if self._still_wanted(job)]
        if not runnable:
            return
        now = time.monotonic()
        self._observer.batch_started(len(runnable), [now - job.enqueued_at for job in runnable])
        try:
            outcomes = self._engine.analyse([job.prepared for job in runnable])  # type: ignore[misc]
        except Exception as error:  # one batch fails, the server keeps serving
            log.exception("analysis batch of %d failed", len(runnable))
            for job in runnable:
                job.resolve(error)
            return
        for job, outcome in zip(runnable, outcomes, strict=True):
            job.resolve(outcome)

    def _still_wanted(self, job: _AnalysisJob) -> bool:
        assert job.future is not None
        if job.future.done():  # the caller went away while queued
            return False
        if job.expired():
            job.resolve(DeadlineExceeded("the deadline passed while the request was queued"))
            return False
        return True

    def _run_generation(self, job: _GenerateJob) -> None:
        if job.stop.is_set():
            job.send(Cancelled("the call was cancelled while queued"))
            return
        if job.expired():
            job.send(DeadlineExceeded("the deadline passed while the request was queued"))
            return
        started = time.monotonic()
        self._observer.batch_started(1, [started - job.enqueued_at])
        first_token_seen = False

        def emit(event: GenerationEvent) -> None:
            nonlocal first_token_seen
            if not first_token_seen:
                first_token_seen = True
                self._observer.first_token(time.monotonic() - job.enqueued_at)
            if isinstance(event, GeneratedToken):
                self._observer.tokens_generated(1)
            job.send(event)

        def should_stop() -> bool:
            return job.stop.is_set() or job.expired()

        assert job.prepared is not None
        try:
            self._engine.generate(job.prepared, emit, should_stop)
        except Exception as error:
            if not isinstance(error, ServiceError):
                log.exception("generation failed")
            job.send(error)
            return
        if job.expired() and not job.stop.is_set():
            job.send(DeadlineExceeded("the deadline passed during generation"))
            return
        job.send(None)


def deadline_from_timeout(time_remaining: Callable[[], float | None]) -> float | None:
    """Convert grpc's ``context.time_remaining()`` into a monotonic deadline."""
    remaining = time_remaining()
    return None if remaining is None else time.monotonic() + remaining
