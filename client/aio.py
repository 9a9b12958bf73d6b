"""The asyncio client: each call of ``client/calls.py`` awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, ParamSpec, TypeVar

import grpc

from maira_sae.client import calls
from maira_sae.client._base import ClientBase, GenerationStreamBase, variant_results
from maira_sae.client.batch import map_in_tasks
from maira_sae.client.errors import error_from_rpc
from maira_sae.client.requests import Variant
from maira_sae.client.results import GenerateEvent, VariantResult
from maira_sae.client.study import Study

P = ParamSpec("P")
R = TypeVar("R")


class AsyncGenerationStream(GenerationStreamBase):
    """The events of one GenerateSteered call, for ``async for``. ``close()`` (or leaving an
    ``async with`` block) cancels the call on the server."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, names: Sequence[str] = ()) -> None:
        super().__init__(call, names)
        self._messages = call.__aiter__()

    def __aiter__(self) -> AsyncIterator[GenerateEvent]:
        return self

    async def __anext__(self) -> GenerateEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            return self._event(await self._messages.__anext__())
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    async def results(self) -> list[VariantResult]:
        """Reads the stream to its end: the final result of every variant, by variant index."""
        return variant_results([event async for event in self])


class AsyncClient(ClientBase):
    """An asyncio maira-sae client with the methods of ``Client``, awaited; create it inside
    the event loop that uses it, and use it as an async context manager or ``await close()``."""

    def _open_channel(self) -> grpc.aio.Channel:
        return self.connection.open_aio_channel()

    async def close(self) -> None:
        await self._channel.close()

    async def _run(self, call: calls.UnaryCall[R]) -> R:
        try:
            options = self._call_options(call.timeout, call.priority)
            response = await self._method(call)(call.request, **options)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return call.parse(response)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    encode = calls.awaited_client_method(calls.encode, _run)
    top_features = calls.awaited_client_method(calls.top_features, _run)
    _map_calls = staticmethod(map_in_tasks)
    info = calls.awaited_client_method(calls.info, _run)
    feature = calls.awaited_client_method(calls.feature, _run)

    async def generate_texts(
        self, study: Study, variants: Sequence[Variant] = (), **options: Any
    ) -> list[VariantResult]:
        """``await generate_steered(...).results()``: every variant's final report."""
        async with self.generate_steered(study, variants, **options) as stream:
            return await stream.results()

    search_features = calls.awaited_client_method(calls.search_features, _run)
    search_by_activation = calls.awaited_client_method(calls.search_by_activation, _run)
    health = calls.awaited_client_method(calls.health, _run)

    def _stream(self, call: calls.StreamCall) -> AsyncGenerationStream:
        return AsyncGenerationStream(self._start_stream(call), call.names)

    generate_steered = calls.client_method(calls.generate_steered, _stream, AsyncGenerationStream)
