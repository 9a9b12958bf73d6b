"""Typed results of every call: frozen dataclasses, never protobuf.

``to_dict()`` on each gives plain JSON-ready data (enums as their string values, tuples as
lists, numpy arrays as lists, bytes as base64 text), so ``json.dumps(result.to_dict())``
works without pandas or protobuf.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from maira_sae.client.imaging.dicom import DicomOptions

if TYPE_CHECKING:
    import pandas
    import scipy.sparse


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
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

    # Arrays (the ``arrays`` extra: scipy, pandas); see maira_sae.client.arrays.

    def to_sparse(self, sae: SaeInfo | None = None) -> scipy.sparse.csr_array:
        """Tokens x features as a scipy.sparse CSR array of float32 activations, rows in token
        order. Its width is the SAE's d_sae with ``sae`` (from ``ServerInfo.sae``), else the
        highest feature that fired plus one."""
        from maira_sae.client import arrays

        return arrays.to_sparse(self, sae)

    def to_numpy(self, sae: SaeInfo | None = None, *, level: int | None = None) -> np.ndarray:
        """Tokens x features as a dense float32 array; with ``level`` only the features of the
        first ``level`` Matryoshka groups (their sizes come from ``sae``)."""
        from maira_sae.client import arrays

        return arrays.to_numpy(self, sae, level=level)

    def to_frame(self) -> pandas.DataFrame:
        """The tokens as a pandas DataFrame, one row per token: position, token_id, text, kind,
        image_index, image_role, grid_row, grid_col, and num_active (features that fired)."""
        from maira_sae.client import arrays

        return arrays.to_frame(self)


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
    """The last event of a variant: its whole report. ``name`` is the name the request gave
    the variant ("" when it gave none, or gave no variants: the baseline)."""

    variant_index: int
    name: str
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
    image_features: str  # the vision output fed to the projector (see the server's README)


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
    max_activation_text_tokens: int = 0  # 0 from a server without search by activation
    max_prompt_tokens: int = 0
    max_sequence_tokens: int = 0  # prompt + teacher-forced response + max_new_tokens
    max_token_ranges: int = 0
    max_image_aspect_ratio: float = 0.0
    image_memory_bytes: int = 0  # decoded images of all requests being prepared at once
    max_id_chars: int = 0
    stream_buffer_events: int = 0  # unsent events before a stream's rows stop
    max_decode_rows: int = 0
    max_kv_positions: int = 0
    prefill_token_budget: int = 0


@dataclass(frozen=True)
class Admission(_Result):
    """How the server shares its engine between callers (0 and "" from an older server)."""

    long_call_tokens: int = 0  # variants x max_new_tokens above it: a long call
    long_call_places: int = 0  # queue places long and batch-marked calls may hold together
    short_call_rows: int = 0  # decode rows long and batch-marked calls may not take
    batch_weight: float = 0.0  # a batch-marked request's share against an interactive one
    priority_metadata_key: str = ""  # send it with the value "batch" to mark batch traffic
    max_call_seconds: float = 0.0  # the longest a call without a deadline may take
    refusals_paced: bool = False  # refusals that come too soon are held back (README)


@dataclass(frozen=True)
class Versions(_Result):
    maira_sae: str
    torch: str
    transformers: str


@dataclass(frozen=True)
class DicomDecoding(_Result):
    """How the server turns DICOM into greyscale (``client/imaging/dicom.py`` has the details)."""

    modalities: tuple[str, ...]  # accepted Modality values; empty: any
    modality_lut: bool  # Rescale Slope/Intercept or Modality LUT
    voi_lut: bool  # the file's first VOI LUT or window
    monochrome1_inverted: bool
    description: str

    def options(self) -> DicomOptions:
        """The same settings for decoding here (``StudyImage.pixels(dicom=...)``)."""
        return DicomOptions(modalities=frozenset(self.modalities) or None, apply_voi=self.voi_lut)


@dataclass(frozen=True)
class ServerInfo(_Result):
    model: ModelInfo
    saes: tuple[SaeInfo, ...]
    default_sae_id: str  # the SAE a call with an empty sae_id uses
    limits: Limits
    versions: Versions
    dicom: DicomDecoding
    admission: Admission = Admission()

    def sae(self, sae_id: str = "") -> SaeInfo:
        """The SAE with this id; "" the default one. KeyError names the ids served."""
        wanted = sae_id or self.default_sae_id
        for sae in self.saes:
            if sae.id == wanted:
                return sae
        raise KeyError(f"no SAE {wanted!r}; this server has {[s.id for s in self.saes]}")


@dataclass(frozen=True)
class TokenLogit(_Result):
    """One token of a feature's logit effects."""

    token_id: int
    text: str  # the token's piece, "▁" shown as a space
    logit: float  # change of its logit per unit of the feature's decoder direction


@dataclass(frozen=True)
class KindDensity(_Result):
    kind: TokenKind
    density: float  # fraction of the tokens of that kind on which the feature fires


@dataclass(frozen=True)
class ContextToken(_Result):
    text: str
    value: float  # the feature's activation on it
    is_example: bool  # the example token itself


