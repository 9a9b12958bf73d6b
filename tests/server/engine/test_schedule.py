"""What one engine step decides, asserted as plans: the prefill budget split between the call
being prefilled and waiting calls, a long prompt chunked, the row and KV limits, arrival order,
who leaves and why, the analysis batch, and an admission policy changing the plan."""

from __future__ import annotations

from collections.abc import Sequence

from maira_sae.server.engine.admission_policy import WaitingCall
from maira_sae.server.engine.schedule import (
    BatchLimits,
    Leave,
    LeaveReason,
    PrefillChunk,
    QueuedAnalysis,
    SchedulerState,
    StartedCall,
    StepPlan,
    Waiting,
    schedule,
)

NOW = 100.0
BUDGET = BatchLimits(prefill_token_budget=100)


def waiting(request_id: int, prompt: int, *, rows: int = 1, new: int = 50, **live) -> Waiting:
    call = WaitingCall(request_id, request_id, 0.0, prompt, rows, new)
    return Waiting(call, **live)


def running(request_id: int, rows: int = 1, **live) -> StartedCall:
    return StartedCall(request_id, rows=rows, prompt_tokens=10, **live)


def plan(limits: BatchLimits = BUDGET, policy=None, batch: int = 8, **state) -> StepPlan:
    return schedule(
        SchedulerState(now=NOW, **state), limits, max_analysis_batch=batch, policy=policy
    )


def starts(request_id: int, tokens: int, completes: bool = True) -> PrefillChunk:
    return PrefillChunk(request_id, tokens, starts=True, completes=completes)


def test_nothing_to_do_is_an_empty_plan():
    assert plan().is_empty


def test_a_prompt_larger_than_the_budget_is_prefilled_one_chunk_per_step():
    first = plan(waiting=(waiting(1, 250), waiting(2, 10)))
    assert first == StepPlan(prefill=(starts(1, 100, completes=False),))
    middle = plan(prefilling=StartedCall(1, 1, 250, prefill_remaining=150),
                  waiting=(waiting(2, 10),))  # fmt: skip
    assert middle.prefill == (PrefillChunk(1, 100, starts=False, completes=False),)


def test_the_budget_goes_to_the_call_being_prefilled_then_to_whole_prompts_in_order():
    # 30 fits the rest of the budget, 60 does not and waits for a whole one (and 20 behind it)
    step = plan(
        prefilling=StartedCall(1, 1, 250, prefill_remaining=50),
        waiting=(waiting(2, 30), waiting(3, 60), waiting(4, 20)),
    )
    assert step.prefill == (PrefillChunk(1, 50, starts=False, completes=True), starts(2, 30))
    assert step.decode  # the calls joining take their first decode step at once
    assert plan(waiting=(waiting(3, 60), waiting(4, 20))).prefill == (starts(3, 60), starts(4, 20))


def test_calls_beyond_the_row_limit_wait_in_arrival_order():
    limits = BatchLimits(max_rows=3, prefill_token_budget=100)
    queue = (waiting(2, 10, rows=2), waiting(3, 10, rows=1))
    step = plan(limits, running=(running(1, rows=2),), waiting=queue)
    assert step == StepPlan(decode=True)  # call 3 would fit, but does not overtake call 2
    assert plan(limits, waiting=(waiting(2, 10, rows=5),)).prefill == (starts(2, 10),)  # alone


def test_a_call_whose_rows_would_overflow_the_kv_positions_waits():
    limits = BatchLimits(max_kv_positions=1000, prefill_token_budget=1000)
    state = {"running": (running(1, rows=4),), "cached_positions": 150}
    assert plan(limits, waiting=(waiting(2, 10, new=190),), **state).prefill == (starts(2, 10),)
    assert plan(limits, waiting=(waiting(2, 10, new=191),), **state).prefill == ()  # 5 x 201


def test_who_leaves_and_why():
    step = plan(
        analyses=(QueuedAnalysis(1, stopped=LeaveReason.CANCELLED),
                  QueuedAnalysis(2, deadline=NOW), QueuedAnalysis(3, deadline=NOW + 1)),
        waiting=(waiting(4, 10, deadline=NOW - 1), waiting(5, 10)),
        prefilling=StartedCall(6, 1, 500, prefill_remaining=400, stopped=LeaveReason.CANCELLED),
        running=(running(7, stopped=LeaveReason.STREAM_OVERFLOW), running(8)),
    )  # fmt: skip
    assert step.leaving == (
        Leave(1, LeaveReason.CANCELLED),
        Leave(2, LeaveReason.DEADLINE),
        Leave(7, LeaveReason.STREAM_OVERFLOW),
        Leave(6, LeaveReason.CANCELLED),
        Leave(4, LeaveReason.DEADLINE),
    )
    assert step.analyses == (3,)
    assert step.prefill == (starts(5, 10),)  # the budget of the leavers goes on
    assert step.decode


def test_no_decode_step_once_every_running_call_leaves():
    assert not plan(running=(running(1, stopped=LeaveReason.CANCELLED),)).decode


def test_an_analysis_batch_takes_the_first_requests_in_arrival_order():
    step = plan(batch=2, analyses=tuple(QueuedAnalysis(i) for i in range(5)))
    assert step.analyses == (0, 1)


class ShortestPromptFirst:
    def order(self, waiting: Sequence[WaitingCall]) -> Sequence[WaitingCall]:
        return sorted(waiting, key=lambda call: call.prompt_tokens)


def test_an_admission_policy_changes_which_calls_start():
    queue = (waiting(1, 90), waiting(2, 40), waiting(3, 30))
    assert plan(waiting=queue).prefill == (starts(1, 90),)  # arrival order: 40 must wait
    assert plan(waiting=queue, policy=ShortestPromptFirst()).prefill == (
        starts(3, 30),
        starts(2, 40),
    )
