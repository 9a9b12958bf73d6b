"""Domain requests and results of the engine: what the servicer builds from protobuf and what
it converts back. Nothing here knows gRPC."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from maira_sae.sae.catalogue import FeatureInterpretation
from maira_sae.sae.dashboard import FeatureStats
from maira_sae.sae.interventions import Intervention

# Grounded phrases belong to the model layer (its parser makes them); results carry them.
from maira_sae.server.maira2.grounding import GroundedBox as GroundedBox
from maira_sae.server.maira2.grounding import GroundedPhrase as GroundedPhrase
from maira_sae.server.maira2.study import Study, Task
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind

DEFAULT_TOKEN_KINDS = frozenset({TokenKind.IMAGE_PATCH, TokenKind.PROMPT_TEXT, TokenKind.RESPONSE})


@dataclass(frozen=True)
class TokenRange:
    """Half-open range [start, end) of absolute token positions (prompt first, then response)."""

    start: int
    end: int


@dataclass(frozen=True)
class TokenFilter:
    """Which tokens count. By default every token but the special ones."""

    kinds: frozenset[TokenKind] = DEFAULT_TOKEN_KINDS
    image_indices: frozenset[int] | None = None  # restrict IMAGE_PATCH tokens to these images
    ranges: tuple[TokenRange, ...] = ()  # if set, only positions inside one of the ranges
    # Applied by engine.features.accepted_positions, vectorised.


class PositionScope(enum.Enum):
    """Where an intervention applies during generation."""

    ALL = "all"  # every position, prompt and generated
    PROMPT = "prompt"  # prompt positions only (during prefill)
    GENERATED = "generated"  # generated positions only
    IMAGE = "image"  # image patch tokens only
    TEXT = "text"  # every non-image token, prompt and generated
    RANGES = "ranges"  # the explicit absolute token ranges given


@dataclass(frozen=True)
class ScopedIntervention:
    intervention: Intervention
    scope: PositionScope = PositionScope.ALL
    ranges: tuple[TokenRange, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One row of a steered generation. No interventions: the baseline."""

    interventions: tuple[ScopedIntervention, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 300
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0


class Aggregation(enum.Enum):
    MAX = "max"
    MEAN = "mean"
    SUM = "sum"
    COUNT = "count"  # number of accepted tokens on which the feature fires


@dataclass(frozen=True)
class EncodeRequest:
    study: Study
    task: Task = field(default_factory=Task)
    response: str | None = None  # teacher-forced assistant turn
    sae_id: str = ""  # "" means the default SAE
    token_filter: TokenFilter = field(default_factory=TokenFilter)
    top_k_per_token: int = 32  # 0 means every active feature
    matryoshka_level: int | None = None  # None means every group


@dataclass(frozen=True)
class TokenFeatures:
    token: TokenInfo
    feature_ids: tuple[int, ...]  # by decreasing value
    values: tuple[float, ...]


@dataclass(frozen=True)
class ReconstructionQuality:
    """Over the accepted tokens: mean squared error, explained variance, mean cosine."""

    mse: float
    explained_variance: float
    cosine: float


@dataclass(frozen=True)
class EncodeResult:
    sae_id: str
    layer: int
    tokens: tuple[TokenFeatures, ...]  # accepted tokens only, in position order
    total_tokens: int  # length of the whole sequence, before the filter
    quality: ReconstructionQuality


@dataclass(frozen=True)
class TopFeaturesRequest:
    study: Study
    task: Task = field(default_factory=Task)
    response: str | None = None
    sae_id: str = ""
    aggregation: Aggregation = Aggregation.MAX
    token_filter: TokenFilter = field(default_factory=TokenFilter)
    k: int = 20
    labelled_only: bool = False  # rank only the features the catalogue interprets
    matryoshka_level: int | None = None  # rank the first n groups only; None means every group


@dataclass(frozen=True)
class ImageActivationGrid:
    """A feature's activation over one image's patch grid, row-major, ``rows * cols`` values."""

    image_index: int
    rows: int
    cols: int
    values: tuple[float, ...]


@dataclass(frozen=True)
class FeatureScore:
    feature: int
    score: float
    label: str | None
    interpretation_score: float | None
    token_positions: tuple[int, ...]  # accepted tokens where the feature fires
    image_grids: tuple[ImageActivationGrid, ...]  # one per image where it fires


@dataclass(frozen=True)
class TopFeaturesResult:
    sae_id: str
    layer: int
    features: tuple[FeatureScore, ...]
    total_tokens: int


@dataclass(frozen=True)
class GenerateRequest:
    study: Study
    task: Task = field(default_factory=Task)
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    variants: tuple[Variant, ...] = (Variant(),)
    sae_id: str = ""


class FinishReason(enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class GeneratedToken:
    variant_index: int
    position: int  # absolute position in the sequence
    token_id: int
    text: str  # the text this token adds to the decoded report (may be "")


@dataclass(frozen=True)
class VariantFinished:
    variant_index: int
    text: str
    finish_reason: FinishReason
    num_tokens: int
    phrases: tuple[GroundedPhrase, ...] = ()  # grounded tasks only
    parse_ok: bool = True  # False when grounded output was malformed; text is still returned


GenerationEvent = GeneratedToken | VariantFinished


@dataclass(frozen=True)
class FeatureDescription:
    """One feature of a served SAE: its interpretation (None when unlabelled) and the norm of
    its decoder row."""

    feature: int
    interpretation: FeatureInterpretation | None
    decoder_norm: float


@dataclass(frozen=True)
class TokenLogit:
    token_id: int
    text: str
    logit: float


@dataclass(frozen=True)
class LogitEffect:
    promoted: tuple[TokenLogit, ...]  # largest logit first
    suppressed: tuple[TokenLogit, ...]  # most negative first


@dataclass(frozen=True)
class NearestFeature:
    """Another feature of the same SAE and the cosine of its decoder row with the asked one's."""

    description: FeatureDescription
    cosine: float


@dataclass(frozen=True)
class FeatureDetails:
    """What GetFeature says of one feature: its description, its dashboard page (None with a
    note saying why), its logit effects, its nearest features by decoder cosine and, when
    asked, its decoder row."""

    description: FeatureDescription
    dashboard: FeatureStats | None
    dashboard_note: str
    logit_effect: LogitEffect
    decoder_row: tuple[float, ...] | None
    token_texts: dict[int, str] = field(default_factory=dict)  # of the examples' contexts
    nearest: tuple[NearestFeature, ...] = ()  # by decreasing cosine


class MatchKind(enum.Enum):
    EXACT = "exact"  # the label's words are the query's
    PHRASE = "phrase"  # the label contains the whole query phrase
    PARTIAL = "partial"  # some of the query's words, or words spelt nearly so
    ACTIVATION = "activation"  # the feature fires on the searched text


@dataclass(frozen=True)
class FeatureMatch:
    """One search match: BM25 relevance for a text match; for search by activation the
    feature's largest activation over the text, and the token where it is reached."""

    description: FeatureDescription
    score: float
    kind: MatchKind
    token_index: int = 0  # by activation: index into FeatureSearchResult.activation_tokens
    token_text: str = ""


@dataclass(frozen=True)
class FeatureSearchResult:
    sae_id: str
    matches: tuple[FeatureMatch, ...]  # best first
    suggestions: tuple[str, ...] = ()  # when nothing matched: the nearest labels
    note: str = ""
    activation_tokens: tuple[str, ...] = ()  # by activation: the text's tokens, BOS first


@dataclass(frozen=True)
class ActivationSearchRequest:
    """Search by activation: the features that fire most on ``text`` (the language model
    alone, BOS first, no image), at most ``limit`` of them."""

    text: str
    limit: int
    sae_id: str = ""
