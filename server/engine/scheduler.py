"""Admission, deadlines and iteration-level scheduling in front of the engine's one thread.

The event loop never runs torch: requests are admitted here (a bounded count of work being
prepared, queued or running; RESOURCE_EXHAUSTED at once when full, and before the caller pays
for any preparation: ``admit`` comes first, ``analyse``/``generate`` take its ``Admission``),
queued, and picked up by one engine thread, which schedules one model step at a time (as
vLLM's scheduler does). Each turn of its loop:

1. runs one batch of queued Encode and TopFeatures requests (those arriving within a short
   window share the forward pass; while generations run, no window is waited for);
2. prefills newly admitted generations, up to ``prefill_token_budget`` prompt tokens (one
   prompt at least) and while their rows fit ``max_decode_rows`` and ``max_kv_positions``;
   the others wait, in order;
3. runs one decode step for every row of every running generation together, each row with
   its own steering, sampler and stop conditions, and retires the rows that end.

So analysis never waits for a whole generation, nor generations for a stream of analyses.
Work whose deadline has passed is dropped before it reaches the model; a cancelled call, an
expired one, and one whose caller does not read its stream (``stream_buffer_events`` unsent)
leave the batch at the next step.
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

from maira_sae.server.engine.types import FinishReason, GeneratedToken, GenerationEvent
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

DEFAULT_STREAM_BUFFER_EVENTS = 512
# The RetryInfo delay of a full queue: about the time a place takes to free up, so that
# refused callers come back when there is room instead of spending the server on refusals.
MIN_RETRY_AFTER_S = 0.2
MAX_RETRY_AFTER_S = 10.0
_HOLD_SMOOTHING = 0.2  # weight of the newest call in the running mean of how long places are held


class RunningCall(Protocol):
    @property
    def done(self) -> bool: ...


class RowBatch(Protocol):
    @property
    def calls(self) -> tuple[RunningCall, ...]: ...

    @property
    def rows(self) -> int: ...

    @property
    def cached_positions(self) -> int: ...


class ModelRunner(Protocol):
    """What the scheduler runs on its thread: the engine, or a fake in tests."""

    def analyse(self, batch: Sequence[PreparedAnalysis]) -> list[AnalysisResult]: ...

    def new_batch(self) -> RowBatch: ...

    def begin(
        self,
        batch: RowBatch,
        prepared: PreparedGeneration,
        emit: Callable[[GenerationEvent], None],
    ) -> RunningCall: ...

    def step(self, batch: RowBatch) -> Sequence[RunningCall]: ...

    def stop(self, batch: RowBatch, call: RunningCall, reason: FinishReason) -> None: ...

    def forget(self, batch: RowBatch) -> None: ...


class SchedulerObserver:
    """What the scheduler reports; the metrics module implements it. Defaults do nothing."""

    def queue_depth(self, depth: int) -> None: ...
    def batch_started(self, size: int, waits_s: list[float]) -> None: ...
    def busy(self, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def tokens_generated(self, count: int) -> None: ...
    def decode_step(self, rows: int, kv_positions: int, seconds: float) -> None: ...
    def decode_batch(self, rows: int, kv_positions: int, waiting_prefill_tokens: int) -> None: ...


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
    """``send`` runs on the engine thread, ``receive`` on the caller's loop; at most
    ``buffer_limit`` events wait between them, then the job stops with RESOURCE_EXHAUSTED."""

    prepared: PreparedGeneration | None = None
    buffer_limit: int = DEFAULT_STREAM_BUFFER_EVENTS
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    _unsent: int = 0
    _overflowed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, item: GenerationEvent | BaseException | None) -> None:
        """An event, or the end: an error or None. Nothing is sent after an overflow."""
        with self._lock:
            if self._overflowed:
                return
            if isinstance(item, BaseException | None):
                pass  # the end always fits
            elif self._unsent >= self.buffer_limit:
                self._overflowed = True
                self.stop.set()
                item = ResourceExhausted(
                    f"the stream's buffer of {self.buffer_limit} unsent events is full "
                    "(batching.stream_buffer_events): read the stream as it arrives",
                    retry_after_s=1.0,
                )
            else:
                self._unsent += 1
        self.post(self.events.put_nowait, item)

    async def receive(self) -> GenerationEvent | BaseException | None:
        item = await self.events.get()
        if not isinstance(item, BaseException | None):
            with self._lock:
                self._unsent -= 1
        return item


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
        stream_buffer_events: int = DEFAULT_STREAM_BUFFER_EVENTS,
        limits: DecodeLimits | None = None,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self._engine = engine
        self._queue_size = queue_size
        self._max_batch_size = max_batch_size
        self._batch_window_s = batch_window_s
        self._stream_buffer_events = stream_buffer_events
        self._limits = limits or DecodeLimits()
        self._observer = observer or SchedulerObserver()
        self._jobs: deque[_Job] = deque()
        self._condition = threading.Condition()
        self._admitted = 0  # queued plus running; touched on the event loop only
        self._mean_hold_s = MIN_RETRY_AFTER_S  # running mean of how long a place is held
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

    def admit(self) -> Admission:
        """A place for one request, or at once UNAVAILABLE (draining) or RESOURCE_EXHAUSTED
        (full). Call it before preparing the request, on the event loop."""
        if not self._accepting:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self._admitted >= self._queue_size:
            raise ResourceExhausted(
                f"the server's queue is full ({self._queue_size} requests); retry shortly",
                retry_after_s=self._retry_after_s(),
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
            job = _AnalysisJob(
                loop=loop, deadline=deadline, prepared=prepared, future=loop.create_future()
            )
            self._enqueue(job)
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
            job = _GenerateJob(
                loop=asyncio.get_running_loop(),
                deadline=deadline,
                prepared=prepared,
                buffer_limit=self._stream_buffer_events,
            )
            self._enqueue(job)
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

    def _enqueue(self, job: _Job) -> None:
        with self._condition:
            self._jobs.append(job)
            self._condition.notify()

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
        loop = _StepLoop(self)
        while loop.turn():
            pass

    def _take_jobs(self, *, wait: bool) -> list[_Job] | None:
        """Every queued job (waiting for one when ``wait``); None once closed and empty."""
        with self._condition:
            if wait and not self._jobs and not self._closed:
                self._condition.wait()
            if self._closed and not self._jobs and wait:
                return None
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def _fill_window(self, batch: list[_AnalysisJob]) -> None:
        """Add analysis jobs arriving within the batch window (the engine is idle), up to the
        batch size; a generation job met on the way stays queued for the next turn."""
        window_end = time.monotonic() + self._batch_window_s
        while len(batch) < self._max_batch_size:
            with self._condition:
                remaining = window_end - time.monotonic()
                if not self._jobs and remaining > 0 and not self._closed:
                    self._condition.wait(remaining)
                if not self._jobs or not isinstance(self._jobs[0], _AnalysisJob):
                    return
                batch.append(self._jobs.popleft())  # type: ignore[arg-type]

    def _run_analysis(self, batch: list[_AnalysisJob]) -> None:
        runnable = [job for job in batch if self._still_wanted(job)]
        if not runnable:
            return
        now = time.monotonic()
        self._observer.batch_started(len(runnable), [now - job.enqueued_at for job in runnable])
        try:
            outcomes = self._engine.analyse([job.prepared for job in runnable])  # type: ignore[misc]
        except Exception as error:  # one batch fails, the server keeps serving
            if not isinstance(error, ServiceError):
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


@dataclass(frozen=True)
class DecodeLimits:
    """How much generation work runs at once (batching settings)."""

    max_rows: int = 32
    max_kv_positions: int = 262_144
    prefill_token_budget: int = 8192


class _StepLoop:
    """The engine thread's state between turns: the decode batch and the calls waiting."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._engine = scheduler._engine
        self._observer = scheduler._observer
        self._limits = scheduler._limits
        self._batch = self._engine.new_batch()
        self._running: dict[int, tuple[_GenerateJob, RunningCall]] = {}  # id(call) -> ...
        self._waiting: deque[_GenerateJob] = deque()
        self._analysis: deque[_AnalysisJob] = deque()

    def turn(self) -> bool:
        """One turn: an analysis batch, new prefills, one decode step. False once closed."""
        idle = not (self._running or self._waiting or self._analysis)
        jobs = self._scheduler._take_jobs(wait=idle)
        if jobs is None:
            return False
        for job in jobs:
            (self._waiting if isinstance(job, _GenerateJob) else self._analysis).append(job)
        started = time.monotonic()
        if self._analysis:
            self._run_analysis_batch()
        self._admit_prefills()
        self._stop_unwanted()
        if self._batch.calls:
            self._decode_step()
        self._observer.decode_batch(
            self._batch.rows,
            self._batch.rows * self._batch.cached_positions,
            sum(len(job.prepared.inputs.tokens) for job in self._waiting),  # type: ignore[union-attr]
        )
        self._observer.busy(time.monotonic() - started)
        return True

    def _run_analysis_batch(self) -> None:
        size = self._scheduler._max_batch_size
        batch = [self._analysis.popleft() for _ in range(min(size, len(self._analysis)))]
        if not (self._running or self._waiting or self._analysis):
            self._scheduler._fill_window(batch)  # idle otherwise: wait a moment for company
        self._scheduler._run_analysis(batch)

    def _admit_prefills(self) -> None:
        budget = self._limits.prefill_token_budget
        spent = 0
        while self._waiting:
            job = self._waiting[0]
            if not self._wanted_before_start(job):
                self._waiting.popleft()
                continue
            prepared = job.prepared
            assert prepared is not None
            prompt = len(prepared.inputs.tokens)
            rows = len(prepared.request.variants)
            if spent and spent + prompt > budget:
                return
            if not self._fits(rows, prompt + prepared.request.settings.max_new_tokens):
                return  # in order: later calls wait behind it (no starvation of large calls)
            self._waiting.popleft()
            spent += prompt
            self._begin(job)

    def _fits(self, rows: int, length: int) -> bool:
        if not self._batch.calls:
            return True  # a call alone always runs (its own limits were checked at the edge)
        total_rows = self._batch.rows + rows
        widest = max(self._batch.cached_positions + 1, length)
        return (
            total_rows <= self._limits.max_rows
            and total_rows * widest <= self._limits.max_kv_positions
        )

    def _wanted_before_start(self, job: _GenerateJob) -> bool:
        if job.stop.is_set():
            job.send(Cancelled("the call was cancelled while queued"))
            return False
        if job.expired():
            job.send(DeadlineExceeded("the deadline passed while the request was queued"))
            return False
        return True

    def _begin(self, job: _GenerateJob) -> None:
        assert job.prepared is not None
        self._observer.batch_started(1, [time.monotonic() - job.enqueued_at])
        try:
            call = self._engine.begin(self._batch, job.prepared, self._emitter(job))
        except Exception as error:
            if not isinstance(error, ServiceError):
                log.exception("prefill failed")
            job.send(error)
            return
        self._running[id(call)] = (job, call)

    def _emitter(self, job: _GenerateJob) -> Callable[[GenerationEvent], None]:
        first_token_seen = False

        def emit(event: GenerationEvent) -> None:
            nonlocal first_token_seen
            if isinstance(event, GeneratedToken):
                if not first_token_seen:
                    first_token_seen = True
                    self._observer.first_token(time.monotonic() - job.enqueued_at)
                self._observer.tokens_generated(1)
            job.send(event)

        return emit

    def _stop_unwanted(self) -> None:
        """Calls whose caller left, whose deadline passed or whose stream overflowed leave the
        batch before the step, so they never cost another forward."""
        for key, (job, call) in list(self._running.items()):
            if job.stop.is_set() or job.expired():
                self._engine.stop(self._batch, call, FinishReason.CANCELLED)
                del self._running[key]
                self._end(job)

    def _decode_step(self) -> None:
        rows, positions = self._batch.rows, self._batch.cached_positions
        started = time.monotonic()
        try:
            ended = self._engine.step(self._batch)
        except Exception as error:  # the step fails its calls; the server keeps serving
            if not isinstance(error, ServiceError):
                log.exception("decode step of %d rows failed", rows)
            self._engine.forget(self._batch)
            for job, _ in self._running.values():
                job.send(error)
            self._running.clear()
            self._batch = self._engine.new_batch()
            return
        self._observer.decode_step(rows, rows * positions, time.monotonic() - started)
        for call in ended:
            job, _ = self._running.pop(id(call))
            self._end(job)

    @staticmethod
    def _end(job: _GenerateJob) -> None:
        if job.expired() and not job.stop.is_set():
            job.send(DeadlineExceeded("the deadline passed during generation"))
        else:
            job.send(None)


def deadline_from_timeout(time_remaining: Callable[[], float | None]) -> float | None:
    """Convert grpc's ``context.time_remaining()`` into a monotonic deadline."""
    remaining = time_remaining()
    return None if remaining is None else time.monotonic() + remaining
