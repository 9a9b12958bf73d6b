"""How the SDK connects: target, TLS and mTLS, bearer token, deadlines, retries, balancing.

Retries are gRPC core's own, configured by the channel's service config, so they also cover
attempts the SDK never sees (a connection that fails before any byte is sent). Core retries a
call only while no response message has arrived, and it waits ``grpc-retry-pushback-ms`` when
the server sends that trailer. It does not read the google.rpc.RetryInfo detail: the maira-sae
server sends both with the same delay on RESOURCE_EXHAUSTED, so the server's delay is honoured;
a server that sent RetryInfo alone would get exponential backoff instead. When every attempt
fails the error carries ``retry_after_s`` from RetryInfo for the caller to act on.

``dns:///name:port`` resolves every address of a headless Kubernetes service and the default
``round_robin`` policy spreads calls over them; a plain ``host:port`` works the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc

SERVICE_NAME = "maira_sae.v1.MairaSaeService"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: the n-th retry waits a random time in
    [0, min(initial_backoff_s * multiplier**(n-1), max_backoff_s)] unless the server pushes
    back with its own delay. gRPC core allows at most 5 attempts."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[grpc.StatusCode, ...] = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be 2..5 (gRPC's cap), got {self.max_attempts}")
        if not (0 < self.initial_backoff_s <= self.max_backoff_s and self.backoff_multiplier > 0):
            raise ValueError(f"backoff must be 0 < initial <= max, multiplier > 0: {self}")

    def to_service_config(self) -> dict[str, object]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s:.9f}s",
            "maxBackoff": f"{self.max_backoff_s:.9f}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": [code.name for code in self.retryable_codes],
        }


@dataclass(frozen=True)
class TlsFiles:
    """PEM files. No ``ca_file``: the system's roots. ``cert_file`` and ``key_file`` together
    present a client certificate (mTLS). ``server_name`` overrides the name checked against
    the server's certificate (when connecting by IP or through a tunnel)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS cert_file and key_file must be given together (mTLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class Connection:
    """Everything a client needs to reach a server; one per ``Client`` or ``AsyncClient``.

    ``timeout_s`` is the default deadline of each call (a whole stream for generation); None:
    no deadline. ``retry`` None turns retries off. ``metadata`` is sent with every call.
    """

    target: str
    tls: TlsFiles | None = None
    token: str | None = field(default=None, repr=False)
    timeout_s: float | None = 60.0
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    load_balancing: str = "round_robin"
    max_message_bytes: int = 256 * _MIB
    metadata: tuple[tuple[str, str], ...] = ()

    def service_config(self) -> str:
        method_config: dict[str, object] = {"name": [{"service": SERVICE_NAME}]}
        if self.retry is not None:
            method_config["retryPolicy"] = self.retry.to_service_config()
        return json.dumps(
            {
                "loadBalancingConfig": [{self.load_balancing: {}}],
                "methodConfig": [method_config],
            }
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [
            ("grpc.service_config", self.service_config()),
            # The service config above wins over whatever a DNS TXT record might say.
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.enable_retries", int(self.retry is not None)),
            # Core replays a request only if it still holds all of it: studies are megabytes,
            # far over the 256 KiB default, and would silently never be retried.
            ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return (*auth, *self.metadata)

    def timeout(self, override: float | None) -> float | None:
        """The deadline of one call in seconds: the override, else the default."""
        return override if override is not None else self.timeout_s

    def open_channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.channel_options())
        return grpc.secure_channel(
            self.target, self.tls.credentials(), options=self.channel_options()
        )

    def open_aio_channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.channel_options())
        return grpc.aio.secure_channel(
            self.target, self.tls.credentials(), options=self.channel_options()
        )


def read_token_file(path: str | Path) -> str:
    """A bearer token from a file (e.g. a mounted Kubernetes Secret), whitespace stripped."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
