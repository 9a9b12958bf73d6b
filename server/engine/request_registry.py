"""Every request the engine holds, in one place: by request id, in arrival order.

A request is a queued analysis, or a generation waiting, being prefilled or running. Its
entry holds where its output goes (the job: a caller's stream or future, or an offline
collector), the priority its caller marked it with and, once started, its call. The registry
also counts the engine's work in tokens (prompt tokens analysed or prefilled, tokens decoded):
each request keeps the count at its arrival, the virtual clock of the fair-share policy.
``snapshot`` turns the entries into the value ``schedule`` decides on; ``queued_cost_tokens``
is the work admitted and not yet done, what the autoscaler reads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from maira_sae.server.engine.admission_policy import Priority, WaitingCall
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


@dataclass(frozen=True)
class RequestMarks:
    """What the front knows of a request beyond its job: the priority its caller marked it
    with, and what its deadline is (the caller's, or the server's limit on a call without one)
    as its DEADLINE_EXCEEDED message names it."""

    priority: Priority = Priority.INTERACTIVE
    deadline_name: str = "the deadline"


UNMARKED = RequestMarks()


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
    marks: RequestMarks = UNMARKED
    served_at_arrival: int = 0  # the registry's ``served_tokens`` when it arrived
    call: RunningCall | None = None  # a generation's, once started
    first_token_seen: bool = False
    tokens_generated: int = 0  # over its rows

    @property
    def job(self) -> AnalysisSubmission | GenerationSubmission:
        job = self.analysis or self.generation
        assert job is not None
        return job


class RequestRegistry:
    def __init__(self) -> None:
        self._requests: dict[int, EngineRequest] = {}  # insertion order is arrival order
        self._next_id = 0
        self.served_tokens = 0  # the engine's work so far: tokens analysed, prefilled, decoded

    def __len__(self) -> int:
        return len(self._requests)

    def __getitem__(self, request_id: int) -> EngineRequest:
        return self._requests[request_id]

    def add_analysis(
        self, job: AnalysisSubmission, marks: RequestMarks = UNMARKED
    ) -> EngineRequest:
        return self._add(EngineRequest(self._next_id, analysis=job, marks=marks))

    def add_generation(
        self, job: GenerationSubmission, marks: RequestMarks = UNMARKED
    ) -> EngineRequest:
        return self._add(EngineRequest(self._next_id, generation=job, marks=marks))

    def _add(self, request: EngineRequest) -> EngineRequest:
        request.served_at_arrival = self.served_tokens
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
        return sum(_prefill_left(request) for request in self.generations())

    def queued_cost_tokens(self) -> int:
        """The work admitted and not done yet, in tokens: every queued analysis's prompt, every
        generation's prompt not yet prefilled and the tokens its rows may still generate."""
        total = 0
        for request in self._requests.values():
            if request.analysis is not None:
                total += prompt_tokens(request.analysis.prepared)
                continue
            assert request.generation is not None and request.generation.prepared is not None
            wanted = request.generation.prepared.request
            to_generate = len(wanted.variants) * wanted.settings.max_new_tokens
            total += _prefill_left(request) + max(0, to_generate - request.tokens_generated)
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
                    QueuedAnalysis(
                        request.request_id,
                        analysis.deadline,
                        analysis.stop_reason(),
                        cost_tokens=prompt_tokens(analysis.prepared),
                        arrival=arrival,
                        priority=request.marks.priority,
                        served_at_arrival=request.served_at_arrival,
                    )
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
                    priority=request.marks.priority,
                    served_at_arrival=request.served_at_arrival,
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


def _prefill_left(request: EngineRequest) -> int:
    """A generation's prompt tokens not prefilled yet."""
    if request.call is not None:
        return request.call.prefill_remaining
    assert request.generation is not None
    return prompt_tokens(request.generation.prepared)


def prompt_tokens(prepared: PreparedAnalysis | PreparedGeneration | None) -> int:
    return len(prepared.inputs.tokens) if prepared is not None else 0
