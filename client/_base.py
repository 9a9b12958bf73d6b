"""What ``Client`` and ``AsyncClient`` share: the connection settings, the stubs, per-call
options and the generation stream's state."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from grpc_health.v1 import health_pb2_grpc

from maira_sae.client import _convert
from maira_sae.client.batch import DEFAULT_CONCURRENCY
from maira_sae.client.calls import Service, StreamCall, UnaryCall
from maira_sae.client.connection import Connection, RetryPolicy, TlsFiles
from maira_sae.client.requests import PRIORITY_METADATA_KEY, Priority
from maira_sae.client.results import EncodeResult, GenerateEvent, VariantResult
from maira_sae.client.study import Study
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

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
        self._channel = self._open_channel()
        self._stubs: dict[Service, Any] = {
            Service.MAIRA_SAE: pb_grpc.MairaSaeServiceStub(self._channel),
            Service.HEALTH: health_pb2_grpc.HealthStub(self._channel),
        }

    def _open_channel(self) -> Any:
        """Each client flavour has its own channel type."""
        raise NotImplementedError

    def _method(self, call: UnaryCall[Any]) -> Callable[..., Any]:
        return getattr(self._stubs[call.service], call.rpc)

    def _start_stream(self, call: StreamCall) -> Any:
        stub = self._stubs[Service.MAIRA_SAE]
        return stub.GenerateSteered(call.request, **self._call_options(call.timeout))

    _map_calls: Callable[..., Any]  # the flavour's batch runner (client/batch.py)

    def encode_many(
        self,
        studies: Iterable[Study],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: bool = True,
        **encode_args: Any,
    ) -> list[EncodeResult]:
        """``encode`` of every study, ``encode_args`` for each, at most ``concurrency`` calls
        in flight; results in the studies' order, progress on stderr (see client/batch.py).
        The calls are marked ``Priority.BATCH`` (unless ``encode_args`` says otherwise), so
        the server serves interactive callers first. ``AsyncClient``'s is awaited."""
        encode_args.setdefault("priority", Priority.BATCH)
        return self._map_calls(
            lambda study: self.encode(study, **encode_args),  # type: ignore[attr-defined]
            studies,
            concurrency=concurrency,
            progress=progress,
            what="encode",
        )

    def _call_options(
        self, timeout: float | None, priority: Priority = Priority.INTERACTIVE
    ) -> dict[str, Any]:
        metadata = self.connection.call_metadata()
        if priority is not Priority.INTERACTIVE:
            metadata = (*metadata, (PRIORITY_METADATA_KEY, priority.value))
        return {"timeout": self.connection.timeout(timeout), "metadata": metadata}


class GenerationStreamBase:
    """The events of one GenerateSteered call: ``TokenEvent`` for each token of each variant,
    then a ``VariantResult`` per variant. ``close()`` cancels the call on the server."""

    def __init__(self, call: Any, names: Sequence[str] = ()) -> None:
        self._call = call  # a grpc call whose messages are GenerateEvent
        self._names = tuple(names)  # the variants' names, by index
        self._closed = False

    def close(self) -> None:
        """Cancels the call if it is still running; iteration then ends."""
        self._closed = True
        self._call.cancel()

    def _event(self, message: Any) -> GenerateEvent:
        return _convert.generate_event(message, self._names)


def variant_results(events: Iterable[GenerateEvent]) -> list[VariantResult]:
    """The final results among the events, by variant index."""
    finished = [event for event in events if isinstance(event, VariantResult)]
    return sorted(finished, key=lambda result: result.variant_index)
