"""What the engine tells about one feature: its label, dashboard page, logit effects, nearest
features and decoder row, and the text search over an SAE's interpretations."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from maira_sae.sae.catalogue import MatchQuality
from maira_sae.sae.dashboard import Example, FeatureStats
from maira_sae.sae.decoder_neighbours import nearest_features
from maira_sae.sae.model import FeatureOutOfRange
from maira_sae.server.engine.logit_effects import LogitEffects
from maira_sae.server.engine.sae_entry import SaeEntry, feature_out_of_range
from maira_sae.server.engine.types import (
    FeatureDescription,
    FeatureDetails,
    FeatureMatch,
    FeatureSearchResult,
    MatchKind,
    NearestFeature,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration


class FeatureLookup:
    """Feature details of the served SAEs (decoder norms computed once at start)."""

    def __init__(
        self,
        model: Maira2ForConditionalGeneration,
        token_text: Callable[[int], str],
        saes: Sequence[SaeEntry],
    ) -> None:
        self._token_text = token_text
        self._logit_effects = LogitEffects(model, token_text)
        self._decoder_norms = {entry.sae_id: entry.sae.W_dec.float().norm(dim=1) for entry in saes}

    def feature(
        self,
        entry: SaeEntry,
        feature: int,
        *,
        num_logits: int = 10,
        num_nearest: int = 10,
        decoder_row: bool = False,
    ) -> FeatureDetails:
        """One feature of an SAE ("" is the default one): its label, dashboard page, logit
        effects, ``num_nearest`` nearest features by decoder cosine and optionally its decoder
        row; OutOfRange past its dictionary. Runs torch (the logit effects, one matrix-vector
        product for the cosines): call it from a worker thread."""
        try:
            entry.sae.check_feature(feature)
        except FeatureOutOfRange as error:
            raise feature_out_of_range(entry, error, "feature") from error
        dashboard, note = (
            entry.dashboard.feature(feature)
            if entry.dashboard is not None
            else (None, f"SAE {entry.sae_id!r} has no dashboard folder")
        )
        return FeatureDetails(
            description=self.describe(entry, feature),
            dashboard=dashboard,
            dashboard_note=note,
            logit_effect=self._logit_effects.of(entry.sae_id, entry.sae, feature, num_logits),
            decoder_row=(
                tuple(entry.sae.W_dec[feature].float().cpu().tolist()) if decoder_row else None
            ),
            token_texts={
                token: self._token_text(token)
                for example in _examples(dashboard)
                for token, _, _ in example.context
            },
            nearest=tuple(
                NearestFeature(self.describe(entry, other), cosine)
                for other, cosine in nearest_features(
                    entry.sae.W_dec, self._decoder_norms[entry.sae_id], feature, num_nearest
                )
            ),
        )

    def search(self, entry: SaeEntry, query: str, limit: int) -> FeatureSearchResult:
        """Text search over an SAE's interpretations, best match first; when nothing matches,
        the nearest labels as suggestions."""
        matches = entry.catalogue.search(query, limit)
        if matches or not len(entry.catalogue):
            note = "" if matches else f"SAE {entry.sae_id!r} has no interpretations to search"
            suggestions: tuple[str, ...] = ()
        else:
            suggestions = tuple(entry.catalogue.suggest(query))
            note = "no label matches the query; the nearest labels are suggested"
        return FeatureSearchResult(
            sae_id=entry.sae_id,
            matches=tuple(
                FeatureMatch(
                    self.describe(entry, match.interpretation.feature),
                    match.relevance,
                    _MATCH_KINDS[match.quality],
                )
                for match in matches
            ),
            suggestions=suggestions,
            note=note,
        )

    def describe(self, entry: SaeEntry, feature: int) -> FeatureDescription:
        """The feature's interpretation and decoder norm."""
        return FeatureDescription(
            feature=feature,
            interpretation=entry.catalogue.get(feature),
            decoder_norm=float(self._decoder_norms[entry.sae_id][feature]),
        )


_MATCH_KINDS = {
    MatchQuality.EXACT: MatchKind.EXACT,
    MatchQuality.PHRASE: MatchKind.PHRASE,
    MatchQuality.PARTIAL: MatchKind.PARTIAL,
}


def _examples(dashboard: FeatureStats | None) -> tuple[Example, ...]:
    if dashboard is None:
        return ()
    return dashboard.top_examples + dashboard.quantile_examples
