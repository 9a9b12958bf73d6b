"""Which waiting generation is offered the step's prefill budget and rows first.

``schedule`` walks the waiting calls in the order the policy gives and starts them while they
fit; the first that does not fit stops the walk, so a large call is never overtaken for good
by smaller ones behind it. The default serves calls in arrival order. A policy sees each
call's cost as it is known at admission (prompt tokens, rows, tokens to generate), so a fair
share by cost (weighted fair queuing, lanes per class of caller) is a policy, not a new
scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WaitingCall:
    """A generation admitted but not started: what it will cost."""

    request_id: int
    arrival: int  # the order the engine received it in
    enqueued_at: float  # time.monotonic() when it was queued
    prompt_tokens: int
    rows: int  # its variants
    max_new_tokens: int

    @property
    def sequence_tokens(self) -> int:
        """The longest a row of it may grow: its prompt and every token it may generate."""
        return self.prompt_tokens + self.max_new_tokens


class AdmissionPolicy(Protocol):
    def order(self, waiting: Sequence[WaitingCall]) -> Sequence[WaitingCall]:
        """The waiting calls (in arrival order) in the order they may start."""
        ...


class FirstComeFirstServed:
    """Arrival order."""

    def order(self, waiting: Sequence[WaitingCall]) -> Sequence[WaitingCall]:
        return waiting
