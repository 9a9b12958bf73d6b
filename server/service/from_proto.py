"""Protobuf requests -> domain requests, with the checks that need nothing but the limits.

With ``to_proto`` (domain results -> protobuf responses), the interceptors and the servicer,
the only modules that import generated code. Each
``*_from_proto`` validates as it converts and raises the domain errors of
``maira_sae.server.errors`` with the field path, the limit and the value (never request text):
INVALID_ARGUMENT for malformed input (missing image, NaN, unknown enum value, NUL in text),
OUT_OF_RANGE for a number or size past a documented range or limit. Cheap checks run before any
image is decoded. What needs the loaded SAEs (does the sae_id exist, is a feature index below
d_sae, is a direction d_model long) is the engine's to check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from google.protobuf.message import Message

from maira_sae.client.imaging.decode import (
    DecodeLimits,
    DimensionsCheck,
    ImageDecodeError,
    ImageTooLargeError,
    MediaType,
    decode_image,
)
from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from maira_sae.server.engine.types import (
    DEFAULT_TOKEN_KINDS,
    ActivationSearchRequest,
    Aggregation,
    EncodeRequest,
    GenerateRequest,
    GenerationSettings,
    PositionScope,
    ScopedIntervention,
    TokenFilter,
    TokenRange,
    TopFeaturesRequest,
    Variant,
)
from maira_sae.server.errors import InvalidArgument, OutOfRange, limit_metadata
from maira_sae.server.maira2.study import Study, Task, TaskKind
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.service.config import DicomConfig, LimitsConfig
from maira_sae.v1 import maira_sae_pb2 as pb


class DecodeImage(Protocol):
    """``decode(data, media_type, name, frame) -> pixels``; media type None means sniff the
    bytes, ``frame`` is ``Image.frame`` (None when unset). Raises ImageDecodeError for an
    unusable image. ``image_decoder(limits)`` builds the server's."""

    def __call__(
        self, data: bytes, media_type: MediaType | None, name: str, frame: int | None = None
    ) -> np.ndarray: ...


class ImageDecoder(Protocol):
    """A ``DecodeImage`` that also takes ``on_dimensions`` (see ``decode_image``)."""

    def __call__(
        self,
        data: bytes,
        media_type: MediaType | None,
        name: str,
        frame: int | None = None,
        on_dimensions: DimensionsCheck | None = None,
    ) -> np.ndarray: ...


DEFAULT_TOP_K = 20  # TopFeaturesRequest.k and SearchFeaturesRequest.limit when 0
DEFAULT_NUM_LOGITS = 10  # GetFeatureRequest.num_logits when 0
DEFAULT_NUM_NEAREST = 10  # GetFeatureRequest.num_nearest when 0

# Which server setting each image decoding limit comes from (max_side is fixed).
_IMAGE_LIMIT_SETTINGS = {
    "max_bytes": "limits.max_image_bytes",
    "max_pixels": "limits.max_image_pixels",
    "max_side": f"max side {DecodeLimits.max_side} px",
}
_IMAGE_LIMIT_NAMES = {"max_bytes": "max_image_bytes", "max_pixels": "max_image_pixels"}

T = TypeVar("T")


class EnumNames(Protocol):
    """A generated proto enum (``pb.TaskKind``): its values' names and its descriptor."""

    DESCRIPTOR: Any

    def Name(self, number: int) -> str: ...  # noqa: N802 (protobuf's name)


