"""The engine: owns the model, the processor and the SAEs, and runs batches for the scheduler.

``prepare_*`` checks a request and builds its model inputs (tokenising, image preprocessing):
CPU work done in worker threads before the request is queued, so a bad study fails alone and at
once. ``analyse`` and ``generate`` run the model and are called from the scheduler's one engine
thread only, never from the event loop. Errors a caller caused are the domain errors of
``maira_sae.server.errors``; running out of accelerator memory fails the batch as
RESOURCE_EXHAUSTED (retryable), never the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import numpy as np
import torch

from maira_sae.sae.model import FeatureOutOfRange
from maira_sae.sae.steering import validate_intervention
from maira_sae.server.engine.activation_search import (
    activation_search_result,
    activation_text_inputs,
)
from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.decode_batch import DecodeBatch
from maira_sae.server.engine.feature_lookup import FeatureLookup
from maira_sae.server.engine.features import (
    accepted_positions,
    reconstruction_quality,
    sparse_codes,
    top_feature_scores,
)
from maira_sae.server.engine.generation import GenerationCall
from maira_sae.server.engine.sae_entry import SaeEntry, feature_out_of_range
from maira_sae.server.engine.static_decode_batch import StaticDecodeBatch, StaticDecodeSettings
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.types import (
    ActivationSearchRequest,
    EncodeRequest,
    EncodeResult,
    FeatureDetails,
    FeatureSearchResult,
    FinishReason,
    GenerateRequest,
    GenerationEvent,
    TopFeaturesRequest,
    TopFeaturesResult,
    VariantFinished,
)
from maira_sae.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    echo,
)
from maira_sae.server.maira2.grounding import parse_grounded_output
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor, ModelInputs
from maira_sae.server.maira2.study import TaskKind

AnalysisRequest = EncodeRequest | TopFeaturesRequest | ActivationSearchRequest
AnalysisResult = EncodeResult | TopFeaturesResult | FeatureSearchResult
RowBatch = DecodeBatch | StaticDecodeBatch
R = TypeVar("R", EncodeRequest, TopFeaturesRequest, GenerateRequest)

_NO_PIXELS = np.zeros((0, 0), dtype=np.uint8)


@dataclass(frozen=True)
class PreparedAnalysis:
    """An Encode, TopFeatures or search-by-activation request checked and turned into model
    inputs, ready to batch."""

    request: AnalysisRequest
    entry: SaeEntry
    inputs: ModelInputs


@dataclass(frozen=True)
class PreparedGeneration:
    request: GenerateRequest
    entry: SaeEntry
    inputs: ModelInputs


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
        if not saes:
            raise ValueError("the engine needs at least one SAE")
        self.model = model
        self.processor = processor
        self._saes = {entry.sae_id: entry for entry in saes}
        self.default_sae_id = default_sae_id or saes[0].sae_id
        if self.default_sae_id not in self._saes:
            raise ValueError(f"default SAE {self.default_sae_id!r} is not among the SAEs")
        self._eos_token_ids = frozenset({processor.eos_token_id})
        context_length = model.config.text_config.max_position_embeddings
        self.token_limits = token_limits or TokenLimits(context_length, context_length)
        self._features = FeatureLookup(model, processor.token_text, saes)
        self._finishers: dict[int, Callable[[], None]] = {}  # id(call) -> send its results
        self._static_batch = (
            None
            if static_decode is None
            else static_decode.build(model, [(entry.sae, entry.layer) for entry in saes])
        )

    @property
    def saes(self) -> tuple[SaeEntry, ...]:
        return tuple(self._saes.values())

    def sae(self, sae_id: str) -> SaeEntry:
        """The SAE with this id ("" is the default one); NotFound names the known ids."""
        entry = self._saes.get(sae_id or self.default_sae_id)
        if entry is None:
            known = ", ".join(sorted(self._saes))
            raise NotFound(f"unknown sae_id {echo(sae_id)}; this server has: {known}")
        return entry

    def check_analysis(self, request: AnalysisRequest) -> SaeEntry:
        """Validate what only the engine knows (SAE id, Matryoshka level) before queueing."""
        entry = self.sae(request.sae_id)
        if request.matryoshka_level is not None:
            levels = entry.sae.num_levels
            if not 1 <= request.matryoshka_level <= levels:
                raise OutOfRange(
                    f"matryoshka_level {request.matryoshka_level} is out of range: "
                    f"SAE {entry.sae_id!r} has levels 1..{levels} (0 means all)"
                )
        labelled_only = isinstance(request, TopFeaturesRequest) and request.labelled_only
        if labelled_only and not len(entry.catalogue):
            raise FailedPrecondition(
                f"labelled_only needs interpretations, and SAE {entry.sae_id!r} has none"
            )
        return entry

    def check_generate(self, request: GenerateRequest) -> SaeEntry:
        """Validate every intervention against the SAE before the request is queued."""
        entry = self.sae(request.sae_id)
        for variant_index, variant in enumerate(request.variants):
            for index, scoped in enumerate(variant.interventions):
                where = f"variants[{variant_index}].interventions[{index}]"
                try:
                    validate_intervention(scoped.intervention, entry.sae, entry.sae.d_model)
                except FeatureOutOfRange as error:
                    raise feature_out_of_range(entry, error, f"{where}.feature") from error
                except ValueError as error:
                    raise InvalidArgument(f"{where}: {error}") from error
        return entry

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

    def prepare_analysis(self, request: AnalysisRequest) -> PreparedAnalysis:
        """Check the request and build its model inputs (tokens, pixels). CPU work that any
        thread may do, so the engine thread only runs the model."""
        entry = self.check_analysis(request)
        inputs = self.processor.process(request.study, request.task, request.response)
        self.token_limits.check(inputs)
        return PreparedAnalysis(_without_pixels(request), entry, inputs)

    def prepare_generation(self, request: GenerateRequest) -> PreparedGeneration:
        entry = self.check_generate(request)
        inputs = self.processor.process(request.study, request.task)
        self.token_limits.check(inputs, request.settings.max_new_tokens)
        return PreparedGeneration(_without_pixels(request), entry, inputs)

    def prepare_activation_search(self, request: ActivationSearchRequest) -> PreparedAnalysis:
        """Check a search-by-activation request and tokenise its text (CPU work for any
        thread); it then runs as an analysis job, in ``analyse``."""
        entry = self.sae(request.sae_id)
        inputs = activation_text_inputs(self.processor, request, self.token_limits)
        return PreparedAnalysis(request, entry, inputs)

    def analyse(self, batch: Sequence[PreparedAnalysis]) -> list[AnalysisResult]:
        """Encode, TopFeatures and search-by-activation requests as one forward pass; one
        result per request."""
        with _out_of_memory_is_retryable():
            residuals = capture_batch(
                self.model,
                [item.inputs for item in batch],
                {item.entry.layer for item in batch},
                pad_token_id=self.processor.pad_token_id,
            )
            return [
                self._analysis_result(item, by_layer[item.entry.layer])
                for item, by_layer in zip(batch, residuals, strict=True)
            ]

    def _analysis_result(self, item: PreparedAnalysis, residual: torch.Tensor) -> AnalysisResult:
        request, entry, tokens = item.request, item.entry, item.inputs.tokens
        if isinstance(request, ActivationSearchRequest):
            return activation_search_result(self._features, entry, request, item.inputs, residual)
        positions = accepted_positions(tokens, request.token_filter)
        if isinstance(request, EncodeRequest):
            features = entry.sae.encode(residual, level=request.matryoshka_level)
            return EncodeResult(
                sae_id=entry.sae_id,
                layer=entry.layer,
                tokens=sparse_codes(features, tokens, positions, request.top_k_per_token),
                total_tokens=len(tokens),
                quality=reconstruction_quality(entry.sae, residual[positions], features[positions]),
            )
        features = entry.sae.encode(residual, level=request.matryoshka_level)
        return TopFeaturesResult(
            sae_id=entry.sae_id,
            layer=entry.layer,
            features=top_feature_scores(
                features,
                tokens,
                positions,
                aggregation=request.aggregation,
                k=request.k,
                catalogue=entry.catalogue,
                patch_grid=self.processor.patch_grid,
                labelled_only=request.labelled_only,
            ),
            total_tokens=len(tokens),
        )

    def close(self) -> None:
        """Let go of what the engine put on the model (the static batch's hooks)."""
        if self._static_batch is not None:
            self._static_batch.close()
            self._static_batch = None

    def new_batch(self) -> RowBatch:
        """An empty set of running generations, decoded together step by step."""
        if self._static_batch is not None:
            return self._static_batch.reset()
        return DecodeBatch(self.model)

    def start(
        self, prepared: PreparedGeneration, emit: Callable[[GenerationEvent], None]
    ) -> GenerationCall:
        """A call ready to prefill (no model work yet): ``prefill_chunk`` runs its prompt;
        its tokens come with the steps after it joins, then one VariantFinished per variant."""
        request, entry, inputs = prepared.request, prepared.entry, prepared.inputs
        call = GenerationCall(
            self.model,
            inputs,
            request.variants,
            request.settings,
            sae=entry.sae,
            steer_layer=entry.layer,
            eos_token_ids=self._eos_token_ids,
            decode=self.processor.decode_generated,
            emit=emit,
        )
        self._finishers[id(call)] = partial(
            self._finish, call, emit, inputs, request.task.kind is not TaskKind.FINDINGS
        )
        return call

    def prefill_chunk(self, batch: RowBatch, call: GenerationCall, max_tokens: int) -> bool:
        """Run up to ``max_tokens`` more of the call's prompt; True once the prompt is done
        and the call's rows have joined ``batch``. A call whose prefill fails is dropped."""
        try:
            with _out_of_memory_is_retryable():
                prefilled = call.prefill_chunk(max_tokens)
                if prefilled is not None:
                    batch.join(call, prefilled)
        except BaseException:
            self._finishers.pop(id(call), None)
            raise
        return prefilled is not None

    def begin(
        self,
        batch: RowBatch,
        prepared: PreparedGeneration,
        emit: Callable[[GenerationEvent], None],
    ) -> GenerationCall:
        """Prefill a call in one go and add its rows to ``batch`` (``start`` and one
        ``prefill_chunk`` of the whole prompt)."""
        call = self.start(prepared, emit)
        self.prefill_chunk(batch, call, call.prefill_remaining)
        return call

    def step(self, batch: RowBatch) -> list[GenerationCall]:
        """One decode step for every row of ``batch``; returns the calls that ended (their
        VariantFinished events are sent)."""
        with _out_of_memory_is_retryable():
            ended = batch.step()
        for call in ended:
            self._finishers.pop(id(call))()
        return ended

    def stop(self, batch: RowBatch, call: GenerationCall, reason: FinishReason) -> None:
        """End a call now (cancel, deadline): its rows leave the batch at once (a call still
        being prefilled gets no more chunks)."""
        call.stop(reason)
        if call in batch.calls:
            batch.remove(call)
        self._finishers.pop(id(call))()

    def forget(self, batch: RowBatch) -> None:
        """Drop every call of a batch that failed (its callers are told by the scheduler)."""
        for call in batch.calls:
            self._finishers.pop(id(call), None)

    def generate(
        self,
        prepared: PreparedGeneration,
        emit: Callable[[GenerationEvent], None],
        should_stop: Callable[[], bool],
    ) -> None:
        """One call from prefill to its last token on a batch of its own (offline use; the
        scheduler interleaves calls with ``start``/``prefill_chunk``/``step``/``stop``)."""
        batch = self.new_batch()
        call = self.begin(batch, prepared, emit)
        try:
            while not call.done:
                if should_stop():
                    self.stop(batch, call, FinishReason.CANCELLED)
                    return
                self.step(batch)
        finally:
            self.forget(batch)

    def _finish(
        self,
        call: GenerationCall,
        emit: Callable[[GenerationEvent], None],
        inputs: ModelInputs,
        grounded: bool,
    ) -> None:
        for row in call.results():
            phrases, parse_ok = (
                parse_grounded_output(row.text, inputs.images[0]) if grounded else ((), True)
            )
            emit(
                VariantFinished(
                    variant_index=row.variant_index,
                    text=row.text,
                    finish_reason=row.finish_reason,
                    num_tokens=row.num_tokens,
                    phrases=phrases,
                    parse_ok=parse_ok,
                )
            )


def _without_pixels(request: R) -> R:
    """The request as it waits in the queue: its model inputs are built, so the decoded images
    (up to hundreds of MB each) are let go; only ``pixel_values`` stay."""
    study = replace(request.study, frontal=_NO_PIXELS, lateral=None, prior=None)
    return replace(request, study=study)


@contextmanager
def _out_of_memory_is_retryable() -> Iterator[None]:
    """Out-of-memory in a batch fails that batch's requests as retryable, not the server."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise ResourceExhausted(
            "the accelerator ran out of memory for this batch; retry"
        ) from error
