"""The server's configuration: one typed, frozen object with a section per concern.

Every setting has a type, a default, a range check and a help text here; ``config_sources``
reads them from defaults < a config file < ``MAIRA_SAE_*`` environment variables < flags. The
auth token is secret: it has no flag (it would show in ``ps``) and never appears in ``repr``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from maira_sae.client.imaging.dicom import DicomOptions
from maira_sae.server.engine.decode_choices import DecodeSetting
from maira_sae.server.engine.token_limits import DEFAULT_MAX_ACTIVATION_TEXT_TOKENS

MIB = 1024 * 1024

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_DTYPES = ("auto", "bfloat16", "float16", "float32")
_IMAGE_FEATURES = ("feature_maps", "hidden_states")  # maira2.config.ImageFeatures
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SAE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names it."""


def _help(text: str) -> dict[str, str]:
    """Field metadata: the setting's description, shown by ``--help``."""
    return {"help": text}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require_positive(section: str, **values: float) -> None:
    for name, value in values.items():
        _require(math.isfinite(value) and value > 0, f"{section}.{name} must be > 0, got {value}")


def _require_non_negative(section: str, **values: float) -> None:
    for name, value in values.items():
        _require(math.isfinite(value) and value >= 0, f"{section}.{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class ServingConfig:
    host: str = field(default="[::]", metadata=_help("address to bind the gRPC server to"))
    grpc_port: int = field(default=50051, metadata=_help("gRPC port; 0 picks a free one"))
    metrics_port: int = field(
        default=9090, metadata=_help("Prometheus metrics port; 0 picks a free one")
    )
    health_port: int = field(
        default=50052,
        metadata=_help(
            "plaintext port serving only grpc.health.v1 (for kubelet probes when TLS or auth is"
            " on); -1 disables it, 0 picks a free one"
        ),
    )
    drain_grace_s: float = field(
        default=30.0, metadata=_help("on SIGTERM, seconds in-flight calls get to finish")
    )
    max_message_bytes: int = field(
        default=64 * MIB, metadata=_help("largest request or response message")
    )
    log_level: str = field(default="INFO", metadata=_help("one of DEBUG, INFO, WARNING, ERROR"))

    def __post_init__(self) -> None:
        for name in ("grpc_port", "metrics_port"):
            port = getattr(self, name)
            _require(0 <= port <= 65535, f"serving.{name} must be in 0..65535, got {port}")
        _require(
            -1 <= self.health_port <= 65535,
            f"serving.health_port must be -1 (off) or in 0..65535, got {self.health_port}",
        )
        _require_non_negative("serving", drain_grace_s=self.drain_grace_s)
        _require_positive("serving", max_message_bytes=self.max_message_bytes)
        _require(
            self.log_level in _LOG_LEVELS,
            f"serving.log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}",
        )


@dataclass(frozen=True)
class KeepaliveConfig:
    """HTTP/2 keepalive and connection ageing. Ageing closes connections now and then so that
    clients re-resolve and spread over new replicas; 0 disables ageing."""

    time_s: float = field(default=60.0, metadata=_help("seconds between server keepalive pings"))
    timeout_s: float = field(
        default=20.0, metadata=_help("seconds to wait for a ping ack before closing")
    )
    min_ping_interval_s: float = field(
        default=10.0, metadata=_help("clients pinging more often are disconnected")
    )
    max_connection_age_s: float = field(
        default=600.0, metadata=_help("close connections after this age; 0: never")
    )
    max_connection_age_grace_s: float = field(
        default=120.0, metadata=_help("after max age, seconds open calls get to finish")
    )

    def __post_init__(self) -> None:
        _require_positive("keepalive", time_s=self.time_s, timeout_s=self.timeout_s)
        _require_non_negative(
            "keepalive",
            min_ping_interval_s=self.min_ping_interval_s,
            max_connection_age_s=self.max_connection_age_s,
            max_connection_age_grace_s=self.max_connection_age_grace_s,
        )


@dataclass(frozen=True)
class ModelConfig:
    path: str = field(default="", metadata=_help("Hugging Face repo id or local folder of MAIRA-2"))
    device: str = field(default="auto", metadata=_help("auto, cpu, mps, cuda or cuda:N"))
    dtype: str = field(
        default="auto",
        metadata=_help("auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32"),
    )
    image_features: str = field(
        default="feature_maps",
        metadata=_help(
            "vision output fed to the projector: feature_maps (after Dinov2's final LayerNorm,"
            " as the first release of MAIRA-2's code) or hidden_states (before it, as the later"
            " release); use the one your SAEs were trained with"
        ),
    )
    demo: bool = field(
        default=False, metadata=_help("serve the tiny demo checkpoint instead of the real model")
    )
    demo_dir: str = field(
        default="",
        metadata=_help(
            "writable folder for the demo checkpoint (built there once); default"
            " $XDG_CACHE_HOME/maira-sae/demo-checkpoint"
        ),
    )

    def __post_init__(self) -> None:
        _require(
            _DEVICE.fullmatch(self.device) is not None,
            f"model.device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}",
        )
        _require(
            self.dtype in _DTYPES,
            f"model.dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}",
        )
        _require(
            self.image_features in _IMAGE_FEATURES,
            f"model.image_features must be one of {', '.join(_IMAGE_FEATURES)}, "
            f"got {self.image_features!r}",
        )


@dataclass(frozen=True)
class LimitsConfig:
    """Per-request limits; a request past one fails with OUT_OF_RANGE naming the field."""

    max_image_bytes: int = field(default=32 * MIB, metadata=_help("largest encoded image"))
    max_image_pixels: int = field(
        default=40_000_000, metadata=_help("largest decoded image, width * height")
    )
    max_images: int = field(default=3, metadata=_help("images per study"))
    max_text_chars: int = field(default=4000, metadata=_help("characters per text field"))
    max_new_tokens: int = field(
        default=1024, metadata=_help("largest max_new_tokens a request may ask")
    )
    default_max_new_tokens: int = field(
        default=300, metadata=_help("max_new_tokens when a request leaves it 0")
    )
    max_variants: int = field(default=8, metadata=_help("variants per GenerateSteered call"))
    max_interventions_per_variant: int = field(
        default=16, metadata=_help("interventions per variant")
    )
    max_top_k: int = field(
        default=256, metadata=_help("largest k, top_k_per_token or search limit")
    )
    max_abs_strength: float = field(
        default=1e4, metadata=_help("largest |value| of an intervention")
    )
    max_prompt_tokens: int = field(
        default=0,
        metadata=_help(
            "largest prompt, in tokens after tokenising (image patches included); 0: the"
            " model's context length (text_config.max_position_embeddings)"
        ),
    )
    max_sequence_tokens: int = field(
        default=0,
        metadata=_help(
            "largest prompt + teacher-forced response + max_new_tokens, in tokens; 0: the"
            " model's context length"
        ),
    )
    max_token_ranges: int = field(
        default=64, metadata=_help("ranges per TokenFilter and per Intervention")
    )
    max_image_aspect_ratio: float = field(
        default=8.0, metadata=_help("largest long side / short side of a decoded image")
    )
    image_memory_bytes: int = field(
        default=2048 * MIB,
        metadata=_help(
            "decoded-image working memory that all requests being prepared may hold at once;"
            " past it RESOURCE_EXHAUSTED"
        ),
    )
    max_id_chars: int = field(default=128, metadata=_help("characters of an sae_id"))
    max_activation_text_tokens: int = field(
        default=DEFAULT_MAX_ACTIVATION_TEXT_TOKENS,
        metadata=_help(
            "largest search-by-activation text, in tokens with its BOS (at most the model's"
            " context length)"
        ),
    )

    def __post_init__(self) -> None:
        token_limits = ("max_prompt_tokens", "max_sequence_tokens")
        _require_positive(
            "limits",
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in token_limits
            },
        )
        _require_non_negative("limits", **{name: getattr(self, name) for name in token_limits})
        _require(
            self.max_image_aspect_ratio >= 1,
            f"limits.max_image_aspect_ratio must be >= 1, got {self.max_image_aspect_ratio}",
        )
        _require(
            self.default_max_new_tokens <= self.max_new_tokens,
            f"limits.default_max_new_tokens ({self.default_max_new_tokens}) must not exceed "
            f"limits.max_new_tokens ({self.max_new_tokens})",
        )


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = field(
        default=8,
        metadata=_help("Encode/TopFeatures requests in one forward pass; variants per call"),
    )
    max_decode_rows: int = field(
        default=32,
        metadata=_help(
            "generation rows (variants of all running calls) decoded together in one step;"
            " calls beyond it wait for rows to end"
        ),
    )
    max_kv_positions: int = field(
        default=262_144,
        metadata=_help(
            "KV-cache positions of all running rows together (rows x the longest row, padding"
            " included; a row is prompt + max_new_tokens): bounds the cache's memory"
        ),
    )
    prefill_token_budget: int = field(
        default=8192,
        metadata=_help(
            "prompt tokens prefilled between two decode steps (a larger prompt in chunks, one"
            " a turn): how long a new call may delay the running streams"
        ),
    )
    decode_path: str = field(
        default="dynamic",
        metadata=_help(
            "'dynamic': the KV cache grows and shrinks with the rows; 'static': every buffer"
            " is allocated at start (max_decode_rows slots of limits.max_prompt_tokens +"
            " max_new_tokens positions, within max_sequence_tokens and max_kv_positions) so"
            " the decode step has fixed shapes and can be compiled; for CUDA (refused off"
            " CUDA past a 512 MiB cache)"
        ),
    )
    decode_compile: str = field(
        default="off",
        metadata=_help(
            "compile the static decode step: off, default, reduce-overhead (CUDA graphs),"
            " max-autotune, max-autotune-no-cudagraphs, or the aot_eager/eager backends"
        ),
    )
    kv_memory_fraction: float = field(
        default=0.85,
        metadata=_help(
            "on CUDA, the share of the accelerator memory free after loading that the KV"
            " cache may fill; it lowers max_kv_positions when that holds fewer positions"
        ),
    )
    batch_window_ms: float = field(
        default=5.0, metadata=_help("how long the scheduler waits to fill a batch")
    )
    queue_size: int = field(
        default=64,
        metadata=_help(
            "requests admitted at once (being prepared, queued or running); past it"
            " RESOURCE_EXHAUSTED, before any image is decoded"
        ),
    )
    long_call_tokens: int = field(
        default=1024,
        metadata=_help(
            "a GenerateSteered call asking for more tokens than this over its variants"
            " (variants x max_new_tokens) is a long call; long and batch-marked calls share"
            " long_call_share of the queue"
        ),
    )
    short_call_rows: int = field(
        default=4,
        metadata=_help(
            "decode rows that long and batch-marked calls may not take: kept for short calls,"
            " so a short generation starts while long ones fill the batch (0: none kept;"
            " fewer than max_decode_rows)"
        ),
    )
    long_call_share: float = field(
        default=0.75,
        metadata=_help(
            "the share of queue_size that long and batch-marked calls may hold (at least one"
            " place); the rest is kept for short interactive calls, so a server busy with long"
            " generations still answers an Encode"
        ),
    )
    batch_weight: float = field(
        default=1 / 16,
        metadata=_help(
            "the engine's share for a batch-marked request (x-maira-sae-priority: batch)"
            " against an interactive one, in (0, 1]: its cost counts 1/batch_weight times in"
            " the fair queue, so interactive callers go first"
        ),
    )
    max_call_s: float = field(
        default=600.0,
        metadata=_help(
            "the longest a call without a client deadline may take, queued and running; past"
            " it DEADLINE_EXCEEDED naming this setting (a client's own deadline replaces it)"
        ),
    )
    pace_refusals: bool = field(
        default=True,
        metadata=_help(
            "refuse (RESOURCE_EXHAUSTED) a connection at once only for a retry that waited its"
            " RetryInfo delay, or up to once per delay for each call open on it; hold any other"
            " refusal back until that rate allows it (never past the call's deadline), so"
            " clients that ignore RetryInfo cannot spend the server on refusals"
        ),
    )
    prepare_workers: int = field(
        default=2,
        metadata=_help("threads that decode images and tokenise admitted requests"),
    )
    stream_buffer_events: int = field(
        default=512,
        metadata=_help(
            "events of a GenerateSteered stream that may wait for the connection to take"
            " them (what the caller's HTTP/2 window holds is taken); past it the call's rows"
            " stop and it ends RESOURCE_EXHAUSTED (a client that does not read)"
        ),
    )

    @property
    def decode_setting(self) -> DecodeSetting:
        return DecodeSetting(self.decode_path, self.decode_compile)

    @property
    def long_call_places(self) -> int:
        """The places of the queue that long and batch-marked calls may hold."""
        return max(1, math.floor(self.queue_size * self.long_call_share))

    def __post_init__(self) -> None:
        _require_positive(
            "batching",
            max_batch_size=self.max_batch_size,
            max_decode_rows=self.max_decode_rows,
            max_kv_positions=self.max_kv_positions,
            prefill_token_budget=self.prefill_token_budget,
            queue_size=self.queue_size,
            prepare_workers=self.prepare_workers,
            stream_buffer_events=self.stream_buffer_events,
            long_call_tokens=self.long_call_tokens,
            max_call_s=self.max_call_s,
        )
        _require(
            0 <= self.short_call_rows < self.max_decode_rows,
            f"batching.short_call_rows must be in 0..{self.max_decode_rows - 1} (below"
            f" max_decode_rows), got {self.short_call_rows}",
        )
        for name in ("long_call_share", "batch_weight"):
            share = getattr(self, name)
            _require(0 < share <= 1, f"batching.{name} must be in (0, 1], got {share}")
        _require_non_negative("batching", batch_window_ms=self.batch_window_ms)
        try:
            DecodeSetting(self.decode_path, self.decode_compile)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        _require(
            0 < self.kv_memory_fraction <= 1,
            f"batching.kv_memory_fraction must be in (0, 1], got {self.kv_memory_fraction}",
        )


