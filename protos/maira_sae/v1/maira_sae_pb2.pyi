from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MediaType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDIA_TYPE_UNSPECIFIED: _ClassVar[MediaType]
    MEDIA_TYPE_PNG: _ClassVar[MediaType]
    MEDIA_TYPE_JPEG: _ClassVar[MediaType]
    MEDIA_TYPE_DICOM: _ClassVar[MediaType]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_FINDINGS: _ClassVar[TaskKind]
    TASK_KIND_GROUNDED_FINDINGS: _ClassVar[TaskKind]
    TASK_KIND_PHRASE_GROUNDING: _ClassVar[TaskKind]

class TokenKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_KIND_UNSPECIFIED: _ClassVar[TokenKind]
    TOKEN_KIND_IMAGE_PATCH: _ClassVar[TokenKind]
    TOKEN_KIND_PROMPT_TEXT: _ClassVar[TokenKind]
    TOKEN_KIND_SPECIAL: _ClassVar[TokenKind]
    TOKEN_KIND_RESPONSE: _ClassVar[TokenKind]

class SteeringMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEERING_MODE_UNSPECIFIED: _ClassVar[SteeringMode]
    STEERING_MODE_ADD: _ClassVar[SteeringMode]
    STEERING_MODE_CLAMP: _ClassVar[SteeringMode]
    STEERING_MODE_ABLATE: _ClassVar[SteeringMode]
    STEERING_MODE_SCALE: _ClassVar[SteeringMode]

class PositionScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSITION_SCOPE_UNSPECIFIED: _ClassVar[PositionScope]
    POSITION_SCOPE_ALL: _ClassVar[PositionScope]
    POSITION_SCOPE_PROMPT: _ClassVar[PositionScope]
    POSITION_SCOPE_GENERATED: _ClassVar[PositionScope]
    POSITION_SCOPE_IMAGE: _ClassVar[PositionScope]
    POSITION_SCOPE_TEXT: _ClassVar[PositionScope]
    POSITION_SCOPE_RANGES: _ClassVar[PositionScope]

class ImageRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ROLE_UNSPECIFIED: _ClassVar[ImageRole]
    IMAGE_ROLE_FRONTAL: _ClassVar[ImageRole]
    IMAGE_ROLE_LATERAL: _ClassVar[ImageRole]
    IMAGE_ROLE_PRIOR: _ClassVar[ImageRole]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_MEAN: _ClassVar[Aggregation]
    AGGREGATION_SUM: _ClassVar[Aggregation]
    AGGREGATION_COUNT: _ClassVar[Aggregation]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]

class MatchKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCH_KIND_UNSPECIFIED: _ClassVar[MatchKind]
    MATCH_KIND_EXACT: _ClassVar[MatchKind]
    MATCH_KIND_PHRASE: _ClassVar[MatchKind]
    MATCH_KIND_PARTIAL: _ClassVar[MatchKind]
    MATCH_KIND_ACTIVATION: _ClassVar[MatchKind]
MEDIA_TYPE_UNSPECIFIED: MediaType
MEDIA_TYPE_PNG: MediaType
MEDIA_TYPE_JPEG: MediaType
MEDIA_TYPE_DICOM: MediaType
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_FINDINGS: TaskKind
TASK_KIND_GROUNDED_FINDINGS: TaskKind
TASK_KIND_PHRASE_GROUNDING: TaskKind
TOKEN_KIND_UNSPECIFIED: TokenKind
TOKEN_KIND_IMAGE_PATCH: TokenKind
TOKEN_KIND_PROMPT_TEXT: TokenKind
TOKEN_KIND_SPECIAL: TokenKind
TOKEN_KIND_RESPONSE: TokenKind
STEERING_MODE_UNSPECIFIED: SteeringMode
STEERING_MODE_ADD: SteeringMode
STEERING_MODE_CLAMP: SteeringMode
STEERING_MODE_ABLATE: SteeringMode
STEERING_MODE_SCALE: SteeringMode
POSITION_SCOPE_UNSPECIFIED: PositionScope
POSITION_SCOPE_ALL: PositionScope
POSITION_SCOPE_PROMPT: PositionScope
POSITION_SCOPE_GENERATED: PositionScope
POSITION_SCOPE_IMAGE: PositionScope
POSITION_SCOPE_TEXT: PositionScope
POSITION_SCOPE_RANGES: PositionScope
IMAGE_ROLE_UNSPECIFIED: ImageRole
IMAGE_ROLE_FRONTAL: ImageRole
IMAGE_ROLE_LATERAL: ImageRole
IMAGE_ROLE_PRIOR: ImageRole
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_MEAN: Aggregation
AGGREGATION_SUM: Aggregation
AGGREGATION_COUNT: Aggregation
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
MATCH_KIND_UNSPECIFIED: MatchKind
MATCH_KIND_EXACT: MatchKind
MATCH_KIND_PHRASE: MatchKind
MATCH_KIND_PARTIAL: MatchKind
MATCH_KIND_ACTIVATION: MatchKind

