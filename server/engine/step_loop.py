"""The engine thread's loop: one model step at a time, as vLLM's engine core runs them.

Each turn of ``StepLoop.turn`` runs one batch of queued Encode and TopFeatures requests,
spends at most the prefill token budget on prompt tokens, and runs one decode step for every
row of every running generation together, retiring the rows that end. The budget goes, in
arrival order, first to the call being prefilled, then to waiting calls whose rows fit the row
and KV limits and whose prompt fits what is left of it (the others wait, in order); a prompt
larger than the budget is prefilled in chunks, one per turn, with a decode step for the
running rows between them (chunked prefill), so a long prompt delays the running streams by
about one budget's forward per step. Calls whose caller left, whose deadline passed or whose
stream overflowed leave before their next forward (prefill chunk or decode step).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from maira_sae.server.engine.jobs import AnalysisJob, GenerateJob, JobQueue
from maira_sae.server.engine.types import FinishReason, GeneratedToken, GenerationEvent
from maira_sae.server.errors import Cancelled, DeadlineExceeded, ServiceError

if TYPE_CHECKING:
    from maira_sae.server.engine.engine import (
        AnalysisResult,
        PreparedAnalysis,
        PreparedGeneration,
    )

log = logging.getLogger(__name__)


class RunningCall(Protocol):
    @property
    def done(self) -> bool: ...

    @property
    def prefill_remaining(self) -> int: ...


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

    def start(
        self, prepared: PreparedGeneration, emit: Callable[[GenerationEvent], None]
    ) -> RunningCall: ...

    def prefill_chunk(self, batch: RowBatch, call: RunningCall, max_tokens: int) -> bool: ...

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


@dataclass(frozen=True)
class DecodeLimits:
    """How much generation work runs at once (batching settings)."""

    max_rows: int = 32
    max_kv_positions: int = 262_144
    prefill_token_budget: int = 8192


class StepLoop:
    """The engine thread's state between turns: the decode batch and the calls waiting."""

    def __init__(
        self,
        engine: ModelRunner,
        queue: JobQueue,
        *,
        max_batch_size: int,
        batch_window_s: float,
        limits: DecodeLimits,
        observer: SchedulerObserver,
    ) -> None:
        self._engine = engine
        self._queue = queue
        self._max_batch_size = max_batch_size
        self._batch_window_s = batch_window_s
        self._observer = observer
        self._limits = limits
        self._batch = self._engine.new_batch()
        self._running: dict[int, tuple[GenerateJob, RunningCall]] = {}  # id(call) -> ...
        self._waiting: deque[GenerateJob] = deque()
        self._prefilling: tuple[GenerateJob, RunningCall] | None = None  # its prompt in part
        self._analysis: deque[AnalysisJob] = deque()

    def turn(self) -> bool:
        """One turn: an analysis batch, new prefills, one decode step. False once closed."""
        idle = not (self._running or self._prefilling or self._waiting or self._analysis)
        jobs = self._queue.take_all(wait=idle)
        if jobs is None:
            return False
        for job in jobs:
            (self._waiting if isinstance(job, GenerateJob) else self._analysis).append(job)
        started = time.monotonic()
        if self._analysis:
            self._run_analysis_batch()
        self._stop_unwanted()  # before each forward: the prefill chunks, then the step
        self._run_prefills()
        self._stop_unwanted()
        if self._batch.calls:
            self._decode_step()
        waiting = sum(len(job.prepared.inputs.tokens) for job in self._waiting)  # type: ignore[union-attr]
        if self._prefilling is not None:
            waiting += self._prefilling[1].prefill_remaining
        self._observer.decode_batch(
            self._batch.rows, self._batch.rows * self._batch.cached_positions, waiting
        )
        self._observer.busy(time.monotonic() - started)
        return True

    def _run_analysis_batch(self) -> None:
        size = self._max_batch_size
        batch = [self._analysis.popleft() for _ in range(min(size, len(self._analysis)))]
        if not (self._running or self._prefilling or self._waiting or self._analysis):
            # idle otherwise: wait a moment for company
            self._queue.add_arriving_analyses(batch, size, self._batch_window_s)
        self._run_analysis(batch)

    def _run_prefills(self) -> None:
        """Spend at most the budget on prompt tokens: the call being prefilled first, then the
        waiting calls in order; the first prompt of a turn may be larger than the budget, and
        is then prefilled one chunk per turn."""
        left = self._limits.prefill_token_budget
        while left > 0:
            if self._prefilling is None and not self._start_next(left):
                return
            assert self._prefilling is not None
            job, call = self._prefilling
            chunk = min(call.prefill_remaining, left)
            left -= chunk
            self._prefill_chunk(job, call, chunk)

    def _start_next(self, left: int) -> bool:
        """Start the first waiting call if it may start now (its prompt fits the ``left``
        budget, or the whole budget is left; its rows fit the limits)."""
        while self._waiting:
            job = self._waiting[0]
            if not self._wanted_before_start(job):
                self._waiting.popleft()
                continue
            prepared = job.prepared
            assert prepared is not None
            prompt = len(prepared.inputs.tokens)
            rows = len(prepared.request.variants)
            if prompt > left and left < self._limits.prefill_token_budget:
                return False  # it waits for a whole budget rather than start on a rest
            if not self._fits(rows, prompt + prepared.request.settings.max_new_tokens):
                return False  # in order: later calls wait behind it (no starvation of large calls)
            self._waiting.popleft()
            if self._start(job):
                return True
        return False

    def _fits(self, rows: int, length: int) -> bool:
        if not self._batch.calls:
            return True  # a call alone always runs (its own limits were checked at the edge)
        total_rows = self._batch.rows + rows
        widest = max(self._batch.cached_positions + 1, length)
        return (
            total_rows <= self._limits.max_rows
            and total_rows * widest <= self._limits.max_kv_positions
        )

    def _wanted_before_start(self, job: GenerateJob) -> bool:
        if job.stop.is_set():
            job.send(Cancelled("the call was cancelled while queued"))
            return False
        if job.expired():
            job.send(DeadlineExceeded("the deadline passed while the request was queued"))
            return False
        return True

    def _start(self, job: GenerateJob) -> bool:
        assert job.prepared is not None
        self._observer.batch_started(1, [time.monotonic() - job.enqueued_at])
        try:
            self._prefilling = (job, self._engine.start(job.prepared, self._emitter(job)))
        except Exception as error:
            self._failed(job, error)
            return False
        return True

    def _prefill_chunk(self, job: GenerateJob, call: RunningCall, max_tokens: int) -> None:
        """One chunk of the call being prefilled; once its prompt is done it runs."""
        try:
            joined = self._engine.prefill_chunk(self._batch, call, max_tokens)
        except Exception as error:
            self._prefilling = None
            self._failed(job, error)
            return
        if joined:
            self._prefilling = None
            self._running[id(call)] = (job, call)

    @staticmethod
    def _failed(job: GenerateJob, error: Exception) -> None:
        if not isinstance(error, ServiceError):
            log.exception("prefill failed")
        job.send(error)

    def _emitter(self, job: GenerateJob) -> Callable[[GenerationEvent], None]:
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
        """Calls whose caller left, whose deadline passed or whose stream overflowed leave
        (the batch, or the prefill) before the next forward, so they never cost another."""
        calls = list(self._running.items())
        if self._prefilling is not None:
            calls.append((id(self._prefilling[1]), self._prefilling))
        for key, (job, call) in calls:
            if job.stop.is_set() or job.expired():
                self._engine.stop(self._batch, call, FinishReason.CANCELLED)
                if self._running.pop(key, None) is None:
                    self._prefilling = None
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
    def _end(job: GenerateJob) -> None:
        if job.expired() and not job.stop.is_set():
            job.send(DeadlineExceeded("the deadline passed during generation"))
        else:
            job.send(None)

    def _run_analysis(self, batch: list[AnalysisJob]) -> None:
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

    def _still_wanted(self, job: AnalysisJob) -> bool:
        assert job.future is not None
        if job.future.done():  # the caller went away while queued
            return False
        if job.expired():
            job.resolve(DeadlineExceeded("the deadline passed while the request was queued"))
            return False
        return True
