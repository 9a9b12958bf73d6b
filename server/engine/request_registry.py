"""Every request the engine holds, in one place: by request id, in arrival order.

A request is a queued analysis, or a generation waiting, being prefilled or running. Its
entry holds where its output goes (the job: a caller's stream or future, or an offline
collector) and, once started, its call. ``snapshot`` turns the entries into the value
``schedule`` decides on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from maira_sae.server.engine.admission_policy import WaitingCall
from maira_sae.server.engine.schedule import (
    LeaveReason,
    QueuedAnalysis,
    SchedulerState,
    StartedCall,
    Waiting,
)
from maira_sae.server.engine.types import GenerationEvent

if TYPE_CHECKING:
    from maira_sae.server.engine.analysis import AnalysisResult
    from maira_sae.server.engine.preparation import PreparedAnalysis, PreparedGeneration


class AnalysisSubmission(Protocol):
    """A queued Encode or TopFeatures request as the engine core sees it (``AnalysisJob``)."""

    prepared: PreparedAnalysis | None
    deadline: float | None
    enqueued_at: float

    def stop_reason(self) -> LeaveReason | None: ...
    def resolve(self, outcome: AnalysisResult | BaseException) -> None: ...


class GenerationSubmission(Protocol):
    """A generation as the engine core sees it: what it runs, whether its caller still wants
    it, and where its output goes (``GenerateJob``, or the offline path's collector)."""

    prepared: PreparedGeneration | None
    deadline: float | None
    enqueued_at: float

    def expired(self) -> bool: ...
    def stop_reason(self) -> LeaveReason | None: ...
    def send(self, item: GenerationEvent | BaseException | None) -> None:
        """An event, or the end: an error or None."""
        ...


class RunningCall(Protocol):
    """A started generation (``GenerationCall``, or a fake in tests)."""

    @property
    def request_id(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def prefill_remaining(self) -> int: ...


class Status(enum.Enum):
    """Where a generation is: queued, its prompt partly run, or decoding in the batch."""

    WAITING = enum.auto()
    PREFILLING = enum.auto()
    RUNNING = enum.auto()


@dataclass(eq=False)
class EngineRequest:
    """One request: exactly one of ``analysis`` and ``generation`` is set."""

    request_id: int
    analysis: AnalysisSubmission | None = None
    generation: GenerationSubmission | None = None
    status: Status = Status.WAITING
    call: RunningCall | None = None  # a generation's, once started
    first_token_seen: bool = False

    @property
    def job(self) -> AnalysisSubmission | GenerationSubmission:
        job = self.analysis or self.generation
        assert job is not None
        return job


class RequestRegistry:
    def __init__(self) -> None:
        self._requests: dict[int, EngineRequest] = {}  # insertion order is arrival order
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._requests)

    def __getitem__(self, request_id: int) -> EngineRequest:
        return self._requests[request_id]

    def add_analysis(self, job: AnalysisSubmission) -> EngineRequest:
        return self._add(EngineRequest(self._next_id, analysis=job))

    def add_generation(self, job: GenerationSubmission) -> EngineRequest:
        return self._add(EngineRequest(self._next_id, generation=job))

    def _add(self, request: EngineRequest) -> EngineRequest:
        self._requests[request.request_id] = request
        self._next_id += 1
        return request

    def pop(self, request_id: int) -> EngineRequest:
        return self._requests.pop(request_id)

    def analyses(self) -> list[EngineRequest]:
        return [r for r in self._requests.values() if r.analysis is not None]

    def generations(self) -> list[EngineRequest]:
        return [r for r in self._requests.values() if r.generation is not None]

    def waiting_prefill_tokens(self) -> int:
        """Prompt tokens not prefilled yet, over every generation."""
        total = 0
        for request in self.generations():
            if request.call is not None:
                total += request.call.prefill_remaining
            else:
                assert request.generation is not None and request.generation.prepared is not None
                total += len(request.generation.prepared.inputs.tokens)
        return total

    def snapshot(self, now: float, cached_positions: int) -> SchedulerState:
        analyses: list[QueuedAnalysis] = []
        waiting: list[Waiting] = []
        prefilling: StartedCall | None = None
        running: list[StartedCall] = []
        for arrival, request in enumerate(self._requests.values()):
            if request.analysis is not None:
                analysis = request.analysis
                analyses.append(
                    QueuedAnalysis(request.request_id, analysis.deadline, analysis.stop_reason())
                )
                continue
            job = request.generation
            assert job is not None
            prepared = job.prepared
            assert prepared is not None
            prompt = len(prepared.inputs.tokens)
            if request.call is None:
                call = WaitingCall(
                    request_id=request.request_id,
                    arrival=arrival,
                    enqueued_at=job.enqueued_at,
                    prompt_tokens=prompt,
                    rows=len(prepared.request.variants),
                    max_new_tokens=prepared.request.settings.max_new_tokens,
                )
                waiting.append(Waiting(call, job.deadline, job.stop_reason()))
                continue
            started = StartedCall(
                request_id=request.request_id,
                rows=request.call.rows,
                prompt_tokens=prompt,
                prefill_remaining=request.call.prefill_remaining,
                deadline=job.deadline,
                stopped=job.stop_reason(),
            )
            if request.status is Status.PREFILLING:
                prefilling = started
            else:
                running.append(started)
        return SchedulerState(
            now=now,
            analyses=tuple(analyses),
            waiting=tuple(waiting),
            prefilling=prefilling,
            running=tuple(running),
            cached_positions=cached_positions,
        )
