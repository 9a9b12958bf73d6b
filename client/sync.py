"""The blocking client: each call of ``client/calls.py`` run to its answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import grpc

from maira_sae.client import calls
from maira_sae.client._base import ClientBase, GenerationStreamBase, variant_results
from maira_sae.client.batch import map_in_threads
from maira_sae.client.errors import error_from_rpc
from maira_sae.client.requests import Variant
from maira_sae.client.results import GenerateEvent, VariantResult
from maira_sae.client.study import Study

P = ParamSpec("P")
R = TypeVar("R")


class GenerationStream(GenerationStreamBase):
    """The events of one GenerateSteered call as they arrive: ``TokenEvent`` for each token of
    each variant, then a ``VariantResult`` per variant. ``close()`` (or leaving a ``with``
    block) cancels the call on the server."""

    def __iter__(self) -> Iterator[GenerateEvent]:
        return self

    def __next__(self) -> GenerateEvent:
        if self._closed:
            raise StopIteration
        try:
            return self._event(next(self._call))
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def results(self) -> list[VariantResult]:
        """Reads the stream to its end: the final result of every variant, by variant index."""
        return variant_results(self)


class Client(ClientBase):
    """A blocking maira-sae client; use it as a context manager or call ``close()``."""

    def _open_channel(self) -> grpc.Channel:
        return self.connection.open_channel()

    def close(self) -> None:
        self._channel.close()

    def _run(self, call: calls.UnaryCall[R]) -> R:
        try:
            options = self._call_options(call.timeout, call.priority)
            response = self._method(call)(call.request, **options)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return call.parse(response)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    encode = calls.client_method(calls.encode, _run)
    top_features = calls.client_method(calls.top_features, _run)
    _map_calls = staticmethod(map_in_threads)
    info = calls.client_method(calls.info, _run)
    feature = calls.client_method(calls.feature, _run)

    def generate_texts(
        self, study: Study, variants: Sequence[Variant] = (), **options: Any
    ) -> list[VariantResult]:
        """``generate_steered(...).results()``: every variant's final report, by index."""
        with self.generate_steered(study, variants, **options) as stream:
            return stream.results()

    search_features = calls.client_method(calls.search_features, _run)
    search_by_activation = calls.client_method(calls.search_by_activation, _run)
    health = calls.client_method(calls.health, _run)

    def _stream(self, call: calls.StreamCall) -> GenerationStream:
        return GenerationStream(self._start_stream(call), call.names)

    generate_steered = calls.client_method(calls.generate_steered, _stream, GenerationStream)