class Image(_message.Message):
    __slots__ = ("data", "media_type", "frame")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: MediaType
    frame: int
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[_Union[MediaType, str]] = ..., frame: _Optional[int] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("frontal", "lateral", "prior", "indication", "technique", "comparison", "prior_report")
    FRONTAL_FIELD_NUMBER: _ClassVar[int]
    LATERAL_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    INDICATION_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    PRIOR_REPORT_FIELD_NUMBER: _ClassVar[int]
    frontal: Image
    lateral: Image
    prior: Image
    indication: str
    technique: str
    comparison: str
    prior_report: str
    def __init__(self, frontal: _Optional[_Union[Image, _Mapping]] = ..., lateral: _Optional[_Union[Image, _Mapping]] = ..., prior: _Optional[_Union[Image, _Mapping]] = ..., indication: _Optional[str] = ..., technique: _Optional[str] = ..., comparison: _Optional[str] = ..., prior_report: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "phrase")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    phrase: str
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., phrase: _Optional[str] = ...) -> None: ...

class TokenRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class TokenFilter(_message.Message):
    __slots__ = ("kinds", "image_indices", "ranges")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDICES_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[TokenKind]
    image_indices: _containers.RepeatedScalarFieldContainer[int]
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    def __init__(self, kinds: _Optional[_Iterable[_Union[TokenKind, str]]] = ..., image_indices: _Optional[_Iterable[int]] = ..., ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ...) -> None: ...

