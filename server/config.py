"""The server's configuration: one typed, frozen object, read from four sources.

Precedence, lowest first: the defaults below, a config file (TOML or JSON, chosen by suffix),
environment variables, command-line flags. Every setting lives in a section and has one name
in each source::

    file      [limits] max_new_tokens = 512      (TOML; JSON: {"limits": {"max_new_tokens": 512}})
    env       MAIRA_SAE_LIMITS_MAX_NEW_TOKENS=512
    flag      --limits-max-new-tokens 512

Two top-level settings sit outside sections: ``default_sae_id`` (``MAIRA_SAE_DEFAULT_SAE_ID``,
``--default-sae-id``) and ``saes``, a list of SAE specs (file: ``[[saes]]`` tables; env:
``MAIRA_SAE_SAES`` holding a JSON list of objects; flag: ``--sae ID=PATH``, repeatable, for
specs that need nothing but a path). The file may also be named by ``--config`` or
``MAIRA_SAE_CONFIG``.

Unknown keys in a file or in ``MAIRA_SAE_SAES`` are refused, so a typo in a Kubernetes
ConfigMap fails the pod at start. Unknown ``MAIRA_SAE_*`` variables are ignored: Kubernetes
injects ``<SERVICE>_PORT`` and ``<SERVICE>_SERVICE_HOST`` variables for a Service named
maira-sae, which no setting name can collide with. The auth token is secret: it has no flag
(it would show in ``ps``) and never appears in ``repr``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "MAIRA_SAE_"
MIB = 1024 * 1024

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_DTYPES = ("auto", "bfloat16", "float16", "float32")
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

    def __post_init__(self) -> None:
        _require_positive(
            "limits",
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        )
        _require(
            self.default_max_new_tokens <= self.max_new_tokens,
            f"limits.default_max_new_tokens ({self.default_max_new_tokens}) must not exceed "
            f"limits.max_new_tokens ({self.max_new_tokens})",
        )


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = field(
        default=8, metadata=_help("rows the engine runs in one forward pass")
    )
    batch_window_ms: float = field(
        default=5.0, metadata=_help("how long the scheduler waits to fill a batch")
    )
    queue_size: int = field(
        default=64, metadata=_help("requests that may wait; past it RESOURCE_EXHAUSTED")
    )

    def __post_init__(self) -> None:
        _require_positive(
            "batching", max_batch_size=self.max_batch_size, queue_size=self.queue_size
        )
        _require_non_negative("batching", batch_window_ms=self.batch_window_ms)


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
        ]
        if k.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(k.max_connection_age_s * ms)),
                ("grpc.max_connection_age_grace_ms", int(k.max_connection_age_grace_s * ms)),
            ]
        return options

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServerConfig:
        """Builds a config from nested plain data (a parsed file); unknown keys are refused."""
        return _build(cls, data, where="")

    @classmethod
    def from_sources(
        cls,
        args: argparse.Namespace | None = None,
        environ: Mapping[str, str] | None = None,
        file: Path | None = None,
    ) -> ServerConfig:
        """Defaults < ``file`` (else ``--config``, else ``MAIRA_SAE_CONFIG``) < env < flags."""
        environ = environ or {}
        if file is None:
            file = getattr(args, "config", None) or environ.get(f"{ENV_PREFIX}CONFIG") or None
        merged: dict[str, Any] = load_file(Path(file)) if file is not None else {}
        for layer in (_from_environ(environ), _from_args(args)):
            for key, value in layer.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
        return cls.from_mapping(merged)


def load_file(path: Path) -> dict[str, Any]:
    """Parses a TOML (``.toml``) or JSON (``.json``) config file into plain data."""
    _require(path.suffix in (".toml", ".json"), f"config file {path}: use a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from err
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib  # Python 3.11+; on 3.10 use a JSON file

            data = tomllib.loads(text)
    except (ValueError, ImportError) as err:
        raise ConfigError(f"config file {path}: {err}") from err
    _require(isinstance(data, dict), f"config file {path}: the top level must be a table")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config`` and one flag per setting, named ``--<section>-<key>``."""
    parser.add_argument("--config", type=Path, help="TOML or JSON config file")
    for section, section_cls in _sections().items():
        group = parser.add_argument_group(f"{section} settings")
        for f in dataclasses.fields(section_cls):
            if f.metadata.get("secret"):
                continue
            flag = f"--{section}-{f.name}".replace("_", "-")
            kind = _hints(section_cls)[f.name]
            if _base_type(kind) is bool:
                action: Any = argparse.BooleanOptionalAction
                group.add_argument(
                    flag,
                    dest=f"{section}.{f.name}",
                    action=action,
                    default=argparse.SUPPRESS,
                    help=f.metadata.get("help"),
                )
            else:
                group.add_argument(
                    flag,
                    dest=f"{section}.{f.name}",
                    default=argparse.SUPPRESS,
                    metavar=f.name.upper(),
                    help=f.metadata.get("help"),
                )
    parser.add_argument(
        "--default-sae-id",
        dest="default_sae_id",
        default=argparse.SUPPRESS,
        help="SAE used when a request leaves sae_id empty; default the first",
    )
    parser.add_argument(
        "--sae",
        dest="saes",
        action="append",
        default=argparse.SUPPRESS,
        metavar="ID=PATH",
        help="an SAE to load; repeat for several",
    )


