"""Runs one ``StepPlan`` on the model and reports what happened as values.

The executor owns the decode batch. In plan order it runs the analysis batch, takes the
leaving calls out of the batch, starts and prefills the chunks, and runs the decode step; a
failure fails only the requests it touched (an analysis batch, one call's prefill, or every
running call when a decode step fails, after which the batch starts empty). It sends nothing
to any caller: ``EngineCore`` routes the ``StepOutcome``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from maira_sae.server.engine.decode_batch import CallEvents
from maira_sae.server.engine.request_registry import RequestRegistry, RunningCall
from maira_sae.server.engine.schedule import PrefillChunk, StepPlan
from maira_sae.server.engine.types import FinishReason, VariantFinished
from maira_sae.server.errors import ServiceError

if TYPE_CHECKING:
    from maira_sae.server.engine.analysis import AnalysisResult
    from maira_sae.server.engine.preparation import PreparedAnalysis, PreparedGeneration

log = logging.getLogger(__name__)


class DecodeBatchView(Protocol):
    """What the executor reads of a decode batch."""

    @property
    def calls(self) -> tuple[RunningCall, ...]: ...
    @property
    def rows(self) -> int: ...
    @property
    def cached_positions(self) -> int: ...


class Generations(Protocol):
    """The generation lifecycle on the model (``GenerationRunner``, or a fake in tests)."""

    def new_batch(self) -> DecodeBatchView: ...
    def start(self, request_id: int, prepared: PreparedGeneration) -> RunningCall: ...
    def prefill_chunk(self, batch: DecodeBatchView, call: RunningCall, max_tokens: int) -> bool: ...
    def decode(self, batch: DecodeBatchView) -> list[CallEvents]: ...
    def stop(
        self, batch: DecodeBatchView, call: RunningCall, reason: FinishReason
    ) -> tuple[VariantFinished, ...]: ...


class ModelRunner(Protocol):
    """What the executor runs: the engine, or a fake in tests."""

    def analyse(self, batch: Sequence[PreparedAnalysis]) -> list[AnalysisResult]: ...
    @property
    def generations(self) -> Generations: ...


@dataclass(frozen=True)
class DecodeStats:
    rows: int
    kv_positions: int  # rows x cached positions, padding included
    seconds: float


@dataclass(frozen=True)
class StepOutcome:
    analysed: tuple[tuple[int, AnalysisResult | Exception], ...] = ()
    stopped: tuple[tuple[int, tuple[VariantFinished, ...]], ...] = ()  # the results of leavers
    started: tuple[RunningCall, ...] = ()
    joined: tuple[int, ...] = ()  # calls whose prompt is done: their rows are in the batch
    failed: tuple[tuple[int, Exception], ...] = ()
    decoded: tuple[CallEvents, ...] = ()
    decode: DecodeStats | None = None


class StepExecutor:
    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner
        self._generations = runner.generations
        self.batch = self._generations.new_batch()

    def execute(self, plan: StepPlan, requests: RequestRegistry) -> StepOutcome:
        analysed = self._analyse(plan.analyses, requests)
        stopped = []
        for leave in plan.leaving:
            call = requests[leave.request_id].call
            if call is not None:
                finished = self._generations.stop(self.batch, call, FinishReason.CANCELLED)
                stopped.append((leave.request_id, finished))
        started: list[RunningCall] = []
        joined: list[int] = []
        failed: list[tuple[int, Exception]] = []
        for chunk in plan.prefill:
            try:
                if self._prefill(chunk, requests, started):
                    joined.append(chunk.request_id)
            except Exception as error:
                _log_unexpected(error, "prefill failed")
                failed.append((chunk.request_id, error))
        decoded, stats = (), None
        if plan.decode and self.batch.calls:
            try:
                decoded, stats = self._decode()
            except Exception as error:  # the step fails its calls; the server keeps serving
                _log_unexpected(error, f"decode step of {self.batch.rows} rows failed")
                failed += [(call.request_id, error) for call in self.batch.calls]
                self.batch = self._generations.new_batch()
        return StepOutcome(
            analysed=analysed,
            stopped=tuple(stopped),
            started=tuple(started),
            joined=tuple(joined),
            failed=tuple(failed),
            decoded=tuple(decoded),
            decode=stats,
        )

    def _analyse(
        self, ids: Sequence[int], requests: RequestRegistry
    ) -> tuple[tuple[int, AnalysisResult | Exception], ...]:
        if not ids:
            return ()
        batch = []
        for request_id in ids:
            job = requests[request_id].analysis
            assert job is not None and job.prepared is not None
            batch.append(job.prepared)
        try:
            results: Sequence[AnalysisResult | Exception] = self._runner.analyse(batch)
        except Exception as error:  # one batch fails, the server keeps serving
            _log_unexpected(error, f"analysis batch of {len(ids)} failed")
            results = [error] * len(ids)
        return tuple(zip(ids, results, strict=True))

    def _prefill(
        self, chunk: PrefillChunk, requests: RequestRegistry, started: list[RunningCall]
    ) -> bool:
        request = requests[chunk.request_id]
        if chunk.starts:
            job = request.generation
            assert job is not None and job.prepared is not None
            call = self._generations.start(chunk.request_id, job.prepared)
            started.append(call)
        else:
            assert request.call is not None
            call = request.call
        return self._generations.prefill_chunk(self.batch, call, chunk.tokens)

    def _decode(self) -> tuple[list[CallEvents], DecodeStats]:
        rows, positions = self.batch.rows, self.batch.cached_positions
        began = time.monotonic()
        decoded = self._generations.decode(self.batch)
        return decoded, DecodeStats(rows, rows * positions, time.monotonic() - began)


def _log_unexpected(error: Exception, what: str) -> None:
    if not isinstance(error, ServiceError):
        log.exception(what)