class Direction(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("feature", "direction", "mode", "value", "scope", "ranges")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    feature: int
    direction: Direction
    mode: SteeringMode
    value: float
    scope: PositionScope
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    def __init__(self, feature: _Optional[int] = ..., direction: _Optional[_Union[Direction, _Mapping]] = ..., mode: _Optional[_Union[SteeringMode, str]] = ..., value: _Optional[float] = ..., scope: _Optional[_Union[PositionScope, str]] = ..., ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "interventions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    interventions: _containers.RepeatedCompositeFieldContainer[Intervention]
    def __init__(self, name: _Optional[str] = ..., interventions: _Optional[_Iterable[_Union[Intervention, _Mapping]]] = ...) -> None: ...

class GenerationSettings(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "seed")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("study", "task", "response", "sae_id", "token_filter", "top_k_per_token", "matryoshka_level")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FILTER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MATRYOSHKA_LEVEL_FIELD_NUMBER: _ClassVar[int]
    study: Study
    task: Task
    response: str
    sae_id: str
    token_filter: TokenFilter
    top_k_per_token: int
    matryoshka_level: int
    def __init__(self, study: _Optional[_Union[Study, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., response: _Optional[str] = ..., sae_id: _Optional[str] = ..., token_filter: _Optional[_Union[TokenFilter, _Mapping]] = ..., top_k_per_token: _Optional[int] = ..., matryoshka_level: _Optional[int] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("position", "token_id", "text", "kind", "image_index", "image_role", "grid_row", "grid_col")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ROLE_FIELD_NUMBER: _ClassVar[int]
    GRID_ROW_FIELD_NUMBER: _ClassVar[int]
    GRID_COL_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    text: str
    kind: TokenKind
    image_index: int
    image_role: ImageRole
    grid_row: int
    grid_col: int
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., text: _Optional[str] = ..., kind: _Optional[_Union[TokenKind, str]] = ..., image_index: _Optional[int] = ..., image_role: _Optional[_Union[ImageRole, str]] = ..., grid_row: _Optional[int] = ..., grid_col: _Optional[int] = ...) -> None: ...

class TokenActivations(_message.Message):
    __slots__ = ("token", "feature_ids", "values")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    token: Token
    feature_ids: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., feature_ids: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ReconstructionQuality(_message.Message):
    __slots__ = ("mse", "explained_variance", "cosine")
    MSE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    mse: float
    explained_variance: float
    cosine: float
    def __init__(self, mse: _Optional[float] = ..., explained_variance: _Optional[float] = ..., cosine: _Optional[float] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("sae_id", "layer", "tokens", "total_tokens", "quality")
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    sae_id: str
    layer: int
    tokens: _containers.RepeatedCompositeFieldContainer[TokenActivations]
    total_tokens: int
    quality: ReconstructionQuality
    def __init__(self, sae_id: _Optional[str] = ..., layer: _Optional[int] = ..., tokens: _Optional[_Iterable[_Union[TokenActivations, _Mapping]]] = ..., total_tokens: _Optional[int] = ..., quality: _Optional[_Union[ReconstructionQuality, _Mapping]] = ...) -> None: ...

class TopFeaturesRequest(_message.Message):
    __slots__ = ("study", "task", "response", "sae_id", "aggregation", "token_filter", "k", "labelled_only", "matryoshka_level")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FILTER_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    LABELLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    MATRYOSHKA_LEVEL_FIELD_NUMBER: _ClassVar[int]
    study: Study
    task: Task
    response: str
    sae_id: str
    aggregation: Aggregation
    token_filter: TokenFilter
    k: int
    labelled_only: bool
    matryoshka_level: int
    def __init__(self, study: _Optional[_Union[Study, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., response: _Optional[str] = ..., sae_id: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., token_filter: _Optional[_Union[TokenFilter, _Mapping]] = ..., k: _Optional[int] = ..., labelled_only: _Optional[bool] = ..., matryoshka_level: _Optional[int] = ...) -> None: ...

class ImageGrid(_message.Message):
    __slots__ = ("image_index", "rows", "cols", "values")
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    image_index: int
    rows: int
    cols: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, image_index: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class FeatureScore(_message.Message):
    __slots__ = ("feature", "score", "label", "interpretation_score", "token_positions", "image_grids")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INTERPRETATION_SCORE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GRIDS_FIELD_NUMBER: _ClassVar[int]
    feature: int
    score: float
    label: str
    interpretation_score: float
    token_positions: _containers.RepeatedScalarFieldContainer[int]
    image_grids: _containers.RepeatedCompositeFieldContainer[ImageGrid]
    def __init__(self, feature: _Optional[int] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., interpretation_score: _Optional[float] = ..., token_positions: _Optional[_Iterable[int]] = ..., image_grids: _Optional[_Iterable[_Union[ImageGrid, _Mapping]]] = ...) -> None: ...

class TopFeaturesResponse(_message.Message):
    __slots__ = ("sae_id", "layer", "features", "total_tokens")
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    sae_id: str
    layer: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureScore]
    total_tokens: int
    def __init__(self, sae_id: _Optional[str] = ..., layer: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureScore, _Mapping]]] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class GenerateSteeredRequest(_message.Message):
    __slots__ = ("study", "task", "settings", "variants", "sae_id")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    study: Study
    task: Task
    settings: GenerationSettings
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    sae_id: str
    def __init__(self, study: _Optional[_Union[Study, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., settings: _Optional[_Union[GenerationSettings, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., sae_id: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("position", "token_id", "text")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    text: str
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("cropped", "original")
    CROPPED_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    cropped: BoxCoordinates
    original: BoxCoordinates
    def __init__(self, cropped: _Optional[_Union[BoxCoordinates, _Mapping]] = ..., original: _Optional[_Union[BoxCoordinates, _Mapping]] = ...) -> None: ...

class BoxCoordinates(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class GroundedPhrase(_message.Message):
    __slots__ = ("text", "boxes")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    text: str
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    def __init__(self, text: _Optional[str] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ...) -> None: ...

class VariantResult(_message.Message):
    __slots__ = ("text", "finish_reason", "num_tokens", "phrases", "parse_ok")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PHRASES_FIELD_NUMBER: _ClassVar[int]
    PARSE_OK_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: FinishReason
    num_tokens: int
    phrases: _containers.RepeatedCompositeFieldContainer[GroundedPhrase]
    parse_ok: bool
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., num_tokens: _Optional[int] = ..., phrases: _Optional[_Iterable[_Union[GroundedPhrase, _Mapping]]] = ..., parse_ok: _Optional[bool] = ...) -> None: ...

class GenerateSteeredResponse(_message.Message):
    __slots__ = ("variant_index", "token", "finished")
    VARIANT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    variant_index: int
    token: TokenChunk
    finished: VariantResult
    def __init__(self, variant_index: _Optional[int] = ..., token: _Optional[_Union[TokenChunk, _Mapping]] = ..., finished: _Optional[_Union[VariantResult, _Mapping]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "path", "dtype", "device", "num_layers", "hidden_size", "image_tokens_per_image", "patch_grid_rows", "patch_grid_cols", "demo", "image_features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PATCH_GRID_ROWS_FIELD_NUMBER: _ClassVar[int]
    PATCH_GRID_COLS_FIELD_NUMBER: _ClassVar[int]
    DEMO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    dtype: str
    device: str
    num_layers: int
    hidden_size: int
    image_tokens_per_image: int
    patch_grid_rows: int
    patch_grid_cols: int
    demo: bool
    image_features: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., image_tokens_per_image: _Optional[int] = ..., patch_grid_rows: _Optional[int] = ..., patch_grid_cols: _Optional[int] = ..., demo: _Optional[bool] = ..., image_features: _Optional[str] = ...) -> None: ...

class SaeInfo(_message.Message):
    __slots__ = ("id", "layer", "hook_point", "d_model", "d_sae", "group_sizes", "has_interpretations", "num_interpretations", "source_format")
    ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    D_SAE_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZES_FIELD_NUMBER: _ClassVar[int]
    HAS_INTERPRETATIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_INTERPRETATIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    layer: int
    hook_point: str
    d_model: int
    d_sae: int
    group_sizes: _containers.RepeatedScalarFieldContainer[int]
    has_interpretations: bool
    num_interpretations: int
    source_format: str
    def __init__(self, id: _Optional[str] = ..., layer: _Optional[int] = ..., hook_point: _Optional[str] = ..., d_model: _Optional[int] = ..., d_sae: _Optional[int] = ..., group_sizes: _Optional[_Iterable[int]] = ..., has_interpretations: _Optional[bool] = ..., num_interpretations: _Optional[int] = ..., source_format: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_image_bytes", "max_image_pixels", "max_images", "max_text_chars", "max_new_tokens", "default_max_new_tokens", "max_variants", "max_interventions_per_variant", "max_top_k", "max_abs_strength", "max_batch_size", "queue_size", "max_prompt_tokens", "max_sequence_tokens", "max_token_ranges", "max_image_aspect_ratio", "image_memory_bytes", "max_id_chars", "stream_buffer_events", "max_decode_rows", "max_kv_positions", "prefill_token_budget", "max_activation_text_tokens")
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERVENTIONS_PER_VARIANT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKEN_RANGES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ID_CHARS_FIELD_NUMBER: _ClassVar[int]
    STREAM_BUFFER_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DECODE_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_KV_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_image_bytes: int
    max_image_pixels: int
    max_images: int
    max_text_chars: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_variants: int
    max_interventions_per_variant: int
    max_top_k: int
    max_abs_strength: float
    max_batch_size: int
    queue_size: int
    max_prompt_tokens: int
    max_sequence_tokens: int
    max_token_ranges: int
    max_image_aspect_ratio: float
    image_memory_bytes: int
    max_id_chars: int
    stream_buffer_events: int
    max_decode_rows: int
    max_kv_positions: int
    prefill_token_budget: int
    max_activation_text_tokens: int
    def __init__(self, max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_images: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., default_max_new_tokens: _Optional[int] = ..., max_variants: _Optional[int] = ..., max_interventions_per_variant: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_abs_strength: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., queue_size: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_sequence_tokens: _Optional[int] = ..., max_token_ranges: _Optional[int] = ..., max_image_aspect_ratio: _Optional[float] = ..., image_memory_bytes: _Optional[int] = ..., max_id_chars: _Optional[int] = ..., stream_buffer_events: _Optional[int] = ..., max_decode_rows: _Optional[int] = ..., max_kv_positions: _Optional[int] = ..., prefill_token_budget: _Optional[int] = ..., max_activation_text_tokens: _Optional[int] = ...) -> None: ...

class Versions(_message.Message):
    __slots__ = ("maira_sae", "torch", "transformers")
    MAIRA_SAE_FIELD_NUMBER: _ClassVar[int]
    TORCH_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMERS_FIELD_NUMBER: _ClassVar[int]
    maira_sae: str
    torch: str
    transformers: str
    def __init__(self, maira_sae: _Optional[str] = ..., torch: _Optional[str] = ..., transformers: _Optional[str] = ...) -> None: ...

class DicomDecoding(_message.Message):
    __slots__ = ("modalities", "modality_lut", "voi_lut", "monochrome1_inverted", "description")
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    MODALITY_LUT_FIELD_NUMBER: _ClassVar[int]
    VOI_LUT_FIELD_NUMBER: _ClassVar[int]
    MONOCHROME1_INVERTED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedScalarFieldContainer[str]
    modality_lut: bool
    voi_lut: bool
    monochrome1_inverted: bool
    description: str
    def __init__(self, modalities: _Optional[_Iterable[str]] = ..., modality_lut: _Optional[bool] = ..., voi_lut: _Optional[bool] = ..., monochrome1_inverted: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class Admission(_message.Message):
    __slots__ = ("long_call_tokens", "long_call_places", "short_call_rows", "batch_weight", "priority_metadata_key", "max_call_seconds", "refusals_paced")
    LONG_CALL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LONG_CALL_PLACES_FIELD_NUMBER: _ClassVar[int]
    SHORT_CALL_ROWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_METADATA_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_PACED_FIELD_NUMBER: _ClassVar[int]
    long_call_tokens: int
    long_call_places: int
    short_call_rows: int
    batch_weight: float
    priority_metadata_key: str
    max_call_seconds: float
    refusals_paced: bool
    def __init__(self, long_call_tokens: _Optional[int] = ..., long_call_places: _Optional[int] = ..., short_call_rows: _Optional[int] = ..., batch_weight: _Optional[float] = ..., priority_metadata_key: _Optional[str] = ..., max_call_seconds: _Optional[float] = ..., refusals_paced: _Optional[bool] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("model", "saes", "default_sae_id", "limits", "versions", "dicom", "admission")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    saes: _containers.RepeatedCompositeFieldContainer[SaeInfo]
    default_sae_id: str
    limits: Limits
    versions: Versions
    dicom: DicomDecoding
    admission: Admission
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., saes: _Optional[_Iterable[_Union[SaeInfo, _Mapping]]] = ..., default_sae_id: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., versions: _Optional[_Union[Versions, _Mapping]] = ..., dicom: _Optional[_Union[DicomDecoding, _Mapping]] = ..., admission: _Optional[_Union[Admission, _Mapping]] = ...) -> None: ...

class GetFeatureRequest(_message.Message):
    __slots__ = ("sae_id", "feature", "include_decoder_row", "num_logits", "num_nearest")
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DECODER_ROW_FIELD_NUMBER: _ClassVar[int]
    NUM_LOGITS_FIELD_NUMBER: _ClassVar[int]
    NUM_NEAREST_FIELD_NUMBER: _ClassVar[int]
    sae_id: str
    feature: int
    include_decoder_row: bool
    num_logits: int
    num_nearest: int
    def __init__(self, sae_id: _Optional[str] = ..., feature: _Optional[int] = ..., include_decoder_row: _Optional[bool] = ..., num_logits: _Optional[int] = ..., num_nearest: _Optional[int] = ...) -> None: ...

class GetFeatureResponse(_message.Message):
    __slots__ = ("feature",)
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    feature: Feature
    def __init__(self, feature: _Optional[_Union[Feature, _Mapping]] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("feature", "label", "interpretation_score", "decoder_norm", "dashboard", "has_dashboard", "dashboard_note", "promoted_tokens", "suppressed_tokens", "decoder_row", "provenance", "nearest_features")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INTERPRETATION_SCORE_FIELD_NUMBER: _ClassVar[int]
    DECODER_NORM_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_FIELD_NUMBER: _ClassVar[int]
    HAS_DASHBOARD_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_NOTE_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODER_ROW_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    feature: int
    label: str
    interpretation_score: float
    decoder_norm: float
    dashboard: FeatureDashboard
    has_dashboard: bool
    dashboard_note: str
    promoted_tokens: _containers.RepeatedCompositeFieldContainer[TokenLogit]
    suppressed_tokens: _containers.RepeatedCompositeFieldContainer[TokenLogit]
    decoder_row: _containers.RepeatedScalarFieldContainer[float]
    provenance: InterpretationProvenance
    nearest_features: _containers.RepeatedCompositeFieldContainer[NearestFeature]
    def __init__(self, feature: _Optional[int] = ..., label: _Optional[str] = ..., interpretation_score: _Optional[float] = ..., decoder_norm: _Optional[float] = ..., dashboard: _Optional[_Union[FeatureDashboard, _Mapping]] = ..., has_dashboard: _Optional[bool] = ..., dashboard_note: _Optional[str] = ..., promoted_tokens: _Optional[_Iterable[_Union[TokenLogit, _Mapping]]] = ..., suppressed_tokens: _Optional[_Iterable[_Union[TokenLogit, _Mapping]]] = ..., decoder_row: _Optional[_Iterable[float]] = ..., provenance: _Optional[_Union[InterpretationProvenance, _Mapping]] = ..., nearest_features: _Optional[_Iterable[_Union[NearestFeature, _Mapping]]] = ...) -> None: ...

class InterpretationProvenance(_message.Message):
    __slots__ = ("explainer", "explainer_model", "scorer", "num_activating", "num_non_activating", "auroc", "balanced_accuracy", "concept_auroc", "created")
    EXPLAINER_FIELD_NUMBER: _ClassVar[int]
    EXPLAINER_MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIVATING_FIELD_NUMBER: _ClassVar[int]
    NUM_NON_ACTIVATING_FIELD_NUMBER: _ClassVar[int]
    AUROC_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_AUROC_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    explainer: str
    explainer_model: str
    scorer: str
    num_activating: int
    num_non_activating: int
    auroc: float
    balanced_accuracy: float
    concept_auroc: float
    created: str
    def __init__(self, explainer: _Optional[str] = ..., explainer_model: _Optional[str] = ..., scorer: _Optional[str] = ..., num_activating: _Optional[int] = ..., num_non_activating: _Optional[int] = ..., auroc: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., concept_auroc: _Optional[float] = ..., created: _Optional[str] = ...) -> None: ...

class NearestFeature(_message.Message):
    __slots__ = ("feature", "cosine", "label", "interpretation_score")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INTERPRETATION_SCORE_FIELD_NUMBER: _ClassVar[int]
    feature: int
    cosine: float
    label: str
    interpretation_score: float
    def __init__(self, feature: _Optional[int] = ..., cosine: _Optional[float] = ..., label: _Optional[str] = ..., interpretation_score: _Optional[float] = ...) -> None: ...

class TokenLogit(_message.Message):
    __slots__ = ("token_id", "text", "logit")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    text: str
    logit: float
    def __init__(self, token_id: _Optional[int] = ..., text: _Optional[str] = ..., logit: _Optional[float] = ...) -> None: ...

class FeatureDashboard(_message.Message):
    __slots__ = ("num_studies", "num_tokens", "density", "density_by_kind", "histogram_edges", "histogram_counts", "top_examples", "quantile_examples")
    NUM_STUDIES_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    DENSITY_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_EDGES_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOP_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    num_studies: int
    num_tokens: int
    density: float
    density_by_kind: _containers.RepeatedCompositeFieldContainer[KindDensity]
    histogram_edges: _containers.RepeatedScalarFieldContainer[float]
    histogram_counts: _containers.RepeatedScalarFieldContainer[int]
    top_examples: _containers.RepeatedCompositeFieldContainer[FeatureExample]
    quantile_examples: _containers.RepeatedCompositeFieldContainer[FeatureExample]
    def __init__(self, num_studies: _Optional[int] = ..., num_tokens: _Optional[int] = ..., density: _Optional[float] = ..., density_by_kind: _Optional[_Iterable[_Union[KindDensity, _Mapping]]] = ..., histogram_edges: _Optional[_Iterable[float]] = ..., histogram_counts: _Optional[_Iterable[int]] = ..., top_examples: _Optional[_Iterable[_Union[FeatureExample, _Mapping]]] = ..., quantile_examples: _Optional[_Iterable[_Union[FeatureExample, _Mapping]]] = ...) -> None: ...

class KindDensity(_message.Message):
    __slots__ = ("kind", "density")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    kind: TokenKind
    density: float
    def __init__(self, kind: _Optional[_Union[TokenKind, str]] = ..., density: _Optional[float] = ...) -> None: ...

class FeatureExample(_message.Message):
    __slots__ = ("study_id", "position", "kind", "value", "image_index", "grid_row", "grid_col", "quantile", "heatmap", "thumbnail_png", "context")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    GRID_ROW_FIELD_NUMBER: _ClassVar[int]
    GRID_COL_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_PNG_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    position: int
    kind: TokenKind
    value: float
    image_index: int
    grid_row: int
    grid_col: int
    quantile: float
    heatmap: ImageGrid
    thumbnail_png: bytes
    context: _containers.RepeatedCompositeFieldContainer[ContextToken]
    def __init__(self, study_id: _Optional[str] = ..., position: _Optional[int] = ..., kind: _Optional[_Union[TokenKind, str]] = ..., value: _Optional[float] = ..., image_index: _Optional[int] = ..., grid_row: _Optional[int] = ..., grid_col: _Optional[int] = ..., quantile: _Optional[float] = ..., heatmap: _Optional[_Union[ImageGrid, _Mapping]] = ..., thumbnail_png: _Optional[bytes] = ..., context: _Optional[_Iterable[_Union[ContextToken, _Mapping]]] = ...) -> None: ...

class ContextToken(_message.Message):
    __slots__ = ("text", "value", "is_example")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    text: str
    value: float
    is_example: bool
    def __init__(self, text: _Optional[str] = ..., value: _Optional[float] = ..., is_example: _Optional[bool] = ...) -> None: ...

class SearchFeaturesRequest(_message.Message):
    __slots__ = ("sae_id", "query", "limit", "activation_text")
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_TEXT_FIELD_NUMBER: _ClassVar[int]
    sae_id: str
    query: str
    limit: int
    activation_text: str
    def __init__(self, sae_id: _Optional[str] = ..., query: _Optional[str] = ..., limit: _Optional[int] = ..., activation_text: _Optional[str] = ...) -> None: ...

class FeatureMatch(_message.Message):
    __slots__ = ("feature", "score", "kind", "token_index", "token_text")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TEXT_FIELD_NUMBER: _ClassVar[int]
    feature: Feature
    score: float
    kind: MatchKind
    token_index: int
    token_text: str
    def __init__(self, feature: _Optional[_Union[Feature, _Mapping]] = ..., score: _Optional[float] = ..., kind: _Optional[_Union[MatchKind, str]] = ..., token_index: _Optional[int] = ..., token_text: _Optional[str] = ...) -> None: ...

class SearchFeaturesResponse(_message.Message):
    __slots__ = ("sae_id", "matches", "suggestions", "note", "activation_tokens")
    SAE_ID_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    sae_id: str
    matches: _containers.RepeatedCompositeFieldContainer[FeatureMatch]
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    note: str
    activation_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sae_id: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[FeatureMatch, _Mapping]]] = ..., suggestions: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ..., activation_tokens: _Optional[_Iterable[str]] = ...) -> None: ...