# Proto enum value -> domain value. UNSPECIFIED (0) is handled by the caller of _enum.
_MEDIA_TYPES = {
    pb.MEDIA_TYPE_PNG: MediaType.PNG,
    pb.MEDIA_TYPE_JPEG: MediaType.JPEG,
    pb.MEDIA_TYPE_DICOM: MediaType.DICOM,
}
_TASK_KINDS = {
    pb.TASK_KIND_FINDINGS: TaskKind.FINDINGS,
    pb.TASK_KIND_GROUNDED_FINDINGS: TaskKind.GROUNDED_FINDINGS,
    pb.TASK_KIND_PHRASE_GROUNDING: TaskKind.PHRASE_GROUNDING,
}
TOKEN_KINDS_FROM_PROTO = {
    pb.TOKEN_KIND_IMAGE_PATCH: TokenKind.IMAGE_PATCH,
    pb.TOKEN_KIND_PROMPT_TEXT: TokenKind.PROMPT_TEXT,
    pb.TOKEN_KIND_SPECIAL: TokenKind.SPECIAL,
    pb.TOKEN_KIND_RESPONSE: TokenKind.RESPONSE,
}
_STEERING_MODES = {
    pb.STEERING_MODE_ADD: SteeringMode.ADD,
    pb.STEERING_MODE_CLAMP: SteeringMode.CLAMP,
    pb.STEERING_MODE_ABLATE: SteeringMode.ABLATE,
    pb.STEERING_MODE_SCALE: SteeringMode.SCALE,
}
_POSITION_SCOPES = {
    pb.POSITION_SCOPE_ALL: PositionScope.ALL,
    pb.POSITION_SCOPE_PROMPT: PositionScope.PROMPT,
    pb.POSITION_SCOPE_GENERATED: PositionScope.GENERATED,
    pb.POSITION_SCOPE_IMAGE: PositionScope.IMAGE,
    pb.POSITION_SCOPE_TEXT: PositionScope.TEXT,
    pb.POSITION_SCOPE_RANGES: PositionScope.RANGES,
}
_AGGREGATIONS = {
    pb.AGGREGATION_MAX: Aggregation.MAX,
    pb.AGGREGATION_MEAN: Aggregation.MEAN,
    pb.AGGREGATION_SUM: Aggregation.SUM,
    pb.AGGREGATION_COUNT: Aggregation.COUNT,
}


# -------------------------------------------------------------------------------------------
# Checks


def _enum(
    value: int, table: Mapping[int, T], where: str, unspecified: T | None, names: EnumNames
) -> T:
    """A domain enum member; ``unspecified`` is what 0 means (None: 0 is rejected). Errors
    name the values (``names``: the proto enum), not their numbers."""
    if value == 0 and unspecified is not None:
        return unspecified
    if value not in table:
        known = ", ".join(names.Name(v) for v in table)
        if value == 0:
            problem, reason = "must be set", "ENUM_VALUE_REQUIRED"
        else:
            problem, reason = f"has unknown value {value}", "ENUM_VALUE_UNKNOWN"
        raise InvalidArgument(
            f"{where} {problem}; known values: {known}",
            field=where,
            reason=reason,
            metadata={"enum": names.DESCRIPTOR.full_name, "value": value, "known": known},
        )
    return table[value]


def _limit(
    value: float,
    limit: float,
    field: str,
    limit_name: str,
    measure: str = "",
    message: str | None = None,
) -> None:
    """OUT_OF_RANGE when ``value`` (``measure`` of ``field``, e.g. "the number of ") is past
    the server limit ``limit_name``; ``message`` words it otherwise."""
    if value > limit:
        raise OutOfRange(
            message or f"{measure}{field} is {value}, over limits.{limit_name} = {limit}",
            field=field,
            reason="LIMIT_EXCEEDED",
            metadata=limit_metadata(limit_name, limit, value),
        )


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(
            f"{where} must be a finite number, got {value}", field=where, reason="VALUE_NOT_FINITE"
        )
    return value


def _out_of_range(message: str, field: str, value: float, low: float, high: float) -> OutOfRange:
    """A value outside its documented range (not a server limit)."""
    return OutOfRange(
        message,
        field=field,
        reason="VALUE_OUT_OF_RANGE",
        metadata={"value": value, "min": low, "max": high},
    )


def _text(value: str, limits: LimitsConfig, where: str) -> str:
    """Text within max_text_chars and without NUL (never valid in a report, and a classic way
    to cut strings short further down)."""
    chars, limit = len(value), limits.max_text_chars
    message = f"{where} has {chars} characters, over limits.max_text_chars = {limit}"
    _limit(chars, limit, where, "max_text_chars", message=message)
    if "\x00" in value:
        raise InvalidArgument(
            f"{where} contains a NUL character", field=where, reason="TEXT_HAS_NUL"
        )
    return value


