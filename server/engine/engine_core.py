"""One engine step as vLLM v1's ``EngineCore.step``: schedule, execute, update.

``step`` snapshots the requests, lets ``schedule`` decide the step (a ``StepPlan``), has the
``StepExecutor`` run it on the model, and ``update`` applies the ``StepOutcome``: requests
move from waiting to prefilling to running and leave, and everything a request emits (a
result, tokens, each variant's result, its end or its error) goes to its job here, and only
here. The engine thread runs one core (``async_engine``); the offline path runs its own.
"""

from __future__ import annotations

import logging
import time

from maira_sae.server.engine.admission_policy import AdmissionPolicy
from maira_sae.server.engine.executor import (
    DecodeBatchView,
    ModelRunner,
    StepExecutor,
    StepOutcome,
)
from maira_sae.server.engine.request_registry import (
    UNMARKED,
    AnalysisSubmission,
    EngineRequest,
    GenerationSubmission,
    RequestMarks,
    RequestRegistry,
    Status,
    prompt_tokens,
)
from maira_sae.server.engine.schedule import BatchLimits, LeaveReason, StepPlan, schedule
from maira_sae.server.engine.types import VariantFinished
from maira_sae.server.errors import Cancelled, DeadlineExceeded

log = logging.getLogger(__name__)


class SchedulerObserver:
    """What the engine reports; the metrics module implements it. Defaults do nothing."""

    def admitted_requests(self, count: int) -> None: ...
    def call_admitted(self, priority: str, lane: str) -> None: ...
    def queued_cost(self, tokens: int) -> None: ...
    def batch_started(self, size: int, waits_s: list[float]) -> None: ...
    def busy(self, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def tokens_generated(self, count: int) -> None: ...
    def decode_step(self, rows: int, kv_positions: int, seconds: float) -> None: ...
    def decode_batch(self, rows: int, kv_positions: int, waiting_prefill_tokens: int) -> None: ...


class EngineCore:
    def __init__(
        self,
        runner: ModelRunner,
        *,
        limits: BatchLimits,
        max_analysis_batch: int,
        policy: AdmissionPolicy | None = None,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self._limits = limits
        self._max_analysis_batch = max_analysis_batch
        self._policy = policy
        self._observer = observer or SchedulerObserver()
        self._requests = RequestRegistry()
        self._executor = StepExecutor(runner)

    @property
    def idle(self) -> bool:
        return not len(self._requests)

    @property
    def batch(self) -> DecodeBatchView:
        """The decode batch of the running rows."""
        return self._executor.batch

    def room_for_analyses(self) -> int:
        """How many more analyses would join the next batch, when nothing but analyses
        waits (0 otherwise): the engine thread waits a moment for them."""
        if self._requests.generations():
            return 0
        return max(0, self._max_analysis_batch - len(self._requests.analyses()))

    def add_analysis(self, job: AnalysisSubmission, marks: RequestMarks = UNMARKED) -> None:
        self._requests.add_analysis(job, marks)

    def add_generation(self, job: GenerationSubmission, marks: RequestMarks = UNMARKED) -> None:
        self._requests.add_generation(job, marks)

    def step(self) -> StepPlan:
        """One step; returns its plan."""
        began = time.monotonic()
        batch = self._executor.batch
        state = self._requests.snapshot(began, batch.cached_positions)
        plan = schedule(
            state, self._limits, max_analysis_batch=self._max_analysis_batch, policy=self._policy
        )
        if not plan.is_empty:
            log.debug("step plan: %s", plan)  # request ids and token counts only
        self._report_started(plan, began)
        outcome = self._executor.execute(plan, self._requests)
        self._update(plan, outcome)
        batch = self._executor.batch
        self._observer.decode_batch(
            batch.rows, batch.rows * batch.cached_positions, self._requests.waiting_prefill_tokens()
        )
        self._observer.queued_cost(self._requests.queued_cost_tokens())
        self._observer.busy(time.monotonic() - began)
        return plan

    def _report_started(self, plan: StepPlan, now: float) -> None:
        if plan.analyses:
            waits = [now - self._requests[i].job.enqueued_at for i in plan.analyses]
            self._observer.batch_started(len(waits), waits)
        for chunk in plan.prefill:
            if chunk.starts:
                self._observer.batch_started(
                    1, [now - self._requests[chunk.request_id].job.enqueued_at]
                )

    def _update(self, plan: StepPlan, outcome: StepOutcome) -> None:
        requests = self._requests
        requests.served_tokens += _work_tokens(plan, outcome, requests)
        for request_id, result in outcome.analysed:
            analysis = requests.pop(request_id).analysis
            assert analysis is not None
            analysis.resolve(result)
        stopped = dict(outcome.stopped)
        for leave in plan.leaving:
            self._leave(
                requests.pop(leave.request_id), leave.reason, stopped.get(leave.request_id, ())
            )
        for call in outcome.started:
            request = requests[call.request_id]
            request.call, request.status = call, Status.PREFILLING
        for request_id in outcome.joined:
            requests[request_id].status = Status.RUNNING
        for request_id, error in outcome.failed:
            generation = requests.pop(request_id).generation
            assert generation is not None
            generation.send(error)
        for events in outcome.decoded:
            request = requests[events.request_id]
            generation = request.generation
            assert generation is not None
            if events.tokens and not request.first_token_seen:
                request.first_token_seen = True
                self._observer.first_token(time.monotonic() - generation.enqueued_at)
            request.tokens_generated += len(events.tokens)
            self._observer.tokens_generated(len(events.tokens))
            for event in (*events.tokens, *events.finished):
                generation.send(event)
            if events.done:
                _end(requests.pop(events.request_id))
        if outcome.decode is not None:
            stats = outcome.decode
            self._observer.decode_step(stats.rows, stats.kv_positions, stats.seconds)

    @staticmethod
    def _leave(
        request: EngineRequest, reason: LeaveReason, finished: tuple[VariantFinished, ...]
    ) -> None:
        queued_past_deadline = DeadlineExceeded(
            f"{request.marks.deadline_name} passed while the request was queued",
            reason="DEADLINE_QUEUED",
        )
        if request.analysis is not None:
            if reason is LeaveReason.DEADLINE:
                request.analysis.resolve(queued_past_deadline)
            return  # a caller who went away has no one to tell
        generation = request.generation
        assert generation is not None
        if request.call is None:
            generation.send(
                queued_past_deadline
                if reason is LeaveReason.DEADLINE
                else Cancelled("the call was cancelled while queued", reason="CANCELLED_QUEUED")
            )
            return
        for event in finished:
            generation.send(event)
        _end(request)


def _end(request: EngineRequest) -> None:
    generation = request.generation
    assert generation is not None
    if generation.expired() and generation.stop_reason() is None:
        generation.send(
            DeadlineExceeded(
                f"{request.marks.deadline_name} passed during generation",
                reason="DEADLINE_GENERATING",
            )
        )
    else:
        generation.send(None)


def _work_tokens(plan: StepPlan, outcome: StepOutcome, requests: RequestRegistry) -> int:
    """The tokens a step ran through the model: its analyses' prompts, its prefill chunks and
    one token per decoded row (the fair-share policy's clock)."""
    analysed = sum(prompt_tokens(requests[i].job.prepared) for i, _ in outcome.analysed)
    decoded = outcome.decode.rows if outcome.decode is not None else 0
    return analysed + sum(chunk.tokens for chunk in plan.prefill) + decoded
