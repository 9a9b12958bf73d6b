"""The client's only contact with generated protobuf code: SDK inputs to request messages,
response messages to typed results. Shared by ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message

from maira_sae.client.imaging.decode import MediaType
from maira_sae.client.requests import (
    Aggregation,
    GenerationSettings,
    Intervention,
    PositionScope,
    SteeringMode,
    Task,
    TaskKind,
    TokenFilter,
    TokenRange,
    Variant,
)
from maira_sae.client.results import (
    Admission,
    Box,
    BoxCoordinates,
    ContextToken,
    DicomDecoding,
    EncodeResult,
    Feature,
    FeatureDashboard,
    FeatureExample,
    FeatureMatch,
    FeatureScore,
    FinishReason,
    GenerateEvent,
    GroundedPhrase,
    ImageGrid,
    ImageRole,
    InterpretationProvenance,
    KindDensity,
    Limits,
    MatchKind,
    ModelInfo,
    NearestFeature,
    ReconstructionQuality,
    SaeInfo,
    SearchResult,
    ServerInfo,
    Token,
    TokenActivations,
    TokenEvent,
    TokenKind,
    TokenLogit,
    TopFeaturesResult,
    VariantResult,
    Versions,
)
from maira_sae.client.study import Study, StudyImage
from maira_sae.v1 import maira_sae_pb2 as pb

_MEDIA_TYPES = {
    None: pb.MEDIA_TYPE_UNSPECIFIED,
    MediaType.PNG: pb.MEDIA_TYPE_PNG,
    MediaType.JPEG: pb.MEDIA_TYPE_JPEG,
    MediaType.DICOM: pb.MEDIA_TYPE_DICOM,
}
_TASK_KINDS = {
    TaskKind.FINDINGS: pb.TASK_KIND_FINDINGS,
    TaskKind.GROUNDED_FINDINGS: pb.TASK_KIND_GROUNDED_FINDINGS,
    TaskKind.PHRASE_GROUNDING: pb.TASK_KIND_PHRASE_GROUNDING,
}
_TOKEN_KINDS = {
    TokenKind.IMAGE_PATCH: pb.TOKEN_KIND_IMAGE_PATCH,
    TokenKind.PROMPT_TEXT: pb.TOKEN_KIND_PROMPT_TEXT,
    TokenKind.SPECIAL: pb.TOKEN_KIND_SPECIAL,
    TokenKind.RESPONSE: pb.TOKEN_KIND_RESPONSE,
}
_TOKEN_KINDS_BACK = {value: kind for kind, value in _TOKEN_KINDS.items()}
_MATCH_KINDS_BACK = {
    pb.MATCH_KIND_EXACT: MatchKind.EXACT,
    pb.MATCH_KIND_PHRASE: MatchKind.PHRASE,
    pb.MATCH_KIND_PARTIAL: MatchKind.PARTIAL,
    pb.MATCH_KIND_ACTIVATION: MatchKind.ACTIVATION,
}
_IMAGE_ROLES_BACK = {
    pb.IMAGE_ROLE_FRONTAL: ImageRole.FRONTAL,
    pb.IMAGE_ROLE_LATERAL: ImageRole.LATERAL,
    pb.IMAGE_ROLE_PRIOR: ImageRole.PRIOR,
}
_AGGREGATIONS = {
    Aggregation.MAX: pb.AGGREGATION_MAX,
    Aggregation.MEAN: pb.AGGREGATION_MEAN,
    Aggregation.SUM: pb.AGGREGATION_SUM,
    Aggregation.COUNT: pb.AGGREGATION_COUNT,
}
_STEERING_MODES = {
    SteeringMode.ADD: pb.STEERING_MODE_ADD,
    SteeringMode.CLAMP: pb.STEERING_MODE_CLAMP,
    SteeringMode.ABLATE: pb.STEERING_MODE_ABLATE,
    SteeringMode.SCALE: pb.STEERING_MODE_SCALE,
}
_POSITION_SCOPES = {
    PositionScope.ALL: pb.POSITION_SCOPE_ALL,
    PositionScope.PROMPT: pb.POSITION_SCOPE_PROMPT,
    PositionScope.GENERATED: pb.POSITION_SCOPE_GENERATED,
    PositionScope.IMAGE: pb.POSITION_SCOPE_IMAGE,
    PositionScope.TEXT: pb.POSITION_SCOPE_TEXT,
    PositionScope.RANGES: pb.POSITION_SCOPE_RANGES,
}
_FINISH_REASONS_BACK = {
    pb.FINISH_REASON_EOS: FinishReason.EOS,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
}


# -------------------------------------------------------------------------------------------
# Requests


def _image(image: StudyImage | None) -> pb.Image | None:
    if image is None:
        return None
    return pb.Image(data=image.data, media_type=_MEDIA_TYPES[image.media_type], frame=image.frame)


def study_to_proto(study: Study) -> pb.Study:
    return pb.Study(
        frontal=_image(study.frontal),
        lateral=_image(study.lateral),
        prior=_image(study.prior),
        indication=study.indication,
        technique=study.technique,
        comparison=study.comparison,
        prior_report=study.prior_report,
    )


def _task(task: Task | None) -> pb.Task:
    task = task or Task()
    return pb.Task(kind=_TASK_KINDS[task.kind], phrase=task.phrase)


def _ranges(ranges: Sequence[TokenRange]) -> list[pb.TokenRange]:
    return [pb.TokenRange(start=r.start, end=r.end) for r in ranges]


def _token_filter(token_filter: TokenFilter | None) -> pb.TokenFilter:
    token_filter = token_filter or TokenFilter()
    return pb.TokenFilter(
        kinds=sorted(_TOKEN_KINDS[kind] for kind in token_filter.kinds),
        image_indices=sorted(token_filter.image_indices),
        ranges=_ranges(token_filter.ranges),
    )


def encode_request(
    study: Study,
    *,
    task: Task | None,
    response: str | None,
    sae_id: str,
    token_filter: TokenFilter | None,
    top_k_per_token: int,
    matryoshka_level: int,
) -> pb.EncodeRequest:
    return pb.EncodeRequest(
        study=study_to_proto(study),
        task=_task(task),
        response=response,
        sae_id=sae_id,
        token_filter=_token_filter(token_filter),
        top_k_per_token=top_k_per_token,
        matryoshka_level=matryoshka_level,
    )


def top_features_request(
    study: Study,
    *,
    task: Task | None,
    response: str | None,
    sae_id: str,
    aggregation: Aggregation,
    token_filter: TokenFilter | None,
    k: int,
    labelled_only: bool = False,
    matryoshka_level: int = 0,
) -> pb.TopFeaturesRequest:
    return pb.TopFeaturesRequest(
        study=study_to_proto(study),
        task=_task(task),
        response=response,
        sae_id=sae_id,
        aggregation=_AGGREGATIONS[aggregation],
        token_filter=_token_filter(token_filter),
        k=k,
        labelled_only=labelled_only,
        matryoshka_level=matryoshka_level,
    )


def _intervention(intervention: Intervention) -> pb.Intervention:
    message = pb.Intervention(
        mode=_STEERING_MODES[intervention.mode],
        value=intervention.value,
        scope=_POSITION_SCOPES[intervention.scope],
        ranges=_ranges(intervention.ranges),
    )
    if intervention.direction is not None:
        message.direction.values.extend(intervention.direction)
    else:
        message.feature = intervention.feature
    return message


def generate_request(
    study: Study,
    *,
    variants: Sequence[Variant],
    task: Task | None,
    settings: GenerationSettings | None,
    sae_id: str,
) -> pb.GenerateSteeredRequest:
    settings = settings or GenerationSettings()
    return pb.GenerateSteeredRequest(
        study=study_to_proto(study),
        task=_task(task),
        settings=pb.GenerationSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
        ),
        variants=[
            pb.Variant(name=v.name, interventions=[_intervention(i) for i in v.interventions])
            for v in variants
        ],
        sae_id=sae_id,
    )


def feature_request(
    feature: int,
    sae_id: str,
    *,
    include_decoder_row: bool = False,
    num_logits: int = 0,
    num_nearest: int = 0,
) -> pb.GetFeatureRequest:
    if feature < 0:
        raise ValueError(f"feature must be >= 0 (features are numbered from 0), got {feature}")
    return pb.GetFeatureRequest(
        sae_id=sae_id,
        feature=feature,
        include_decoder_row=include_decoder_row,
        num_logits=num_logits,
        num_nearest=num_nearest,
    )


def search_request(query: str, limit: int, sae_id: str) -> pb.SearchFeaturesRequest:
    return pb.SearchFeaturesRequest(sae_id=sae_id, query=query, limit=limit)


def activation_search_request(text: str, limit: int, sae_id: str) -> pb.SearchFeaturesRequest:
    return pb.SearchFeaturesRequest(sae_id=sae_id, activation_text=text, limit=limit)


def info_request() -> pb.GetInfoRequest:
    return pb.GetInfoRequest()


# -------------------------------------------------------------------------------------------
# Results


def _optional(message: Message, name: str) -> Any:
    """An ``optional`` scalar field: None when absent."""
    return getattr(message, name) if message.HasField(name) else None


def _token(message: pb.Token) -> Token:
    return Token(
        position=message.position,
        token_id=message.token_id,
        text=message.text,
        kind=_TOKEN_KINDS_BACK[message.kind],
        image_index=_optional(message, "image_index"),
        image_role=_IMAGE_ROLES_BACK.get(message.image_role),
        grid_row=_optional(message, "grid_row"),
        grid_col=_optional(message, "grid_col"),
    )


def encode_result(message: pb.EncodeResponse) -> EncodeResult:
    return EncodeResult(
        sae_id=message.sae_id,
        layer=message.layer,
        tokens=tuple(
            TokenActivations(
                token=_token(item.token),
                feature_ids=tuple(item.feature_ids),
                values=tuple(item.values),
            )
            for item in message.tokens
        ),
        total_tokens=message.total_tokens,
        quality=ReconstructionQuality(
            mse=message.quality.mse,
            explained_variance=message.quality.explained_variance,
            cosine=message.quality.cosine,
        ),
    )


def _image_grid(grid: pb.ImageGrid) -> ImageGrid:
    return ImageGrid(
        image_index=grid.image_index, rows=grid.rows, cols=grid.cols, values=tuple(grid.values)
    )


def top_features_result(message: pb.TopFeaturesResponse) -> TopFeaturesResult:
    return TopFeaturesResult(
        sae_id=message.sae_id,
        layer=message.layer,
        features=tuple(
            FeatureScore(
                feature=item.feature,
                score=item.score,
                label=_optional(item, "label"),
                interpretation_score=_optional(item, "interpretation_score"),
                token_positions=tuple(item.token_positions),
                image_grids=tuple(_image_grid(grid) for grid in item.image_grids),
            )
            for item in message.features
        ),
        total_tokens=message.total_tokens,
    )


def _coordinates(message: pb.BoxCoordinates) -> BoxCoordinates:
    return BoxCoordinates(
        x_min=message.x_min, y_min=message.y_min, x_max=message.x_max, y_max=message.y_max
    )


def generate_event(message: pb.GenerateSteeredResponse, names: Sequence[str] = ()) -> GenerateEvent:
    """One stream message; ``names`` are the request's variant names, by index."""
    index = message.variant_index
    if message.WhichOneof("event") == "token":
        token = message.token
        return TokenEvent(
            variant_index=index, position=token.position, token_id=token.token_id, text=token.text
        )
    finished = message.finished
    return VariantResult(
        variant_index=index,
        name=names[index] if index < len(names) else "",
        text=finished.text,
        finish_reason=_FINISH_REASONS_BACK[finished.finish_reason],
        num_tokens=finished.num_tokens,
        phrases=tuple(
            GroundedPhrase(
                text=phrase.text,
                boxes=tuple(
                    Box(cropped=_coordinates(box.cropped), original=_coordinates(box.original))
                    for box in phrase.boxes
                ),
            )
            for phrase in finished.phrases
        ),
        parse_ok=finished.parse_ok,
    )