def sae_id_from_proto(value: str, limits: LimitsConfig) -> str:
    """An ``sae_id`` ("" is the default SAE), short enough to name in an error message."""
    _limit(len(value), limits.max_id_chars, "sae_id", "max_id_chars", "the length of ")
    return value


def _optional_text(msg: Message, name: str, limits: LimitsConfig, prefix: str = "") -> str | None:
    """An ``optional string`` field: None when absent (the prompt then reads "N/A")."""
    if not msg.HasField(name):
        return None
    return _text(getattr(msg, name), limits, f"{prefix}{name}")


def _ranges(
    msgs: Sequence[pb.TokenRange], limits: LimitsConfig, where: str
) -> tuple[TokenRange, ...]:
    _limit(len(msgs), limits.max_token_ranges, where, "max_token_ranges", "the number of ")
    for i, r in enumerate(msgs):
        if r.start >= r.end:
            raise InvalidArgument(
                f"{where}[{i}] is empty: start {r.start} must be below end {r.end} (half-open)",
                field=f"{where}[{i}]",
                reason="TOKEN_RANGE_EMPTY",
            )
    return tuple(TokenRange(r.start, r.end) for r in msgs)


# -------------------------------------------------------------------------------------------
# Requests


def study_from_proto(msg: pb.Study, limits: LimitsConfig, decode: DecodeImage) -> Study:
    """Checks every field, then decodes the images (the expensive part) in prompt order."""
    texts = {
        name: _optional_text(msg, name, limits, prefix="study.")
        for name in ("indication", "technique", "comparison", "prior_report")
    }
    if not msg.HasField("frontal"):
        raise InvalidArgument(
            "study.frontal is required: the current frontal image",
            field="study.frontal",
            reason="FIELD_REQUIRED",
        )
    present = [name for name in ("frontal", "lateral", "prior") if msg.HasField(name)]
    _limit(
        len(present),
        limits.max_images,
        "study",
        "max_images",
        message=f"the number of images is {len(present)}, over limits.max_images = "
        f"{limits.max_images}",
    )
    media_types = {name: _checked_image(getattr(msg, name), limits, name) for name in present}
    pixels = {}
    for name, media_type in media_types.items():
        image = getattr(msg, name)
        frame = image.frame if image.HasField("frame") else None
        try:
            pixels[name] = decode(image.data, media_type, f"study.{name}", frame)
        except ImageTooLargeError as err:
            setting = _IMAGE_LIMIT_SETTINGS.get(err.limit, err.limit)
            raise OutOfRange(
                f"{err} (server limit {setting})",
                field=f"study.{name}",
                reason="IMAGE_TOO_LARGE",
                # a field of Limits, or the decoder's fixed bound ("max_side")
                metadata={"limit": _IMAGE_LIMIT_NAMES.get(err.limit, err.limit)},
            ) from err
        except ImageDecodeError as err:
            raise InvalidArgument(
                str(err), field=f"study.{name}", reason="IMAGE_UNDECODABLE"
            ) from err
        _check_aspect_ratio(pixels[name], limits, f"study.{name}")
    return Study(
        frontal=pixels["frontal"], lateral=pixels.get("lateral"), prior=pixels.get("prior"), **texts
    )


def _check_aspect_ratio(pixels: np.ndarray, limits: LimitsConfig, where: str) -> None:
    """Resizing scales the short side to the model's size: a thin strip would grow huge."""
    height, width = pixels.shape[:2]
    ratio = max(height, width) / max(min(height, width), 1)
    if ratio > limits.max_image_aspect_ratio:
        raise OutOfRange(
            f"{where} is {width}x{height}, an aspect ratio of {ratio:.4g}, over "
            f"limits.max_image_aspect_ratio = {limits.max_image_aspect_ratio:g}",
            field=where,
            reason="LIMIT_EXCEEDED",
            metadata=limit_metadata(
                "max_image_aspect_ratio", limits.max_image_aspect_ratio, f"{ratio:.4g}"
            ),
        )


