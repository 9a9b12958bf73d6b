"""What ``Client`` and ``AsyncClient`` share: the connection settings and per-call options."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from maira_sae.client.connection import Connection, RetryPolicy, TlsFiles
from maira_sae.client.results import GenerateEvent, VariantResult

_DEFAULT_RETRY = RetryPolicy()


TARGET_ENV = "MAIRA_SAE_TARGET"


class ClientBase:
    """``target`` is ``host:port`` or ``dns:///name:port`` (empty: the ``MAIRA_SAE_TARGET``
    environment variable, as the command line reads it); the other arguments are those of
    ``Connection`` (or pass a whole ``connection``). Every method takes ``timeout`` (seconds)
    to override the default deadline and raises a ``MairaSaeError`` subclass on failure."""

    def __init__(
        self,
        target: str = "",
        *,
        tls: TlsFiles | None = None,
        token: str | None = None,
        timeout_s: float | None = 60.0,
        retry: RetryPolicy | None = _DEFAULT_RETRY,
        metadata: Sequence[tuple[str, str]] = (),
        connection: Connection | None = None,
    ) -> None:
        target = target or os.environ.get(TARGET_ENV, "")
        if connection is None and not target:
            raise ValueError(
                f"give a target (host:port or dns:///name:port), set {TARGET_ENV}, "
                "or give a connection"
            )
        self.connection = connection or Connection(
            target=target,
            tls=tls,
            token=token,
            timeout_s=timeout_s,
            retry=retry,
            metadata=tuple(metadata),
        )
        self._open()

    def _open(self) -> None:
        """Opens the channel and its stubs; each client flavour has its own channel type."""
        raise NotImplementedError

    def _call_options(self, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": self.connection.timeout(timeout),
            "metadata": self.connection.call_metadata(),
        }


def health_request(service: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def health_status(response: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def variant_results(events: Iterable[GenerateEvent]) -> list[VariantResult]:
    """The final results among the events, by variant index."""
    finished = [event for event in events if isinstance(event, VariantResult)]
    return sorted(finished, key=lambda result: result.variant_index)