@dataclass(frozen=True)
class DicomConfig:
    """Which DICOM files the server takes and how it windows them (see client/imaging/dicom.py)."""

    modalities: str = field(
        default="CR,DX,DR",
        metadata=_help(
            "comma-separated Modality values accepted (chest radiographs); other modalities"
            " are refused naming theirs; * accepts any"
        ),
    )
    apply_voi: bool = field(
        default=True,
        metadata=_help(
            "apply the file's first VOI LUT or window (the site's display); off keeps the whole"
            " rescaled range"
        ),
    )

    def __post_init__(self) -> None:
        _require(
            self.modalities.strip() == "*" or bool(self._modality_set()),
            f"dicom.modalities must list modalities (e.g. CR,DX,DR) or be *, got "
            f"{self.modalities!r}",
        )

    def _modality_set(self) -> frozenset[str]:
        return frozenset(m.strip().upper() for m in self.modalities.split(",") if m.strip())

    def options(self) -> DicomOptions:
        """The decoder's options for these settings."""
        any_modality = self.modalities.strip() == "*"
        return DicomOptions(
            modalities=None if any_modality else self._modality_set(), apply_voi=self.apply_voi
        )


@dataclass(frozen=True)
class TlsConfig:
    """PEM files. Cert and key together turn TLS on; a client CA also requires client certs."""

    cert: Path | None = field(default=None, metadata=_help("server certificate chain (PEM)"))
    key: Path | None = field(default=None, metadata=_help("server private key (PEM)"))
    client_ca: Path | None = field(
        default=None, metadata=_help("CA that client certificates must chain to (mTLS)")
    )

    def __post_init__(self) -> None:
        _require(
            (self.cert is None) == (self.key is None), "tls.cert and tls.key must be set together"
        )
        _require(self.client_ca is None or self.cert is not None, "tls.client_ca needs tls.cert")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class AuthConfig:
    """A bearer token from a file (a mounted Secret) or from ``MAIRA_SAE_AUTH_TOKEN``. Neither:
    no authentication."""

    token_file: Path | None = field(default=None, metadata=_help("file holding the bearer token"))
    token: str | None = field(default=None, repr=False, metadata={"secret": True})

    def __post_init__(self) -> None:
        _require(
            self.token_file is None or self.token is None,
            "auth.token and auth.token_file are exclusive: set one",
        )
        _require(self.token != "", "auth.token must not be empty")

    def load_token(self) -> str | None:
        """The token to require, read from the file now; None means auth is off."""
        if self.token_file is None:
            return self.token
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"auth.token_file {self.token_file}: {err.strerror}") from err
        _require(token != "", f"auth.token_file {self.token_file} is empty")
        return token


