"""The asyncio client: the methods of ``Client``, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from maira_sae.client import _convert
from maira_sae.client._base import ClientBase, health_request, health_status, variant_results
from maira_sae.client.batch import DEFAULT_CONCURRENCY, map_in_tasks
from maira_sae.client.errors import error_from_rpc
from maira_sae.client.requests import (
    Aggregation,
    GenerationSettings,
    Task,
    TokenFilter,
    Variant,
)
from maira_sae.client.results import (
    EncodeResult,
    Feature,
    GenerateEvent,
    SearchResult,
    ServerInfo,
    TopFeaturesResult,
    VariantResult,
)
from maira_sae.client.study import Study
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

R = TypeVar("R")


class AsyncGenerationStream:
    """The events of one GenerateSteered call, for ``async for``. ``close()`` (or leaving an
    ``async with`` block) cancels the call on the server."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, names: Sequence[str] = ()) -> None:
        self._call = call
        self._names = tuple(names)  # the variants' names, by index
        self._messages = call.__aiter__()
        self._closed = False

    def __aiter__(self) -> AsyncIterator[GenerateEvent]:
        return self

    async def __anext__(self) -> GenerateEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            return _convert.generate_event(await self._messages.__anext__(), self._names)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def close(self) -> None:
        """Cancels the call if it is still running; iteration then ends."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    async def results(self) -> list[VariantResult]:
        """Reads the stream to its end: the final result of every variant, by variant index."""
        return variant_results([event async for event in self])


class AsyncClient(ClientBase):
    """An asyncio maira-sae client; create it inside the event loop that uses it, and use it
    as an async context manager or ``await close()``."""

    def _open(self) -> None:
        self._channel = self.connection.open_aio_channel()
        self._stub = pb_grpc.MairaSaeStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _unary(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        parse: Callable[[Any], R],
        timeout: float | None,
    ) -> R:
        try:
            response = await method(request, **self._call_options(timeout))
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return parse(response)

    async def encode(
        self,
        study: Study,
        *,
        response: str | None = None,
        task: Task | None = None,
        sae_id: str = "",
        token_filter: TokenFilter | None = None,
        top_k_per_token: int = 0,
        matryoshka_level: int = 0,
        timeout: float | None = None,
    ) -> EncodeResult:
        """Per-token SAE features of the study, with ``response`` teacher-forced if given."""
        request = _convert.encode_request(
            study,
            task=task,
            response=response,
            sae_id=sae_id,
            token_filter=token_filter,
            top_k_per_token=top_k_per_token,
            matryoshka_level=matryoshka_level,
        )
        return await self._unary(self._stub.Encode, request, _convert.encode_result, timeout)

    async def encode_many(
        self,
        studies: Iterable[Study],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: bool = True,
        **encode_args: Any,
    ) -> list[EncodeResult]:
        """``encode`` of every study in order, at most ``concurrency`` at once (see
        ``Client.encode_many``)."""
        return await map_in_tasks(
            lambda study: self.encode(study, **encode_args),
            studies,
            concurrency=concurrency,
            progress=progress,
            what="encode",
        )

    async def top_features(
        self,
        study: Study,
        *,
        k: int = 0,
        aggregation: Aggregation = Aggregation.MAX,
        response: str | None = None,
        task: Task | None = None,
        sae_id: str = "",
        token_filter: TokenFilter | None = None,
        labelled_only: bool = False,
        matryoshka_level: int = 0,
        timeout: float | None = None,
    ) -> TopFeaturesResult:
        """The k (0: 20) features scoring highest over the selected tokens, and where; with
        ``labelled_only``, among the features the SAE's interpretations label; with
        ``matryoshka_level`` n, among the first n Matryoshka groups' features (0: all)."""
        request = _convert.top_features_request(
            study,
            task=task,
            response=response,
            sae_id=sae_id,
            aggregation=aggregation,
            token_filter=token_filter,
            k=k,
            labelled_only=labelled_only,
            matryoshka_level=matryoshka_level,
        )
        return await self._unary(
            self._stub.TopFeatures, request, _convert.top_features_result, timeout
        )

    def generate_steered(
        self,
        study: Study,
        variants: Sequence[Variant] = (),
        *,
        task: Task | None = None,
        settings: GenerationSettings | None = None,
        sae_id: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerationStream:
        """Starts a generation of one report per variant (none: one baseline)."""
        request = _convert.generate_request(
            study, variants=variants, task=task, settings=settings, sae_id=sae_id
        )
        call = self._stub.GenerateSteered(request, **self._call_options(timeout))
        return AsyncGenerationStream(call, [variant.name for variant in variants])

    async def generate_texts(
        self, study: Study, variants: Sequence[Variant] = (), **options: Any
    ) -> list[VariantResult]:
        """``await generate_steered(...).results()``: every variant's final report."""
        async with self.generate_steered(study, variants, **options) as stream:
            return await stream.results()

    async def info(self, *, timeout: float | None = None) -> ServerInfo:
        request = _convert.info_request()
        return await self._unary(self._stub.GetInfo, request, _convert.info_result, timeout)

    async def feature(
        self,
        feature: int,
        *,
        sae_id: str = "",
        include_decoder_row: bool = False,
        num_logits: int = 10,
        num_nearest: int = 10,
        timeout: float | None = None,
    ) -> Feature:
        """One feature: label and provenance, decoder norm, logit effects, nearest features,
        dashboard, decoder row on request (see ``Client.feature``)."""
        request = _convert.feature_request(
            feature,
            sae_id,
            include_decoder_row=include_decoder_row,
            num_logits=num_logits,
            num_nearest=num_nearest,
        )
        return await self._unary(self._stub.GetFeature, request, _convert.feature_result, timeout)

    async def search_features(
        self, query: str, *, limit: int = 0, sae_id: str = "", timeout: float | None = None
    ) -> SearchResult:
        request = _convert.search_request(query, limit, sae_id)
        return await self._unary(
            self._stub.SearchFeatures, request, _convert.search_result, timeout
        )

    async def search_by_activation(
        self, text: str, *, limit: int = 0, sae_id: str = "", timeout: float | None = None
    ) -> SearchResult:
        """The features that fire most on ``text`` (see ``Client.search_by_activation``)."""
        request = _convert.activation_search_request(text, limit, sae_id)
        return await self._unary(
            self._stub.SearchFeatures, request, _convert.search_result, timeout
        )

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name, e.g. "SERVING" ("" asks about the whole server)."""
        check = health_pb2_grpc.HealthStub(self._channel).Check
        return await self._unary(check, health_request(service), health_status, timeout)
