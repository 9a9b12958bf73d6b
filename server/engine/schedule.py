"""The scheduling decision of one engine step, as a pure function: the state in, a plan out.

As vLLM v1's scheduler: ``schedule`` reads a snapshot of the requests (``SchedulerState``) and
returns a ``StepPlan``: which queued Encode/TopFeatures requests run as one batch, which calls
leave and why, which calls prefill how many prompt tokens, and whether the running rows take
a decode step. ``StepExecutor`` runs the plan; nothing here touches the model.

The analysis batch takes the first queued analyses in the order the ``AdmissionPolicy`` gives
(the fairness policy: ``admission_policy``). The prefill budget goes first to the call being
prefilled, then to waiting calls in the order the policy gives, while their rows fit the row
and KV limits (a long call leaves ``short_call_rows`` rows to short calls, so a short call is
not stuck behind long ones for a whole generation) and their prompt fits what is left of the
budget. The first that does not fit stops the walk (the others wait), but for short calls
that fit the rows kept for them. The first prompt of a step may be larger than the budget: it
is prefilled one budget-sized chunk per step (chunked prefill), with a decode step for the
running rows between chunks. Calls whose caller left, whose deadline passed or whose stream
overflowed leave before the step's forwards; calls whose last row ended leave with the decode
step's outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from maira_sae.server.engine.admission_policy import (
    AdmissionPolicy,
    FirstComeFirstServed,
    Priority,
    WaitingCall,
    is_long_call,
)


@dataclass(frozen=True)
class BatchLimits:
    """How much generation work runs at once (the batching settings)."""

    max_rows: int = 32
    max_kv_positions: int = 262_144
    prefill_token_budget: int = 8192
    short_call_rows: int = 0  # rows a long call may not take: kept for short calls
    long_call_tokens: int = 1024  # tokens over a call's rows past which it is long

    def rows_for(self, call: WaitingCall) -> int:
        """The rows the batch may hold with ``call`` in it: all of them, or for a long call
        all but ``short_call_rows`` (one row at least)."""
        if is_long_call(call.priority, call.tokens_to_generate, self.long_call_tokens):
            return max(1, self.max_rows - self.short_call_rows)
        return self.max_rows


class LeaveReason(enum.Enum):
    CANCELLED = "cancelled"  # the caller went away
    DEADLINE = "deadline"  # its deadline passed
    STREAM_OVERFLOW = "stream_overflow"  # its caller did not read its stream


@dataclass(frozen=True)
class QueuedAnalysis:
    request_id: int
    deadline: float | None = None  # time.monotonic() seconds
    stopped: LeaveReason | None = None
    cost_tokens: int = 0  # its prompt: one forward over it
    arrival: int = 0
    priority: Priority = Priority.INTERACTIVE
    served_at_arrival: int = 0


@dataclass(frozen=True)
class Waiting:
    """A generation not started yet: its cost, and whether it is still wanted."""

    call: WaitingCall
    deadline: float | None = None
    stopped: LeaveReason | None = None


@dataclass(frozen=True)
class StartedCall:
    """A generation being prefilled (``prefill_remaining`` > 0) or running in the batch."""

    request_id: int
    rows: int  # rows still generating
    prompt_tokens: int
    prefill_remaining: int = 0
    deadline: float | None = None
    stopped: LeaveReason | None = None


@dataclass(frozen=True)
class SchedulerState:
    """The requests as the step finds them, each list in arrival order."""

    now: float
    analyses: tuple[QueuedAnalysis, ...] = ()
    waiting: tuple[Waiting, ...] = ()
    prefilling: StartedCall | None = None
    running: tuple[StartedCall, ...] = ()
    cached_positions: int = 0  # columns of the running rows' KV cache


@dataclass(frozen=True)
class Leave:
    """A request that leaves before the step's forwards, and why."""

    request_id: int
    reason: LeaveReason


@dataclass(frozen=True)
class PrefillChunk:
    """The next ``tokens`` prompt tokens of a call."""

    request_id: int
    tokens: int
    starts: bool  # the call's first chunk: it is started from its prepared inputs
    completes: bool  # the prompt's last chunk: the call's rows join the batch