@dataclass(frozen=True)
class SaeSpec:
    """One SAE to load. Settings left None are read from the SAE's own config."""

    id: str
    path: Path
    interpretations_path: Path | None = None  # CSV or JSON Lines of feature labels
    feature_column: str = "feature"
    label_column: str = "explanation"
    score_column: str = "score"
    threshold: float | None = None  # overrides the saved encode threshold
    input_scale: float = 1.0  # residual activations are multiplied by this before encoding
    layer: int | None = None  # overrides the hook layer of the SAE's config
    # The feature dashboards (maira-sae-server build-dashboard); None: the SAE folder's
    # dashboard/ when it has one.
    dashboard_path: Path | None = None

    def __post_init__(self) -> None:
        _require(
            _SAE_ID.fullmatch(self.id) is not None,
            f"saes: id {self.id!r} must be letters, digits, '.', '_' or '-'",
        )
        _require_positive(f"saes[{self.id}]", input_scale=self.input_scale)
        _require(
            self.threshold is None or math.isfinite(self.threshold),
            f"saes[{self.id}].threshold must be finite, got {self.threshold}",
        )
        _require(
            self.layer is None or self.layer >= 0,
            f"saes[{self.id}].layer must be >= 0, got {self.layer}",
        )


@dataclass(frozen=True)
class ServerConfig:
    serving: ServingConfig = field(default_factory=ServingConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    saes: tuple[SaeSpec, ...] = ()
    default_sae_id: str = ""  # "": the first of ``saes``

    def __post_init__(self) -> None:
        ids = [spec.id for spec in self.saes]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        _require(not duplicates, f"saes: duplicate id(s) {', '.join(duplicates)}")
        _require(
            not self.default_sae_id or self.default_sae_id in ids,
            f"default_sae_id {self.default_sae_id!r} is not one of the saes ({', '.join(ids)})",
        )
        # All variants of a GenerateSteered call run in one batch.
        _require(
            self.limits.max_variants <= self.batching.max_batch_size,
            f"limits.max_variants ({self.limits.max_variants}) must not exceed "
            f"batching.max_batch_size ({self.batching.max_batch_size})",
        )

    @property
    def resolved_default_sae_id(self) -> str:
        """The SAE a request with an empty sae_id uses; "" when no SAE is configured."""
        return self.default_sae_id or (self.saes[0].id if self.saes else "")

    def grpc_server_options(self) -> list[tuple[str, int]]:
        """Channel arguments for ``grpc.aio.server(options=...)``."""
        ms = 1000
        k = self.keepalive
        options = [
            ("grpc.max_receive_message_length", self.serving.max_message_bytes),
            ("grpc.max_send_message_length", self.serving.max_message_bytes),
            ("grpc.keepalive_time_ms", int(k.time_s * ms)),
            ("grpc.keepalive_timeout_ms", int(k.timeout_s * ms)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(k.min_ping_interval_s * ms)),
            # A port in use must fail start-up, not be shared with whatever holds it.
            ("grpc.so_reuseport", 0),
        ]
        if k.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(k.max_connection_age_s * ms)),
                ("grpc.max_connection_age_grace_ms", int(k.max_connection_age_grace_s * ms)),
            ]
        return options
