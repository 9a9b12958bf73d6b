"""GetFeature's reply: a feature's label with its provenance, dashboard page, logit effects,
nearest features and decoder row -> protobuf (the search matches and other results are in
``to_proto``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from maira_sae.sae.catalogue import Provenance
from maira_sae.sae.dashboard import Example, FeatureStats
from maira_sae.server.engine.types import FeatureDetails, NearestFeature, TokenLogit
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.service.from_proto import TOKEN_KINDS_FROM_PROTO
from maira_sae.server.service.to_proto import feature_to_proto
from maira_sae.v1 import maira_sae_pb2 as pb

_KIND_TO_PROTO = {kind.value: value for value, kind in TOKEN_KINDS_FROM_PROTO.items()}


def feature_details_to_proto(details: FeatureDetails) -> pb.Feature:
    msg = feature_to_proto(details.description)
    msg.has_dashboard = details.dashboard is not None
    msg.dashboard_note = details.dashboard_note
    if details.dashboard is not None:
        msg.dashboard.CopyFrom(_dashboard(details.dashboard, details.token_texts))
    msg.promoted_tokens.extend(_logits(details.logit_effect.promoted))
    msg.suppressed_tokens.extend(_logits(details.logit_effect.suppressed))
    if details.decoder_row is not None:
        msg.decoder_row.extend(details.decoder_row)
    interpretation = details.description.interpretation
    if interpretation is not None and interpretation.provenance is not None:
        msg.provenance.CopyFrom(_provenance(interpretation.provenance))
    msg.nearest_features.extend(_nearest(item) for item in details.nearest)
    return msg


def _provenance(provenance: Provenance) -> pb.InterpretationProvenance:
    """Empty cells stay absent (``optional`` numbers) or empty (strings)."""
    msg = pb.InterpretationProvenance(
        explainer=provenance.explainer or "",
        explainer_model=provenance.explainer_model or "",
        scorer=provenance.scorer or "",
        created=provenance.created or "",
    )
    numbers = {
        "num_activating": provenance.n_activating,
        "num_non_activating": provenance.n_non_activating,
        "auroc": provenance.auroc,
        "balanced_accuracy": provenance.balanced_accuracy,
        "concept_auroc": provenance.concept_auroc,
    }
    for name, value in numbers.items():
        if value is not None:
            setattr(msg, name, value)
    return msg


def _nearest(item: NearestFeature) -> pb.NearestFeature:
    described = feature_to_proto(item.description)
    msg = pb.NearestFeature(feature=described.feature, cosine=item.cosine)
    if described.HasField("label"):
        msg.label = described.label
    if described.HasField("interpretation_score"):
        msg.interpretation_score = described.interpretation_score
    return msg


def _logits(tokens: tuple[TokenLogit, ...]) -> list[pb.TokenLogit]:
    return [pb.TokenLogit(token_id=t.token_id, text=t.text, logit=t.logit) for t in tokens]


def _dashboard(stats: FeatureStats, token_texts: dict[int, str]) -> pb.FeatureDashboard:
    return pb.FeatureDashboard(
        num_studies=stats.num_studies,
        num_tokens=stats.num_tokens,
        density=stats.density,
        density_by_kind=[
            pb.KindDensity(kind=_KIND_TO_PROTO[kind], density=density)
            for kind, density in stats.density_by_kind.items()
        ],
        histogram_edges=stats.histogram_edges,
        histogram_counts=stats.histogram_counts,
        top_examples=[_example(e, token_texts) for e in stats.top_examples],
        quantile_examples=[_example(e, token_texts) for e in stats.quantile_examples],
    )


def _example(example: Example, token_texts: dict[int, str]) -> pb.FeatureExample:
    msg = pb.FeatureExample(
        study_id=example.study_id,
        position=example.position,
        kind=_KIND_TO_PROTO[TokenKind(example.kind).value],
        value=example.value,
    )
    if example.image_index is not None:
        msg.image_index = example.image_index
    if example.grid_row is not None and example.grid_col is not None:
        msg.grid_row, msg.grid_col = example.grid_row, example.grid_col
    if example.quantile is not None:
        msg.quantile = example.quantile
    if example.heatmap is not None:
        rows, cols = example.heatmap.shape
        msg.heatmap.CopyFrom(
            pb.ImageGrid(
                image_index=example.image_index or 0,
                rows=rows,
                cols=cols,
                values=example.heatmap.ravel().tolist(),
            )
        )
    if example.thumbnail is not None:
        msg.thumbnail_png = _png(example.thumbnail)
    msg.context.extend(
        pb.ContextToken(text=token_texts.get(token, ""), value=value, is_example=is_example)
        for token, value, is_example in example.context
    )
    return msg


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