def _checked_image(image: pb.Image, limits: LimitsConfig, name: str) -> MediaType | None:
    """Checks the bytes' size and returns the declared media type (None: sniff)."""
    if not image.data:
        raise InvalidArgument(
            f"study.{name}.data is empty; leave study.{name} unset instead",
            field=f"study.{name}.data",
            reason="IMAGE_EMPTY",
        )
    _limit(
        len(image.data),
        limits.max_image_bytes,
        f"study.{name}.data",
        "max_image_bytes",
        message=f"study.{name}.data is {len(image.data)} bytes, over limits.max_image_bytes = "
        f"{limits.max_image_bytes}",
    )
    if image.media_type == pb.MEDIA_TYPE_UNSPECIFIED:
        return None
    where = f"study.{name}.media_type"
    return _enum(image.media_type, _MEDIA_TYPES, where, unspecified=None, names=pb.MediaType)


def image_decoder(limits: LimitsConfig, dicom: DicomConfig | None = None) -> ImageDecoder:
    """The server's decoder: ``maira_sae.client.imaging.decode.decode_image`` under these limits and
    DICOM settings (default: ``DicomConfig()``)."""
    decode_limits = DecodeLimits(
        max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels
    )
    dicom_options = (dicom or DicomConfig()).options()

    def decode(
        data: bytes,
        media_type: MediaType | None,
        name: str,
        frame: int | None = None,
        on_dimensions: DimensionsCheck | None = None,
    ) -> np.ndarray:
        return decode_image(
            data,
            media_type,
            name=name,
            limits=decode_limits,
            dicom=dicom_options.with_frame(frame),
            on_dimensions=on_dimensions,
        )

    return decode


def task_from_proto(msg: pb.Task, limits: LimitsConfig) -> Task:
    kind = _enum(msg.kind, _TASK_KINDS, "task.kind", TaskKind.FINDINGS, names=pb.TaskKind)
    phrase = _text(msg.phrase, limits, "task.phrase")
    if kind is TaskKind.PHRASE_GROUNDING and not phrase.strip():
        raise InvalidArgument(
            "task.phrase is required for TASK_KIND_PHRASE_GROUNDING",
            field="task.phrase",
            reason="FIELD_REQUIRED",
        )
    if kind is not TaskKind.PHRASE_GROUNDING and phrase:
        raise InvalidArgument(
            "task.phrase is only used by TASK_KIND_PHRASE_GROUNDING; leave it empty",
            field="task.phrase",
            reason="FIELD_NOT_ALLOWED",
        )
    return Task(kind=kind, phrase=phrase or None)


def token_filter_from_proto(msg: pb.TokenFilter, limits: LimitsConfig) -> TokenFilter:
    kinds = frozenset(
        _enum(kind, TOKEN_KINDS_FROM_PROTO, f"token_filter.kinds[{i}]", None, pb.TokenKind)
        for i, kind in enumerate(msg.kinds)
    )
    for i, index in enumerate(msg.image_indices):
        if index >= limits.max_images:
            raise _out_of_range(
                f"token_filter.image_indices[{i}] is {index}; images are numbered 0.."
                f"{limits.max_images - 1}",
                f"token_filter.image_indices[{i}]",
                index,
                0,
                limits.max_images - 1,
            )
    return TokenFilter(
        kinds=kinds or DEFAULT_TOKEN_KINDS,
        image_indices=frozenset(msg.image_indices) or None,
        ranges=_ranges(msg.ranges, limits, "token_filter.ranges"),
    )


def encode_request_from_proto(
    msg: pb.EncodeRequest, limits: LimitsConfig, decode: DecodeImage
) -> EncodeRequest:
    _limit(msg.top_k_per_token, limits.max_top_k, "top_k_per_token", "max_top_k")
    return EncodeRequest(
        **_analysis_fields(msg, limits, decode), top_k_per_token=msg.top_k_per_token
    )


