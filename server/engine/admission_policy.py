"""Which waiting work is offered the step's prefill budget, rows and analysis batch first.

``schedule`` walks the waiting calls in the order the policy gives and starts them while they
fit; the first that does not fit stops the walk, so a call first in the order is never
overtaken for good by smaller ones behind it. Queued analyses (Encode, TopFeatures) are
ordered by the same policy before the step takes its batch of them. A policy sees each
request's cost as it is known at admission (prompt tokens, rows, tokens to generate) and the
priority its caller marked it with, so fair sharing is a policy, not a new scheduler.

``FirstComeFirstServed`` serves arrival order. ``FairShareByCost`` (the server's) is weighted
fair queuing with one flow per request: a request's tag is the engine's work (tokens) done
before it arrived plus its own cost divided by its weight, and the smallest tag goes first. A
short call therefore overtakes long ones that arrived at about the same time, but not one that
has waited while the engine did more work than the short call's advantage: nothing waits
forever. Batch-marked requests weigh ``batch_weight`` (< 1): their cost counts that many times
more, so interactive callers go first until a batch request has waited its turn.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Priority(enum.Enum):
    """How a caller marked its call: an interactive caller waits for it; batch traffic
    (``encode_many``, dataset jobs) yields to interactive callers."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


def is_long_call(priority: Priority, tokens_to_generate: int, long_call_tokens: int) -> bool:
    """Long calls (batch-marked, or generating more than ``long_call_tokens`` tokens over
    their rows) hold what they take for long: admission and the decode rows each keep a part
    of themselves for the other calls."""
    return priority is Priority.BATCH or tokens_to_generate > long_call_tokens


class Queued(Protocol):
    """What a policy knows of a request that has not started."""

    @property
    def arrival(self) -> int: ...  # the order the engine received it in
    @property
    def served_at_arrival(self) -> int: ...  # the engine's work, in tokens, before it came
    @property
    def priority(self) -> Priority: ...
    @property
    def cost_tokens(self) -> int: ...


@dataclass(frozen=True)
class WaitingCall:
    """A generation admitted but not started: what it will cost."""

    request_id: int
    arrival: int
    enqueued_at: float  # time.monotonic() when it was queued
    prompt_tokens: int
    rows: int  # its variants
    max_new_tokens: int
    priority: Priority = Priority.INTERACTIVE
    served_at_arrival: int = 0

    @property
    def sequence_tokens(self) -> int:
        """The longest a row of it may grow: its prompt and every token it may generate."""
        return self.prompt_tokens + self.max_new_tokens

    @property
    def tokens_to_generate(self) -> int:
        return self.rows * self.max_new_tokens

    @property
    def cost_tokens(self) -> int:
        """The engine work it asks for: its prompt once, and every token of every row."""
        return self.prompt_tokens + self.tokens_to_generate


Q = TypeVar("Q", bound=Queued)


class AdmissionPolicy(Protocol):
    def order(self, waiting: Sequence[Q]) -> Sequence[Q]:
        """The waiting requests (in arrival order) in the order they may start."""
        ...


class FirstComeFirstServed:
    """Arrival order."""

    def order(self, waiting: Sequence[Q]) -> Sequence[Q]:
        return waiting


DEFAULT_BATCH_WEIGHT = 1 / 16


@dataclass(frozen=True)
class FairShareByCost:
    """Weighted fair queuing by cost (the module's docstring): smallest tag first, arrival
    order between equal tags."""

    batch_weight: float = DEFAULT_BATCH_WEIGHT

    def __post_init__(self) -> None:
        if not 0 < self.batch_weight <= 1:
            raise ValueError(f"batch_weight must be in (0, 1], got {self.batch_weight}")

    def tag(self, request: Queued) -> float:
        weight = self.batch_weight if request.priority is Priority.BATCH else 1.0
        return request.served_at_arrival + request.cost_tokens / weight

    def order(self, waiting: Sequence[Q]) -> Sequence[Q]:
        return sorted(waiting, key=lambda request: (self.tag(request), request.arrival))
