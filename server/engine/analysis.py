"""Encode, TopFeatures and search-by-activation requests run as one forward pass: residuals
captured at each SAE's layer, encoded, and reduced to each request's result."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maira_sae.server.engine.activation_search import activation_search_result
from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.feature_lookup import FeatureLookup
from maira_sae.server.engine.features import (
    accepted_positions,
    reconstruction_quality,
    sparse_codes,
    top_feature_scores,
)
from maira_sae.server.engine.out_of_memory import out_of_memory_is_retryable
from maira_sae.server.engine.preparation import PreparedAnalysis
from maira_sae.server.engine.types import (
    ActivationSearchRequest,
    EncodeRequest,
    EncodeResult,
    FeatureSearchResult,
    TopFeaturesResult,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor

AnalysisResult = EncodeResult | TopFeaturesResult | FeatureSearchResult


class Analyser:
    def __init__(
        self,
        model: Maira2ForConditionalGeneration,
        processor: Maira2Processor,
        lookup: FeatureLookup,
    ) -> None:
        self._model = model
        self._processor = processor
        self._lookup = lookup

    def analyse(self, batch: Sequence[PreparedAnalysis]) -> list[AnalysisResult]:
        """One forward pass for the batch; one result per request."""
        with out_of_memory_is_retryable():
            residuals = capture_batch(
                self._model,
                [item.inputs for item in batch],
                {item.entry.layer for item in batch},
                pad_token_id=self._processor.pad_token_id,
            )
            return [
                self._result(item, by_layer[item.entry.layer])
                for item, by_layer in zip(batch, residuals, strict=True)
            ]

    def _result(self, item: PreparedAnalysis, residual: torch.Tensor) -> AnalysisResult:
        request, entry, tokens = item.request, item.entry, item.inputs.tokens
        if isinstance(request, ActivationSearchRequest):
            return activation_search_result(self._lookup, entry, request, item.inputs, residual)
        positions = accepted_positions(tokens, request.token_filter)
        features = entry.sae.encode(residual, level=request.matryoshka_level)
        if isinstance(request, EncodeRequest):
            return EncodeResult(
                sae_id=entry.sae_id,
                layer=entry.layer,
                tokens=sparse_codes(features, tokens, positions, request.top_k_per_token),
                total_tokens=len(tokens),
                quality=reconstruction_quality(entry.sae, residual[positions], features[positions]),
            )
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
                patch_grid=self._processor.patch_grid,
                labelled_only=request.labelled_only,
            ),
            total_tokens=len(tokens),
        )