@dataclass(frozen=True)
class StepPlan:
    analyses: tuple[int, ...] = ()  # run as one batch
    leaving: tuple[Leave, ...] = ()
    prefill: tuple[PrefillChunk, ...] = ()
    decode: bool = False  # one decode step for every running row (those joining included)

    @property
    def is_empty(self) -> bool:
        return not (self.analyses or self.leaving or self.prefill or self.decode)


def schedule(
    state: SchedulerState,
    limits: BatchLimits,
    *,
    max_analysis_batch: int,
    policy: AdmissionPolicy | None = None,
) -> StepPlan:
    policy = policy or FirstComeFirstServed()
    leaving: list[Leave] = []

    def stays(request_id: int, stopped: LeaveReason | None, deadline: float | None) -> bool:
        reason = stopped or (
            LeaveReason.DEADLINE if deadline is not None and state.now >= deadline else None
        )
        if reason is not None:
            leaving.append(Leave(request_id, reason))
        return reason is None

    analyses = [a for a in state.analyses if stays(a.request_id, a.stopped, a.deadline)]
    running = [c for c in state.running if stays(c.request_id, c.stopped, c.deadline)]
    prefilling = state.prefilling
    if prefilling is not None and not stays(
        prefilling.request_id, prefilling.stopped, prefilling.deadline
    ):
        prefilling = None
    waiting = [w.call for w in state.waiting if stays(w.call.request_id, w.stopped, w.deadline)]
    batch = _BatchSoFar(limits, sum(c.rows for c in running), state.cached_positions, bool(running))
    if prefilling is not None:
        batch.prefill(prefilling.request_id, prefilling.prefill_remaining, prefilling, False)
    blocked = False  # a call did not fit: those behind it may take only the kept rows
    for call in policy.order(waiting):
        if batch.left <= 0:
            break
        if call.prompt_tokens > batch.left and batch.left < limits.prefill_token_budget:
            break  # it waits for a whole budget rather than start on a rest
        if batch.fits(call, only_kept_rows=blocked):
            batch.prefill(call.request_id, call.prompt_tokens, call, True)
        elif not limits.short_call_rows:
            break  # in order: later calls wait behind it (no starvation of large calls)
        else:
            blocked = True
    return StepPlan(
        analyses=tuple(a.request_id for a in policy.order(analyses)[:max_analysis_batch]),
        leaving=tuple(leaving),
        prefill=tuple(batch.chunks),
        decode=batch.has_calls,
    )


@dataclass
class _BatchSoFar:
    """The running rows and the prefill budget as the plan grows."""

    limits: BatchLimits
    rows: int
    positions: int
    has_calls: bool
    chunks: list[PrefillChunk] = field(default_factory=list)

    @property
    def left(self) -> int:
        return self.limits.prefill_token_budget - sum(chunk.tokens for chunk in self.chunks)

    def fits(self, call: WaitingCall, *, only_kept_rows: bool = False) -> bool:
        """Whether ``call`` joins the batch within the limits; ``only_kept_rows``: behind a
        call that did not fit, a call joins only into the rows kept for short calls, so it
        never takes rows that the call before it in the order waits for."""
        limits = self.limits
        rows = self.rows + call.rows
        if only_kept_rows and (
            limits.rows_for(call) < limits.max_rows  # a long call: it has no kept rows
            or self.rows < limits.max_rows - limits.short_call_rows
        ):
            return False
        if not self.has_calls:
            return True  # a call alone always runs (its own limits were checked at the edge)
        widest = max(self.positions + 1, call.sequence_tokens)
        return rows <= limits.rows_for(call) and rows * widest <= limits.max_kv_positions

    def prefill(
        self, request_id: int, remaining: int, call: WaitingCall | StartedCall, starts: bool
    ) -> None:
        """Spend what is left of the budget, up to ``remaining`` prompt tokens, on a call;
        once its prompt is done its rows join the batch."""
        tokens = min(remaining, self.left)
        completes = tokens == remaining
        self.chunks.append(PrefillChunk(request_id, tokens, starts, completes))
        if completes:
            self.rows += call.rows
            self.positions = max(self.positions, call.prompt_tokens)
            self.has_calls = True
