"""Typed results of every call: frozen dataclasses, never protobuf.

``to_dict()`` on each gives plain JSON-ready data (enums as their string values, tuples as
lists), so ``json.dumps(result.to_dict())`` works without pandas or protobuf.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


class _Result:
    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: nested dicts and lists, enums as their values."""
        return _plain(self)


class TokenKind(enum.StrEnum):
    IMAGE_PATCH = "image_patch"
    PROMPT_TEXT = "prompt_text"
    SPECIAL = "special"
    RESPONSE = "response"


class ImageRole(enum.StrEnum):
    FRONTAL = "frontal"
    LATERAL = "lateral"
    PRIOR = "prior"


class FinishReason(enum.StrEnum):
    EOS = "eos"
    LENGTH = "length"
    CANCELLED = "cancelled"


# -------------------------------------------------------------------------------------------
# Encode and TopFeatures


@dataclass(frozen=True)
class Token(_Result):
    """One token of the sequence. Image patch tokens carry which image (0-based among the
    present images, in prompt order), its role and their cell in that image's patch grid."""

    position: int
    token_id: int
    text: str
    kind: TokenKind
    image_index: int | None = None
    image_role: ImageRole | None = None
    grid_row: int | None = None
    grid_col: int | None = None


@dataclass(frozen=True)
class TokenActivations(_Result):
    """The active features of one token, sparse and by decreasing value."""

    token: Token
    feature_ids: tuple[int, ...]
    values: tuple[float, ...]

    def activation(self, feature: int) -> float:
        """The feature's activation on this token; 0.0 when it did not fire."""
        for feature_id, value in zip(self.feature_ids, self.values, strict=True):
            if feature_id == feature:
                return value
        return 0.0


@dataclass(frozen=True)
class ReconstructionQuality(_Result):
    mse: float
    explained_variance: float
    cosine: float


@dataclass(frozen=True)
class EncodeResult(_Result):
    sae_id: str
    layer: int
    tokens: tuple[TokenActivations, ...]  # the accepted tokens, in position order
    total_tokens: int  # the whole sequence, before the token filter
    quality: ReconstructionQuality


@dataclass(frozen=True)
class ImageGrid(_Result):
    """A feature's activation over one image's patch grid, row-major. The grid covers the
    centre-cropped square of the original image (side ``min(width, height)``)."""

    image_index: int
    rows: int
    cols: int
    values: tuple[float, ...]

    def to_array(self) -> np.ndarray:
        """The values as a float32 array of shape (rows, cols)."""
        return np.asarray(self.values, dtype=np.float32).reshape(self.rows, self.cols)


@dataclass(frozen=True)
class FeatureScore(_Result):
    feature: int
    score: float
    label: str | None
    interpretation_score: float | None
    token_positions: tuple[int, ...]  # accepted tokens where the feature fires
    image_grids: tuple[ImageGrid, ...]  # one per image where it fires

    def grid_for(self, image_index: int) -> ImageGrid | None:
        return next((g for g in self.image_grids if g.image_index == image_index), None)


@dataclass(frozen=True)
class TopFeaturesResult(_Result):
    sae_id: str
    layer: int
    features: tuple[FeatureScore, ...]  # by decreasing score
    total_tokens: int


# -------------------------------------------------------------------------------------------
# GenerateSteered


@dataclass(frozen=True)
class TokenEvent(_Result):
    """One generated token of one variant; ``text`` is what it adds to the report."""

    variant_index: int
    position: int
    token_id: int
    text: str


@dataclass(frozen=True)
class BoxCoordinates(_Result):
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class Box(_Result):
    """Fractions (0..1) of the centre-cropped square the model saw, and of the original image."""

    cropped: BoxCoordinates
    original: BoxCoordinates


@dataclass(frozen=True)
class GroundedPhrase(_Result):
    text: str
    boxes: tuple[Box, ...]  # empty for an ungrounded finding


@dataclass(frozen=True)
class VariantResult(_Result):
    """The last event of a variant: its whole report."""

    variant_index: int
    text: str
    finish_reason: FinishReason
    num_tokens: int
    phrases: tuple[GroundedPhrase, ...]  # grounded tasks only
    parse_ok: bool  # false when grounded output was malformed; text is still set


GenerateEvent = TokenEvent | VariantResult


# -------------------------------------------------------------------------------------------
# GetInfo, GetFeature, SearchFeatures


@dataclass(frozen=True)
class ModelInfo(_Result):
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


@dataclass(frozen=True)
class SaeInfo(_Result):
    id: str
    layer: int
    hook_point: str
    d_model: int
    d_sae: int
    group_sizes: tuple[int, ...]
    has_interpretations: bool
    num_interpretations: int
    source_format: str


@dataclass(frozen=True)
class Limits(_Result):
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


@dataclass(frozen=True)
class Versions(_Result):
    maira_sae: str
    torch: str
    transformers: str


@dataclass(frozen=True)
class ServerInfo(_Result):
    model: ModelInfo
    saes: tuple[SaeInfo, ...]
    default_sae_id: str
    limits: Limits
    versions: Versions


@dataclass(frozen=True)
class Feature(_Result):
    feature: int
    label: str | None  # None when the SAE has no interpretation for it
    interpretation_score: float | None
    decoder_norm: float


@dataclass(frozen=True)
class FeatureMatch(_Result):
    feature: Feature
    score: float  # relevance of the label to the query, higher is better


@dataclass(frozen=True)
class SearchResult(_Result):
    sae_id: str
    matches: tuple[FeatureMatch, ...]  # by decreasing score