@dataclass(frozen=True)
class FeatureExample(_Result):
    """One token where the feature fired, in one study of the dashboard's study set. Image
    patches carry their image and grid cell; ``heatmap`` and ``thumbnail_png`` are present only
    when the dashboard was built with content (studies hold patient data), ``context`` for text
    tokens."""

    study_id: str  # the study's folder name in the dashboard's study set
    position: int  # absolute token position in that study's prompt + response
    kind: TokenKind
    value: float
    image_index: int | None = None
    grid_row: int | None = None
    grid_col: int | None = None
    quantile: float | None = None  # quantile examples: the quantile of the non-zero values
    heatmap: ImageGrid | None = None  # the feature over that example's image
    thumbnail_png: bytes | None = field(default=None, repr=False)  # 8-bit greyscale PNG
    context: tuple[ContextToken, ...] = ()


@dataclass(frozen=True)
class FeatureDashboard(_Result):
    """A feature's statistics over the studies its dashboard was built from."""

    num_studies: int
    num_tokens: int
    density: float  # fraction of tokens on which the feature fires
    density_by_kind: tuple[KindDensity, ...]
    histogram_edges: tuple[float, ...]  # counts[i] fall in [edges[i], edges[i + 1])
    histogram_counts: tuple[int, ...]  # of its non-zero activations
    top_examples: tuple[FeatureExample, ...]  # by decreasing value
    quantile_examples: tuple[FeatureExample, ...]  # from lower quantiles, by decreasing value

    def density_of(self, kind: TokenKind) -> float | None:
        """The density among tokens of one kind; None when the dashboard has none of them."""
        return next((d.density for d in self.density_by_kind if d.kind is kind), None)


class MatchKind(enum.StrEnum):
    """How a search match was found, best first for a text search."""

    EXACT = "exact"  # the label's words are the query's
    PHRASE = "phrase"  # the label contains the whole query phrase
    PARTIAL = "partial"  # some of the query's words, or words spelt nearly so
    ACTIVATION = "activation"  # search by activation: the feature fires on the text


@dataclass(frozen=True)
class InterpretationProvenance(_Result):
    """Where a label came from: what wrote it and what scored it, on how many held-out
    examples, with which AUROCs and when. None (or "") where the file leaves it empty."""

    explainer: str  # e.g. "offline-contrastive", "llm", "concept-annotations"
    explainer_model: str  # the LLM, if any
    scorer: str  # e.g. "detection-phrase", "concept-auroc"
    num_activating: int | None
    num_non_activating: int | None
    auroc: float | None  # detection AUROC
    balanced_accuracy: float | None
    concept_auroc: float | None  # AUROC for a known concept (synthetic world)
    created: str  # ISO 8601 date

    def summary(self) -> str:
        """One line, e.g. "llm (qwen-7b), scored by detection-llm on 40 activating + 40
        non-activating examples (AUROC 0.910, balanced accuracy 0.850), 2026-12-05"."""
        who = self.explainer or "unknown explainer"
        if self.explainer_model:
            who += f" ({self.explainer_model})"
        parts = [who]
        if self.scorer:
            scored = f"scored by {self.scorer}"
            if self.num_activating is not None or self.num_non_activating is not None:
                scored += (
                    f" on {self.num_activating or 0} activating + "
                    f"{self.num_non_activating or 0} non-activating examples"
                )
            parts.append(scored)
        numbers = [
            f"{name} {value:.3f}"
            for name, value in (
                ("AUROC", self.auroc),
                ("balanced accuracy", self.balanced_accuracy),
                ("concept AUROC", self.concept_auroc),
            )
            if value is not None
        ]
        text = ", ".join(parts) + (f" ({', '.join(numbers)})" if numbers else "")
        return f"{text}, {self.created}" if self.created else text


@dataclass(frozen=True)
class NearestFeature(_Result):
    """Another feature whose decoder row points nearly the same way."""

    feature: int
    cosine: float
    label: str | None
    interpretation_score: float | None


@dataclass(frozen=True)
class Feature(_Result):
    """One feature. GetFeature fills everything; a search match only the first four fields.
    ``dashboard`` is None where none was built (``dashboard_note`` says why and how to build
    one); ``decoder_row`` (d_model float32, read-only) only when asked for; ``provenance`` is
    None where the interpretation file has no provenance columns."""

    feature: int
    label: str | None  # None when the SAE has no interpretation for it
    interpretation_score: float | None
    decoder_norm: float
    dashboard: FeatureDashboard | None = None
    dashboard_note: str = ""
    promoted_tokens: tuple[TokenLogit, ...] = ()  # logit effects: raised most first
    suppressed_tokens: tuple[TokenLogit, ...] = ()  # lowered most first
    decoder_row: np.ndarray | None = field(default=None, compare=False, repr=False)
    provenance: InterpretationProvenance | None = None
    nearest_features: tuple[NearestFeature, ...] = ()  # by decreasing decoder cosine

    @property
    def has_dashboard(self) -> bool:
        return self.dashboard is not None


@dataclass(frozen=True)
class FeatureMatch(_Result):
    """A text match (``score``: BM25 relevance of the label) or, by activation, a feature
    that fires on the text (``score``: its largest activation, reached at ``token_index`` of
    ``SearchResult.activation_tokens``)."""

    feature: Feature
    score: float
    kind: MatchKind | None = None  # None from a server that does not say
    token_index: int = 0
    token_text: str = ""


@dataclass(frozen=True)
class SearchResult(_Result):
    sae_id: str
    # Text search: exact, then phrase matches (each by interpretation score), then partial
    # ones by decreasing score. By activation: by decreasing activation.
    matches: tuple[FeatureMatch, ...]
    suggestions: tuple[str, ...] = ()  # when nothing matched: the labels nearest the query
    note: str = ""  # when nothing matched: a sentence saying so
    activation_tokens: tuple[str, ...] = ()  # by activation: the text's tokens, BOS first
