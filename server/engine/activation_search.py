"""Search by activation (Neuronpedia's "search via inference"): the features that fire most on a
text, so a feature without a label can still be found.

The text runs through the language model alone (BOS, then its tokens; no chat template, no
image) as an analysis job on the engine thread, captured at the SAE's layer exactly as Encode
captures a study (it may share Encode's batch). A feature's score is its largest activation
over the text's own tokens: BOS is left out of the maximum, since the first position's residual
is the same for every text and would put the same features first whatever was asked.
"""

from __future__ import annotations

import torch

from maira_sae.server.engine.feature_lookup import FeatureLookup
from maira_sae.server.engine.sae_entry import SaeEntry
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.types import (
    ActivationSearchRequest,
    FeatureMatch,
    FeatureSearchResult,
    MatchKind,
)
from maira_sae.server.maira2.processor import Maira2Processor, ModelInputs
from maira_sae.server.maira2.tokens import TokenKind


def activation_text_inputs(
    processor: Maira2Processor, request: ActivationSearchRequest, limits: TokenLimits
) -> ModelInputs:
    """The text's model inputs, within ``limits.max_activation_text_tokens`` (OutOfRange past
    it). CPU work for a preparation thread."""
    inputs = processor.process_text(request.text)
    limits.check_activation_text(inputs)
    return inputs


def activation_search_result(
    lookup: FeatureLookup,
    entry: SaeEntry,
    request: ActivationSearchRequest,
    inputs: ModelInputs,
    residual: torch.Tensor,
) -> FeatureSearchResult:
    """The ``request.limit`` features with the largest positive activation over the text's
    tokens (``residual`` [tokens, d_model] at the SAE's layer), strongest first, each with the
    token where it peaks."""
    text_rows = [i for i, token in enumerate(inputs.tokens) if token.kind is not TokenKind.SPECIAL]
    tokens = tuple(token.text for token in inputs.tokens)
    if not text_rows:
        return FeatureSearchResult(
            entry.sae_id, (), note="the text has no tokens", activation_tokens=tokens
        )
    codes = entry.sae.encode(residual[text_rows])
    peaks, where = codes.max(dim=0)
    count = min(request.limit, int((peaks > 0).sum()))
    values, features = peaks.topk(count) if count else (peaks[:0], where[:0])
    rows = where[features].tolist()
    matches = tuple(
        FeatureMatch(
            lookup.describe(entry, feature),
            value,
            MatchKind.ACTIVATION,
            token_index=text_rows[row],
            token_text=tokens[text_rows[row]],
        )
        for feature, value, row in zip(features.tolist(), values.tolist(), rows, strict=True)
    )
    note = "" if matches else "no feature fires on the text"
    return FeatureSearchResult(entry.sae_id, matches, note=note, activation_tokens=tokens)