def info_result(message: pb.GetInfoResponse) -> ServerInfo:
    m, limits, versions = message.model, message.limits, message.versions
    return ServerInfo(
        model=ModelInfo(
            name=m.name,
            path=m.path,
            dtype=m.dtype,
            device=m.device,
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            image_tokens_per_image=m.image_tokens_per_image,
            patch_grid_rows=m.patch_grid_rows,
            patch_grid_cols=m.patch_grid_cols,
            demo=m.demo,
            image_features=m.image_features,
        ),
        saes=tuple(
            SaeInfo(
                id=s.id,
                layer=s.layer,
                hook_point=s.hook_point,
                d_model=s.d_model,
                d_sae=s.d_sae,
                group_sizes=tuple(s.group_sizes),
                has_interpretations=s.has_interpretations,
                num_interpretations=s.num_interpretations,
                source_format=s.source_format,
            )
            for s in message.saes
        ),
        default_sae_id=message.default_sae_id,
        limits=_copy_fields(Limits, limits),
        versions=Versions(
            maira_sae=versions.maira_sae, torch=versions.torch, transformers=versions.transformers
        ),
        dicom=DicomDecoding(
            modalities=tuple(message.dicom.modalities),
            modality_lut=message.dicom.modality_lut,
            voi_lut=message.dicom.voi_lut,
            monochrome1_inverted=message.dicom.monochrome1_inverted,
            description=message.dicom.description,
        ),
        admission=_copy_fields(Admission, message.admission),
    )


