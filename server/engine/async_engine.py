"""The engine as the event loop sees it: admission, the queue, and the engine thread.

The event loop never runs torch: requests are admitted here (a bounded count of work being
prepared, queued or running, in two lanes so long and batch calls cannot take every place:
``admission``; RESOURCE_EXHAUSTED at once when full, and before the caller pays for any
preparation: ``admit`` comes first, ``analyse``/``generate`` take its ``Admission``), given
the server's deadline (``max_call_s``) when their caller set none, queued, and picked up by
one engine thread, which runs an ``EngineCore`` one step at a time (``engine_core``; what a
step decides is ``schedule``'s docstring, the order of waiting work ``admission_policy``'s).
Encode and TopFeatures requests arriving within a short window share a forward pass (while
generations run, no window is waited for), so analysis never waits for a whole generation,
nor generations for a stream of analyses. Work whose deadline has passed is dropped before it
reaches the model; a cancelled call, an expired one, and one whose caller does not read its
stream (``stream_buffer_events`` events the connection has not taken) leave at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from maira_sae.server.engine.admission import Admission, AdmissionControl, AdmissionLimits
from maira_sae.server.engine.admission_policy import AdmissionPolicy, Priority
from maira_sae.server.engine.engine_core import EngineCore, SchedulerObserver
from maira_sae.server.engine.executor import ModelRunner
from maira_sae.server.engine.jobs import (
    DEFAULT_STREAM_BUFFER_EVENTS,
    AnalysisJob,
    GenerateJob,
    Job,
    JobQueue,
)
from maira_sae.server.engine.request_registry import RequestMarks
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.types import GenerationEvent
from maira_sae.server.errors import Unavailable

if TYPE_CHECKING:
    from maira_sae.server.engine.analysis import AnalysisResult
    from maira_sae.server.engine.preparation import PreparedAnalysis, PreparedGeneration


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
        admission: AdmissionLimits | None = None,
        max_call_s: float | None = None,
    ) -> None:
        """``admission`` None: ``queue_size`` places that any call may take; ``max_call_s``
        None: a call without a deadline has none."""
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
        self._admission = AdmissionControl(
            admission or AdmissionLimits(queue_size, queue_size, long_call_tokens=0),
            self._observer,
        )
        self._max_call_s = max_call_s
        self._in_flight: set[AnalysisJob | GenerateJob] = set()  # on the event loop only
        self._cut: str | None = None  # once set, every call ends UNAVAILABLE with it
        self._thread = threading.Thread(target=self._serve, name="maira-sae-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_accepting(self) -> None:
        """Drain: new work is refused with UNAVAILABLE; admitted work still completes."""
        self._admission.accepting = False

    def cut_in_flight(self, reason: str) -> int:
        """End every admitted call now with UNAVAILABLE (``reason``), on the event loop: the
        end of a drain, so that calls still running end with a status the caller can act on
        (and a log line) instead of being cancelled by the transport. Their rows leave at the
        next step; calls still being prepared are refused when they reach the queue. Returns
        how many calls were running or queued."""
        self._admission.accepting = False
        self._cut = reason
        jobs = list(self._in_flight)
        for job in jobs:
            job.cut(Unavailable(reason, reason="DRAIN_GRACE_ENDED"))
        return len(jobs)

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.close()
        self._thread.join(timeout_s)

    def admit(
        self, priority: Priority = Priority.INTERACTIVE, tokens_to_generate: int = 0
    ) -> Admission:
        """A place for one request, or at once UNAVAILABLE (draining) or RESOURCE_EXHAUSTED
        (full). Call it before preparing the request, on the event loop; a generation gives
        the tokens it asks for over its variants (long calls have a lane of their own)."""
        return self._admission.admit(priority, tokens_to_generate)

    def _deadline(
        self, deadline: float | None, admission: Admission
    ) -> tuple[float | None, RequestMarks]:
        """The caller's deadline, else the server's limit counted from admission."""
        if deadline is not None or self._max_call_s is None:
            return deadline, RequestMarks(admission.priority)
        limit = f"the server's limit of {self._max_call_s:g} s on a call without a deadline"
        return admission.taken_at + self._max_call_s, RequestMarks(
            admission.priority, f"{limit} (batching.max_call_s; send a deadline to set your own)"
        )

    async def analyse(
        self,
        prepared: PreparedAnalysis,
        deadline: float | None,
        admission: Admission | None = None,
    ) -> AnalysisResult:
        """Queue a prepared request and wait for its result; ``admission`` is the place taken
        for it (None: take one now), given back when this returns."""
        with admission or self.admit() as held:
            loop = asyncio.get_running_loop()
            deadline, marks = self._deadline(deadline, held)
            job = AnalysisJob(
                loop=loop,
                deadline=deadline,
                prepared=prepared,
                future=loop.create_future(),
                marks=marks,
            )
            with self._queued(job):
                assert job.future is not None
                return await job.future

    async def generate(
        self,
        prepared: PreparedGeneration,
        deadline: float | None,
        admission: Admission | None = None,
    ) -> AsyncIterator[GenerationEvent]:
        """Stream the events of one generation; closing the iterator stops the generation.

        An event counts against ``stream_buffer_events`` until the consumer asks for the next
        one: the servicer's caller (grpc) asks only once its write of the event returned."""
        with admission or self.admit() as held:
            deadline, marks = self._deadline(deadline, held)
            job = GenerateJob(
                loop=asyncio.get_running_loop(),
                deadline=deadline,
                marks=marks,
                prepared=prepared,
                buffer_limit=self._stream_buffer_events,
            )
            with self._queued(job):
                try:
                    while True:
                        item = await job.receive()
                        if item is None:
                            return
                        if isinstance(item, BaseException):
                            raise item
                        yield item
                        job.taken()
                finally:
                    job.stop.set()

    @contextlib.contextmanager
    def _queued(self, job: AnalysisJob | GenerateJob) -> Iterator[None]:
        """``job`` queued for the engine and in flight until the block ends (refused at once
        once the calls in flight have been cut)."""
        if self._cut is not None:
            raise Unavailable(self._cut, reason="DRAIN_GRACE_ENDED")
        self._in_flight.add(job)
        self._queue.put(job)
        try:
            yield
        finally:
            self._in_flight.discard(job)

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
                self._core.add_analysis(job, job.marks)
            else:
                assert isinstance(job, GenerateJob)
                self._core.add_generation(job, job.marks)


def deadline_from_timeout(time_remaining: Callable[[], float | None]) -> float | None:
    """Convert grpc's ``context.time_remaining()`` into a monotonic deadline."""
    remaining = time_remaining()
    return None if remaining is None else time.monotonic() + remaining
