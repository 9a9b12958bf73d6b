"""A request checked against what only the engine knows and turned into model inputs.

CPU work (tokenising, image preprocessing) that worker threads do before the request is
queued, so a bad study fails alone and at once, and the engine thread only runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from maira_sae.sae.model import FeatureOutOfRange
from maira_sae.sae.steering import validate_intervention
from maira_sae.server.engine.activation_search import activation_text_inputs
from maira_sae.server.engine.sae_entry import SaeEntry, feature_out_of_range
from maira_sae.server.engine.sae_registry import SaeRegistry
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.types import (
    ActivationSearchRequest,
    EncodeRequest,
    GenerateRequest,
    TopFeaturesRequest,
)
from maira_sae.server.errors import FailedPrecondition, InvalidArgument, OutOfRange
from maira_sae.server.maira2.processor import Maira2Processor, ModelInputs

StudyAnalysisRequest = EncodeRequest | TopFeaturesRequest
AnalysisRequest = StudyAnalysisRequest | ActivationSearchRequest
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


class RequestPreparer:
    def __init__(
        self, processor: Maira2Processor, saes: SaeRegistry, token_limits: TokenLimits
    ) -> None:
        self._processor = processor
        self._saes = saes
        self.token_limits = token_limits

    def check_analysis(self, request: StudyAnalysisRequest) -> SaeEntry:
        """Validate what only the engine knows (SAE id, Matryoshka level) before queueing."""
        entry = self._saes.get(request.sae_id)
        if request.matryoshka_level is not None:
            levels = entry.sae.num_levels
            if not 1 <= request.matryoshka_level <= levels:
                raise OutOfRange(
                    f"matryoshka_level {request.matryoshka_level} is out of range: "
                    f"SAE {entry.sae_id!r} has levels 1..{levels} (0 means all)",
                    field="matryoshka_level",
                    reason="VALUE_OUT_OF_RANGE",
                    metadata={
                        "saeId": entry.sae_id,
                        "max": levels,
                        "value": request.matryoshka_level,
                    },
                )
        labelled_only = isinstance(request, TopFeaturesRequest) and request.labelled_only
        if labelled_only and not len(entry.catalogue):
            raise FailedPrecondition(
                f"labelled_only needs interpretations, and SAE {entry.sae_id!r} has none",
                reason="NO_INTERPRETATIONS",
                precondition="INTERPRETATIONS",
                subject=f"sae/{entry.sae_id}",
                metadata={"saeId": entry.sae_id},
            )
        return entry

    def check_generate(self, request: GenerateRequest) -> SaeEntry:
        """Validate every intervention against the SAE before the request is queued."""
        entry = self._saes.get(request.sae_id)
        for variant_index, variant in enumerate(request.variants):
            for index, scoped in enumerate(variant.interventions):
                where = f"variants[{variant_index}].interventions[{index}]"
                try:
                    validate_intervention(scoped.intervention, entry.sae, entry.sae.d_model)
                except FeatureOutOfRange as error:
                    raise feature_out_of_range(entry, error, f"{where}.feature") from error
                except ValueError as error:
                    raise InvalidArgument(
                        f"{where}: {error}", field=where, reason="INTERVENTION_INVALID"
                    ) from error
        return entry

    def prepare_analysis(self, request: StudyAnalysisRequest) -> PreparedAnalysis:
        """Check the request and build its model inputs (tokens, pixels)."""
        entry = self.check_analysis(request)
        inputs = self._processor.process(request.study, request.task, request.response)
        self.token_limits.check(inputs)
        return PreparedAnalysis(_without_pixels(request), entry, inputs)

    def prepare_generation(self, request: GenerateRequest) -> PreparedGeneration:
        entry = self.check_generate(request)
        inputs = self._processor.process(request.study, request.task)
        self.token_limits.check(inputs, request.settings.max_new_tokens)
        return PreparedGeneration(_without_pixels(request), entry, inputs)

    def prepare_activation_search(self, request: ActivationSearchRequest) -> PreparedAnalysis:
        """Check a search-by-activation request and tokenise its text; it then runs as an
        analysis job, batched with Encode and TopFeatures."""
        entry = self._saes.get(request.sae_id)
        return PreparedAnalysis(
            request, entry, activation_text_inputs(self._processor, request, self.token_limits)
        )


def _without_pixels(request: R) -> R:
    """The request as it waits in the queue: its model inputs are built, so the decoded images
    (up to hundreds of MB each) are let go; only ``pixel_values`` stay."""
    study = replace(request.study, frontal=_NO_PIXELS, lateral=None, prior=None)
    return replace(request, study=study)
