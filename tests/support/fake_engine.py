"""A model-free engine for engine-core tests: analyses echo their label, a generation call's
prompt is "prefilled" in the chunks the plan asks for, and every running call makes one token
per decode step until it reaches its length or is stopped (no per-variant results)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import SimpleNamespace

from maira_sae.server.engine.decode_batch import CallEvents
from maira_sae.server.engine.types import FinishReason, GeneratedToken, VariantFinished
from maira_sae.server.errors import InvalidArgument


def fake_analysis(label: object, *, tokens: int = 10) -> object:
    """A prepared analysis as the scheduler reads it (its prompt), echoed back as ``label``."""
    return SimpleNamespace(label=label, inputs=SimpleNamespace(tokens=[0] * tokens))


def fake_prepared(*, tokens: int = 10, rows: int = 1, max_new_tokens: int = 1000) -> object:
    """What the scheduler reads of a prepared generation: its prompt, rows and length."""
    return SimpleNamespace(
        inputs=SimpleNamespace(tokens=[0] * tokens),
        request=SimpleNamespace(
            variants=[None] * rows, settings=SimpleNamespace(max_new_tokens=max_new_tokens)
        ),
    )


class FakeCall:
    def __init__(self, request_id: int, prepared: object) -> None:
        self.request_id = request_id
        self.length = prepared.request.settings.max_new_tokens  # type: ignore[attr-defined]
        self.rows = len(prepared.request.variants)  # type: ignore[attr-defined]
        self.prefill_remaining = len(prepared.inputs.tokens)  # type: ignore[attr-defined]
        self.position = 0
        self.finish: FinishReason | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None


class FakeBatch:
    def __init__(self) -> None:
        self._calls: list[FakeCall] = []

    @property
    def calls(self) -> tuple[FakeCall, ...]:
        return tuple(self._calls)

    @property
    def rows(self) -> int:
        return sum(call.rows for call in self._calls)

    @property
    def cached_positions(self) -> int:
        return max((call.position for call in self._calls), default=0)


class FakeEngine:
    """``gate`` holds the engine thread inside an analysis, so a test can fill the queue."""

    def __init__(self, *, step_delay_s: float = 0.001) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.analysing = threading.Event()  # set once an analysis batch reached the engine
        self.stopped: list[FinishReason] = []  # the reason of each call stopped
        self.batches: list[list[object]] = []
        self.generated = 0
        self.steps: list[int] = []  # rows of each decode step
        self.chunks: list[int] = []  # tokens of each prefill chunk
        self.fail_next = False
        self._step_delay_s = step_delay_s

    def analyse(self, batch: Sequence[object]) -> list[object]:
        self.analysing.set()
        self.gate.wait(10)
        labels = [item.label for item in batch]  # type: ignore[attr-defined]
        self.batches.append(labels)
        if self.fail_next:
            self.fail_next = False
            raise InvalidArgument("this batch is bad")
        return [("result", label) for label in labels]

    @property
    def generations(self) -> FakeEngine:
        return self

    def new_batch(self) -> FakeBatch:
        return FakeBatch()

    def start(self, request_id: int, prepared: object) -> FakeCall:
        return FakeCall(request_id, prepared)

    def prefill_chunk(self, batch: FakeBatch, call: FakeCall, max_tokens: int) -> bool:
        chunk = min(max_tokens, call.prefill_remaining)
        self.chunks.append(chunk)
        call.prefill_remaining -= chunk
        if call.prefill_remaining:
            return False
        batch._calls.append(call)
        return True

    def decode(self, batch: FakeBatch) -> list[CallEvents]:
        threading.Event().wait(self._step_delay_s)
        self.steps.append(batch.rows)
        events = []
        for call in batch.calls:
            self.generated += 1
            token = GeneratedToken(0, call.position, 7, "a")
            call.position += 1
            if call.position == call.length:
                call.finish = FinishReason.LENGTH
            events.append(CallEvents(call.request_id, (token,), call.done))
        batch._calls = [call for call in batch._calls if not call.done]
        return events

    def stop(
        self, batch: FakeBatch, call: FakeCall, reason: FinishReason
    ) -> tuple[VariantFinished, ...]:
        call.finish = reason
        self.stopped.append(reason)
        if call in batch._calls:
            batch._calls.remove(call)
        return ()
