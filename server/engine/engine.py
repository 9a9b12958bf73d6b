"""The engine: MAIRA-2, its processor and its SAEs, and the parts that serve them.

Each part has one job: ``SaeRegistry`` (the SAEs by id), ``RequestPreparer`` (a request's
checks and model inputs, CPU work done in worker threads before it is queued), ``Analyser``
(Encode and TopFeatures batches), ``GenerationRunner`` (a generation's prefill, decode steps
and stop), ``FeatureLookup`` (feature pages and search). ``Engine`` assembles them over one
model and is what the service and the offline tools hold: the entry points below are the
parts'. The model runs on the engine thread only (``async_engine``), or, offline, on the
caller's thread through ``generate``, which runs the same ``EngineCore`` as the server. Errors
a caller caused are the domain errors of ``maira_sae.server.errors``; running out of
accelerator memory fails the batch as RESOURCE_EXHAUSTED (retryable), never the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from maira_sae.server.engine.analysis import Analyser, AnalysisResult
from maira_sae.server.engine.engine_core import EngineCore
from maira_sae.server.engine.feature_lookup import FeatureLookup
from maira_sae.server.engine.generation_runner import GenerationRunner
from maira_sae.server.engine.preparation import (
    AnalysisRequest,
    PreparedAnalysis,
    PreparedGeneration,
    RequestPreparer,
    StudyAnalysisRequest,
)
from maira_sae.server.engine.sae_entry import SaeEntry
from maira_sae.server.engine.sae_registry import SaeRegistry
from maira_sae.server.engine.schedule import BatchLimits, LeaveReason
from maira_sae.server.engine.static_decode_batch import StaticDecodeSettings
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.types import (
    ActivationSearchRequest,
    FeatureDetails,
    FeatureSearchResult,
    GenerateRequest,
    GenerationEvent,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor

__all__ = [
    "AnalysisRequest",
    "AnalysisResult",
    "Engine",
    "PreparedAnalysis",
    "PreparedGeneration",
    "SaeEntry",
]


class Engine:
    def __init__(
        self,
        model: Maira2ForConditionalGeneration,
        processor: Maira2Processor,
        saes: Sequence[SaeEntry],
        *,
        default_sae_id: str | None = None,
        token_limits: TokenLimits | None = None,
        static_decode: StaticDecodeSettings | None = None,
    ) -> None:
        """``token_limits`` default to the model's context length for both limits;
        ``static_decode`` selects the graph-ready decode batch (``static_decode_batch``)."""
        self.model = model
        self.processor = processor
        self._saes = SaeRegistry(saes, default_sae_id)
        context_length = model.config.text_config.max_position_embeddings
        limits = token_limits or TokenLimits(context_length, context_length)
        self._preparer = RequestPreparer(processor, self._saes, limits)
        self._features = FeatureLookup(model, processor.token_text, saes)
        self._analyser = Analyser(model, processor, self._features)
        self.generations = GenerationRunner(model, processor, saes, static_decode)

    # ---- the SAEs ------------------------------------------------------------------------

    @property
    def saes(self) -> tuple[SaeEntry, ...]:
        return self._saes.entries

    @property
    def default_sae_id(self) -> str:
        return self._saes.default_sae_id

    def sae(self, sae_id: str) -> SaeEntry:
        """The SAE with this id ("" is the default one); NotFound names the known ids."""
        return self._saes.get(sae_id)

    def feature(
        self,
        sae_id: str,
        feature: int,
        *,
        num_logits: int = 10,
        num_nearest: int = 10,
        decoder_row: bool = False,
    ) -> FeatureDetails:
        """One feature of an SAE ("" is the default one): see ``FeatureLookup.feature``.
        Runs torch (the logit effects, the decoder cosines): call it from a worker thread."""
        return self._features.feature(
            self.sae(sae_id),
            feature,
            num_logits=num_logits,
            num_nearest=num_nearest,
            decoder_row=decoder_row,
        )

    def search_features(self, sae_id: str, query: str, limit: int) -> FeatureSearchResult:
        """Text search over an SAE's interpretations, best match first."""
        return self._features.search(self.sae(sae_id), query, limit)

    # ---- requests: checks and model inputs (any thread) ----------------------------------

    @property
    def token_limits(self) -> TokenLimits:
        return self._preparer.token_limits

    def check_analysis(self, request: StudyAnalysisRequest) -> SaeEntry:
        return self._preparer.check_analysis(request)

    def check_generate(self, request: GenerateRequest) -> SaeEntry:
        return self._preparer.check_generate(request)

    def prepare_analysis(self, request: StudyAnalysisRequest) -> PreparedAnalysis:
        return self._preparer.prepare_analysis(request)

    def prepare_generation(self, request: GenerateRequest) -> PreparedGeneration:
        return self._preparer.prepare_generation(request)

    def prepare_activation_search(self, request: ActivationSearchRequest) -> PreparedAnalysis:
        return self._preparer.prepare_activation_search(request)

    # ---- the model (the engine thread, or offline) ---------------------------------------

    def analyse(self, batch: Sequence[PreparedAnalysis]) -> list[AnalysisResult]:
        """Encode, TopFeatures and search-by-activation requests as one forward pass; one
        result per request."""
        return self._analyser.analyse(batch)

    def generate(
        self,
        prepared: PreparedGeneration,
        emit: Callable[[GenerationEvent], None],
        should_stop: Callable[[], bool],
    ) -> None:
        """One call from prefill to its last event on a batch of its own, on this thread
        (offline use: bench, demo, tests), through the same ``EngineCore`` the server runs.
        ``should_stop`` is asked before each step (once prefilled, a stopped call's variants
        finish CANCELLED); a failure, or a stop before the prefill, is raised here."""
        collected = _Collected(prepared, emit, should_stop)
        budget = max(1, len(prepared.inputs.tokens))  # the whole prompt in one forward
        core = EngineCore(self, limits=BatchLimits(prefill_token_budget=budget),
                          max_analysis_batch=1)  # fmt: skip
        core.add_generation(collected)
        while not core.idle:
            core.step()
        if collected.error is not None:
            raise collected.error

    def close(self) -> None:
        """Let go of what the engine put on the model (the static batch's hooks)."""
        self.generations.close()


@dataclass(eq=False)
class _Collected:
    """The offline path's output route: events to ``emit``, the end kept to raise."""

    prepared: PreparedGeneration
    emit: Callable[[GenerationEvent], None]
    should_stop: Callable[[], bool]
    deadline: float | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    error: BaseException | None = None

    def expired(self) -> bool:
        return False

    def stop_reason(self) -> LeaveReason | None:
        return LeaveReason.CANCELLED if self.should_stop() else None

    def send(self, item: GenerationEvent | BaseException | None) -> None:
        if isinstance(item, BaseException):
            self.error = item
        elif item is not None:
            self.emit(item)