def top_features_request_from_proto(
    msg: pb.TopFeaturesRequest, limits: LimitsConfig, decode: DecodeImage
) -> TopFeaturesRequest:
    _limit(msg.k, limits.max_top_k, "k", "max_top_k")
    aggregation = _enum(
        msg.aggregation, _AGGREGATIONS, "aggregation", Aggregation.MAX, names=pb.Aggregation
    )
    return TopFeaturesRequest(
        **_analysis_fields(msg, limits, decode),
        aggregation=aggregation,
        k=msg.k or DEFAULT_TOP_K,
        labelled_only=msg.labelled_only,
    )


def _analysis_fields(
    msg: pb.EncodeRequest | pb.TopFeaturesRequest, limits: LimitsConfig, decode: DecodeImage
) -> dict[str, Any]:
    """What Encode and TopFeatures requests share; the study last, so that a request that is
    wrong elsewhere is refused before its images are decoded."""
    return {
        "task": task_from_proto(msg.task, limits),
        "response": _optional_text(msg, "response", limits),
        "sae_id": sae_id_from_proto(msg.sae_id, limits),
        "token_filter": token_filter_from_proto(msg.token_filter, limits),
        "matryoshka_level": msg.matryoshka_level or None,
        "study": study_from_proto(msg.study, limits, decode),
    }


def settings_from_proto(msg: pb.GenerationSettings, limits: LimitsConfig) -> GenerationSettings:
    """0 means the default for max_new_tokens (limits.default_max_new_tokens) and top_p (1.0);
    temperature 0 is greedy."""
    _limit(msg.max_new_tokens, limits.max_new_tokens, "settings.max_new_tokens", "max_new_tokens")
    temperature = _finite(msg.temperature, "settings.temperature")
    if temperature != 0 and not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise _out_of_range(
            f"settings.temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, "
            f"{MAX_TEMPERATURE:g}], got {temperature:g}",
            "settings.temperature",
            temperature,
            MIN_TEMPERATURE,
            MAX_TEMPERATURE,
        )
    top_p = _finite(msg.top_p, "settings.top_p") or 1.0
    if not 0 < top_p <= 1:
        raise _out_of_range(
            f"settings.top_p must be in (0, 1] (0 means 1.0), got {top_p}",
            "settings.top_p",
            top_p,
            0,
            1,
        )
    return GenerationSettings(
        max_new_tokens=msg.max_new_tokens or limits.default_max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=msg.seed,
    )


def intervention_from_proto(
    msg: pb.Intervention, limits: LimitsConfig, where: str
) -> ScopedIntervention:
    mode = _enum(msg.mode, _STEERING_MODES, f"{where}.mode", None, names=pb.SteeringMode)
    value = _finite(msg.value, f"{where}.value")
    _limit(
        abs(value),
        limits.max_abs_strength,
        f"{where}.value",
        "max_abs_strength",
        message=f"{where}.value is {value}, over limits.max_abs_strength = "
        f"{limits.max_abs_strength} in absolute value",
    )
    scope = _enum(
        msg.scope, _POSITION_SCOPES, f"{where}.scope", PositionScope.ALL, names=pb.PositionScope
    )
    ranges = _ranges(msg.ranges, limits, f"{where}.ranges")
    if (scope is PositionScope.RANGES) != bool(ranges):
        raise InvalidArgument(
            f"{where}.ranges must be set exactly when scope is POSITION_SCOPE_RANGES",
            field=f"{where}.ranges",
            reason="FIELD_REQUIRED" if not ranges else "FIELD_NOT_ALLOWED",
        )
    target = msg.WhichOneof("target")
    if target is None:
        raise InvalidArgument(
            f"{where} needs a target: set feature or direction",
            field=f"{where}.target",
            reason="FIELD_REQUIRED",
        )
    if target == "feature":
        intervention = Intervention(mode=mode, value=value, feature=msg.feature)
    else:
        intervention = Intervention(mode=mode, value=value, direction=_direction(msg.direction))
    return ScopedIntervention(intervention=intervention, scope=scope, ranges=ranges)