_Copied = TypeVar("_Copied")


def _copy_fields(result_type: type[_Copied], message: Message) -> _Copied:
    """A result whose fields have the names and meanings of the message's."""
    fields = dataclasses.fields(result_type)  # type: ignore[arg-type]
    return result_type(**{field.name: getattr(message, field.name) for field in fields})


def _token_logits(messages: Sequence[pb.TokenLogit]) -> tuple[TokenLogit, ...]:
    return tuple(TokenLogit(token_id=m.token_id, text=m.text, logit=m.logit) for m in messages)


def _example(message: pb.FeatureExample) -> FeatureExample:
    return FeatureExample(
        study_id=message.study_id,
        position=message.position,
        kind=_TOKEN_KINDS_BACK[message.kind],
        value=message.value,
        image_index=_optional(message, "image_index"),
        grid_row=_optional(message, "grid_row"),
        grid_col=_optional(message, "grid_col"),
        quantile=_optional(message, "quantile"),
        heatmap=_image_grid(message.heatmap) if message.HasField("heatmap") else None,
        thumbnail_png=message.thumbnail_png or None,
        context=tuple(
            ContextToken(text=t.text, value=t.value, is_example=t.is_example)
            for t in message.context
        ),
    )


def _dashboard(message: pb.FeatureDashboard) -> FeatureDashboard:
    return FeatureDashboard(
        num_studies=message.num_studies,
        num_tokens=message.num_tokens,
        density=message.density,
        density_by_kind=tuple(
            KindDensity(kind=_TOKEN_KINDS_BACK[d.kind], density=d.density)
            for d in message.density_by_kind
        ),
        histogram_edges=tuple(message.histogram_edges),
        histogram_counts=tuple(message.histogram_counts),
        top_examples=tuple(_example(e) for e in message.top_examples),
        quantile_examples=tuple(_example(e) for e in message.quantile_examples),
    )