# -------------------------------------------------------------------------------------------
# Building the typed object from plain data


def _sections() -> dict[str, type]:
    hints = _hints(ServerConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(ServerConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(kind: Any) -> Any:
    """``X | None`` -> X; anything else unchanged."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        (base,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return base
    return kind


def _build(cls: type, data: Any, where: str) -> Any:
    label = where or "config"
    _require(isinstance(data, Mapping), f"{label} must be a table, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    _require(
        not unknown,
        f"{label}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}",
    )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    _require(not missing, f"{label}: missing required key(s) {', '.join(missing)}")
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _convert(value: Any, kind: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        _require(isinstance(value, list | tuple), f"{where} must be a list")
        return tuple(_convert(item, item_kind, f"{where}[{i}]") for i, item in enumerate(value))
    base = _base_type(kind)
    if base is not kind and value in (None, ""):  # an optional setting left empty
        return None
    if isinstance(value, str) and base is not str and base is not Path:
        value = _parse_text(value, base, where)
    accepted = {int: (int,), float: (int, float), bool: (bool,), str: (str,), Path: (str, Path)}
    ok = isinstance(value, accepted[base]) and not (base is not bool and isinstance(value, bool))
    _require(ok, f"{where} must be {base.__name__}, got {value!r}")
    return base(value)


def _parse_text(text: str, base: type, where: str) -> Any:
    """Parses an environment variable or flag value."""
    if base is bool:
        lowered = text.strip().lower()
        _require(
            lowered in ("1", "true", "yes", "on", "0", "false", "no", "off"),
            f"{where} must be true or false, got {text!r}",
        )
        return lowered in ("1", "true", "yes", "on")
    try:
        return base(text)
    except ValueError as err:
        raise ConfigError(f"{where} must be {base.__name__}, got {text!r}") from err


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, section_cls in _sections().items():
        for f in dataclasses.fields(section_cls):
            name = f"{ENV_PREFIX}{section}_{f.name}".upper()
            if name in environ:
                out.setdefault(section, {})[f.name] = environ[name]
    if f"{ENV_PREFIX}DEFAULT_SAE_ID" in environ:
        out["default_sae_id"] = environ[f"{ENV_PREFIX}DEFAULT_SAE_ID"]
    if f"{ENV_PREFIX}SAES" in environ:
        try:
            out["saes"] = json.loads(environ[f"{ENV_PREFIX}SAES"])
        except ValueError as err:
            raise ConfigError(f"{ENV_PREFIX}SAES must be a JSON list of objects: {err}") from err
    return out


def _from_args(args: argparse.Namespace | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given = vars(args) if args is not None else {}
    sections = _sections()
    for dest, value in given.items():  # the parser may hold flags of its own: skip those
        section, _, key = dest.partition(".")
        if section in sections and key:
            out.setdefault(section, {})[key] = value
    if "default_sae_id" in given:
        out["default_sae_id"] = given["default_sae_id"]
    if "saes" in given:
        out["saes"] = [_parse_sae_flag(item) for item in given["saes"]]
    return out


def _parse_sae_flag(text: str) -> dict[str, str]:
    sae_id, sep, path = text.partition("=")
    _require(bool(sep and sae_id and path), f"--sae must read ID=PATH, got {text!r}")
    return {"id": sae_id, "path": path}