def _direction(msg: pb.Direction) -> torch.Tensor:
    """Its length, finiteness and norm are checked once, against the SAE (``check_generate``)."""
    return torch.tensor(msg.values, dtype=torch.float32)


def variant_from_proto(msg: pb.Variant, limits: LimitsConfig, where: str) -> Variant:
    _limit(
        len(msg.interventions),
        limits.max_interventions_per_variant,
        f"{where}.interventions",
        "max_interventions_per_variant",
        "the number of ",
    )
    return Variant(
        interventions=tuple(
            intervention_from_proto(item, limits, f"{where}.interventions[{i}]")
            for i, item in enumerate(msg.interventions)
        ),
        name=_text(msg.name, limits, f"{where}.name"),
    )


def generate_request_from_proto(
    msg: pb.GenerateSteeredRequest, limits: LimitsConfig, decode: DecodeImage
) -> GenerateRequest:
    """No variants means one baseline variant."""
    _limit(len(msg.variants), limits.max_variants, "variants", "max_variants", "the number of ")
    variants = tuple(
        variant_from_proto(v, limits, f"variants[{i}]") for i, v in enumerate(msg.variants)
    )
    return GenerateRequest(
        task=task_from_proto(msg.task, limits),
        settings=settings_from_proto(msg.settings, limits),
        variants=variants or (Variant(),),
        sae_id=sae_id_from_proto(msg.sae_id, limits),
        study=study_from_proto(msg.study, limits, decode),
    )


class SearchQuery(NamedTuple):
    sae_id: str
    query: str
    limit: int


class FeatureQuery(NamedTuple):
    sae_id: str
    feature: int
    num_logits: int
    decoder_row: bool
    num_nearest: int = DEFAULT_NUM_NEAREST


def feature_query_from_proto(msg: pb.GetFeatureRequest, limits: LimitsConfig) -> FeatureQuery:
    _limit(msg.num_logits, limits.max_top_k, "num_logits", "max_top_k")
    _limit(msg.num_nearest, limits.max_top_k, "num_nearest", "max_top_k")
    return FeatureQuery(
        sae_id=sae_id_from_proto(msg.sae_id, limits),
        feature=msg.feature,
        num_logits=msg.num_logits or DEFAULT_NUM_LOGITS,
        decoder_row=msg.include_decoder_row,
        num_nearest=msg.num_nearest or DEFAULT_NUM_NEAREST,
    )


def search_query_from_proto(
    msg: pb.SearchFeaturesRequest, limits: LimitsConfig
) -> SearchQuery | ActivationSearchRequest:
    """A text search, or with ``activation_text`` a search by activation (exactly one)."""
    query = _text(msg.query, limits, "query")
    text = _text(msg.activation_text, limits, "activation_text")
    if msg.query and msg.activation_text:
        raise InvalidArgument(
            "set query (words to look for in feature labels) or activation_text (a text to run "
            "through the model), not both",
            field="activation_text",
            reason="FIELD_NOT_ALLOWED",
        )
    _limit(msg.limit, limits.max_top_k, "limit", "max_top_k")
    sae_id, limit = sae_id_from_proto(msg.sae_id, limits), msg.limit or DEFAULT_TOP_K
    if msg.activation_text:
        if not text.strip():
            raise InvalidArgument(
                "activation_text is blank: give a text to run through the model",
                field="activation_text",
                reason="FIELD_REQUIRED",
            )
        return ActivationSearchRequest(text=text, limit=limit, sae_id=sae_id)
    if not query.strip():
        raise InvalidArgument(
            "query is required: words to look for in feature labels (or activation_text: a "
            "text whose strongest features are wanted)",
            field="query",
            reason="FIELD_REQUIRED",
        )
    return SearchQuery(sae_id, query, limit)
