"""Domain results -> protobuf responses (requests come in through ``from_proto``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.types import (
    EncodeResult,
    FeatureDescription,
    FeatureScore,
    FeatureSearchResult,
    FinishReason,
    GeneratedToken,
    GenerationEvent,
    GroundedBox,
    GroundedPhrase,
    MatchKind,
    TokenFeatures,
    TopFeaturesResult,
    VariantFinished,
)
from maira_sae.server.maira2.study import ImageRole
from maira_sae.server.maira2.tokens import TokenInfo
from maira_sae.server.service.config import ServerConfig
from maira_sae.server.service.descriptions import ModelDescription, SaeDescription
from maira_sae.server.service.from_proto import TOKEN_KINDS_FROM_PROTO
from maira_sae.server.service.priority import PRIORITY_KEY
from maira_sae.v1 import maira_sae_pb2 as pb

# Domain value -> proto enum value, for responses.
_TOKEN_KIND_TO_PROTO = {kind: value for value, kind in TOKEN_KINDS_FROM_PROTO.items()}
_IMAGE_ROLE_TO_PROTO = {
    ImageRole.FRONTAL: pb.IMAGE_ROLE_FRONTAL,
    ImageRole.LATERAL: pb.IMAGE_ROLE_LATERAL,
    ImageRole.PRIOR: pb.IMAGE_ROLE_PRIOR,
}
_FINISH_REASON_TO_PROTO = {
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_MATCH_KINDS = {
    MatchKind.EXACT: pb.MATCH_KIND_EXACT,
    MatchKind.PHRASE: pb.MATCH_KIND_PHRASE,
    MatchKind.PARTIAL: pb.MATCH_KIND_PARTIAL,
    MatchKind.ACTIVATION: pb.MATCH_KIND_ACTIVATION,
}


def token_to_proto(token: TokenInfo) -> pb.Token:
    msg = pb.Token(
        position=token.position,
        token_id=token.token_id,
        text=token.text,
        kind=_TOKEN_KIND_TO_PROTO[token.kind],
    )
    if token.image_index is not None:
        msg.image_index = token.image_index
    if token.image_role is not None:
        msg.image_role = _IMAGE_ROLE_TO_PROTO[token.image_role]
    if token.grid_row is not None:
        msg.grid_row = token.grid_row
    if token.grid_col is not None:
        msg.grid_col = token.grid_col
    return msg


def _token_activations(item: TokenFeatures) -> pb.TokenActivations:
    return pb.TokenActivations(
        token=token_to_proto(item.token), feature_ids=item.feature_ids, values=item.values
    )


def encode_result_to_proto(result: EncodeResult) -> pb.EncodeResponse:
    q = result.quality
    return pb.EncodeResponse(
        sae_id=result.sae_id,
        layer=result.layer,
        tokens=[_token_activations(item) for item in result.tokens],
        total_tokens=result.total_tokens,
        quality=pb.ReconstructionQuality(
            mse=q.mse, explained_variance=q.explained_variance, cosine=q.cosine
        ),
    )


def _feature_score(score: FeatureScore) -> pb.FeatureScore:
    msg = pb.FeatureScore(
        feature=score.feature,
        score=score.score,
        token_positions=score.token_positions,
        image_grids=[
            pb.ImageGrid(image_index=g.image_index, rows=g.rows, cols=g.cols, values=g.values)
            for g in score.image_grids
        ],
    )
    if score.label is not None:
        msg.label = score.label
    if score.interpretation_score is not None:
        msg.interpretation_score = score.interpretation_score
    return msg


def top_features_result_to_proto(result: TopFeaturesResult) -> pb.TopFeaturesResponse:
    return pb.TopFeaturesResponse(
        sae_id=result.sae_id,
        layer=result.layer,
        features=[_feature_score(score) for score in result.features],
        total_tokens=result.total_tokens,
    )


def _box(box: GroundedBox) -> pb.Box:
    return pb.Box(
        cropped=pb.BoxCoordinates(
            x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max
        ),
        original=pb.BoxCoordinates(
            x_min=box.original_x_min,
            y_min=box.original_y_min,
            x_max=box.original_x_max,
            y_max=box.original_y_max,
        ),
    )


def _phrase(phrase: GroundedPhrase) -> pb.GroundedPhrase:
    return pb.GroundedPhrase(text=phrase.text, boxes=[_box(box) for box in phrase.boxes])


def generation_event_to_proto(event: GenerationEvent) -> pb.GenerateSteeredResponse:
    if isinstance(event, GeneratedToken):
        return pb.GenerateSteeredResponse(
            variant_index=event.variant_index,
            token=pb.TokenChunk(position=event.position, token_id=event.token_id, text=event.text),
        )
    return pb.GenerateSteeredResponse(
        variant_index=event.variant_index,
        finished=_variant_result(event),
    )


def _variant_result(event: VariantFinished) -> pb.VariantResult:
    return pb.VariantResult(
        text=event.text,
        finish_reason=_FINISH_REASON_TO_PROTO[event.finish_reason],
        num_tokens=event.num_tokens,
        phrases=[_phrase(phrase) for phrase in event.phrases],
        parse_ok=event.parse_ok,
    )


def feature_to_proto(description: FeatureDescription) -> pb.Feature:
    msg = pb.Feature(feature=description.feature, decoder_norm=description.decoder_norm)
    interpretation = description.interpretation
    if interpretation is not None and interpretation.explanation is not None:
        msg.label = interpretation.explanation
    if interpretation is not None and interpretation.score is not None:
        msg.interpretation_score = interpretation.score
    return msg


def search_response_to_proto(result: FeatureSearchResult) -> pb.SearchFeaturesResponse:
    return pb.SearchFeaturesResponse(
        sae_id=result.sae_id,
        matches=[
            pb.FeatureMatch(
                feature=feature_to_proto(match.description),
                score=match.score,
                kind=_MATCH_KINDS[match.kind],
                token_index=match.token_index,
                token_text=match.token_text,
            )
            for match in result.matches
        ],
        suggestions=result.suggestions,
        note=result.note,
        activation_tokens=result.activation_tokens,
    )


def info_to_proto(
    model: ModelDescription,
    saes: Sequence[SaeDescription],
    config: ServerConfig,
    versions: Mapping[str, str],
    token_limits: TokenLimits,
    decode_limits: BatchLimits,
    default_sae_id: str,
) -> pb.GetInfoResponse:
    """``versions`` maps maira_sae, torch and transformers to their version strings;
    ``token_limits`` are the engine's, resolved against the model's context length;
    ``decode_limits`` are the batching settings as the accelerator's memory bounds them;
    ``default_sae_id`` is the engine's (the config's may be empty: the first SAE)."""
    limits, batching = config.limits, config.batching
    dicom = config.dicom.options()
    return pb.GetInfoResponse(
        model=pb.ModelInfo(**vars(model)),
        saes=[
            pb.SaeInfo(
                **vars(sae),
                has_interpretations=sae.num_interpretations > 0,
            )
            for sae in saes
        ],
        default_sae_id=default_sae_id,
        limits=pb.Limits(
            max_image_bytes=limits.max_image_bytes,
            max_image_pixels=limits.max_image_pixels,
            max_images=limits.max_images,
            max_text_chars=limits.max_text_chars,
            max_new_tokens=limits.max_new_tokens,
            default_max_new_tokens=limits.default_max_new_tokens,
            max_variants=limits.max_variants,
            max_interventions_per_variant=limits.max_interventions_per_variant,
            max_top_k=limits.max_top_k,
            max_abs_strength=limits.max_abs_strength,
            max_batch_size=batching.max_batch_size,
            queue_size=batching.queue_size,
            max_prompt_tokens=token_limits.max_prompt_tokens,
            max_sequence_tokens=token_limits.max_sequence_tokens,
            max_activation_text_tokens=token_limits.max_activation_text_tokens,
            max_token_ranges=limits.max_token_ranges,
            max_image_aspect_ratio=limits.max_image_aspect_ratio,
            image_memory_bytes=limits.image_memory_bytes,
            max_id_chars=limits.max_id_chars,
            stream_buffer_events=batching.stream_buffer_events,
            max_decode_rows=decode_limits.max_rows,
            max_kv_positions=decode_limits.max_kv_positions,
            prefill_token_budget=decode_limits.prefill_token_budget,
        ),
        versions=pb.Versions(**versions),
        dicom=pb.DicomDecoding(
            modalities=sorted(dicom.modalities or ()),
            modality_lut=True,
            voi_lut=dicom.apply_voi,
            monochrome1_inverted=True,
            description=dicom.describe(),
        ),
        admission=pb.Admission(
            long_call_tokens=batching.long_call_tokens,
            long_call_places=batching.long_call_places,
            short_call_rows=batching.short_call_rows,
            batch_weight=batching.batch_weight,
            priority_metadata_key=PRIORITY_KEY,
            max_call_seconds=batching.max_call_s,
            refusals_paced=batching.pace_refusals,
        ),
    )