def _decoder_row(message: pb.Feature) -> np.ndarray | None:
    if not message.decoder_row:
        return None
    row = np.array(message.decoder_row, dtype=np.float32)
    row.flags.writeable = False  # the result is frozen
    return row


def get_feature_result(message: pb.GetFeatureResponse) -> Feature:
    return feature_result(message.feature)


def feature_result(message: pb.Feature) -> Feature:
    return Feature(
        feature=message.feature,
        label=_optional(message, "label"),
        interpretation_score=_optional(message, "interpretation_score"),
        decoder_norm=message.decoder_norm,
        dashboard=_dashboard(message.dashboard) if message.has_dashboard else None,
        dashboard_note=message.dashboard_note,
        promoted_tokens=_token_logits(message.promoted_tokens),
        suppressed_tokens=_token_logits(message.suppressed_tokens),
        decoder_row=_decoder_row(message),
        provenance=_provenance(message.provenance) if message.HasField("provenance") else None,
        nearest_features=tuple(
            NearestFeature(
                feature=nearest.feature,
                cosine=nearest.cosine,
                label=_optional(nearest, "label"),
                interpretation_score=_optional(nearest, "interpretation_score"),
            )
            for nearest in message.nearest_features
        ),
    )


def _provenance(message: pb.InterpretationProvenance) -> InterpretationProvenance:
    return InterpretationProvenance(
        explainer=message.explainer,
        explainer_model=message.explainer_model,
        scorer=message.scorer,
        num_activating=_optional(message, "num_activating"),
        num_non_activating=_optional(message, "num_non_activating"),
        auroc=_optional(message, "auroc"),
        balanced_accuracy=_optional(message, "balanced_accuracy"),
        concept_auroc=_optional(message, "concept_auroc"),
        created=message.created,
    )


def search_result(message: pb.SearchFeaturesResponse) -> SearchResult:
    return SearchResult(
        sae_id=message.sae_id,
        matches=tuple(
            FeatureMatch(
                feature=feature_result(match.feature),
                score=match.score,
                kind=_MATCH_KINDS_BACK.get(match.kind),
                token_index=match.token_index,
                token_text=match.token_text,
            )
            for match in message.matches
        ),
        suggestions=tuple(message.suggestions),
        note=message.note,
        activation_tokens=tuple(message.activation_tokens),
    )
