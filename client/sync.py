"""The blocking client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from maira_sae.client import _convert
from maira_sae.client._base import ClientBase, health_request, health_status, variant_results
from maira_sae.client.batch import DEFAULT_CONCURRENCY, map_in_threads
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


class GenerationStream:
    """The events of one GenerateSteered call as they arrive: ``TokenEvent`` for each token of
    each variant, then a ``VariantResult`` per variant. ``close()`` (or leaving a ``with``
    block) cancels the call on the server."""

    def __init__(self, call: Any, names: Sequence[str] = ()) -> None:
        self._call = call  # a grpc call that is also an iterator of GenerateEvent messages
        self._names = tuple(names)  # the variants' names, by index
        self._closed = False

    def __iter__(self) -> Iterator[GenerateEvent]:
        return self

    def __next__(self) -> GenerateEvent:
        if self._closed:
            raise StopIteration
        try:
            return _convert.generate_event(next(self._call), self._names)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def close(self) -> None:
        """Cancels the call if it is still running; iteration then ends."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def results(self) -> list[VariantResult]:
        """Reads the stream to its end: the final result of every variant, by variant index."""
        return variant_results(self)


class Client(ClientBase):
    """A blocking maira-sae client; use it as a context manager or call ``close()``."""

    def _open(self) -> None:
        self._channel = self.connection.open_channel()
        self._stub = pb_grpc.MairaSaeStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _unary(
        self,
        method: Callable[..., Any],
        request: Any,
        parse: Callable[[Any], R],
        timeout: float | None,
    ) -> R:
        try:
            response = method(request, **self._call_options(timeout))
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return parse(response)

    def encode(
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
        return self._unary(self._stub.Encode, request, _convert.encode_result, timeout)

    def encode_many(
        self,
        studies: Iterable[Study],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: bool = True,
        **encode_args: Any,
    ) -> list[EncodeResult]:
        """``encode`` of every study, ``encode_args`` for each, at most ``concurrency`` calls
        in flight; results in the studies' order, progress on stderr (see client/batch.py)."""
        return map_in_threads(
            lambda study: self.encode(study, **encode_args),
            studies,
            concurrency=concurrency,
            progress=progress,
            what="encode",
        )

    def top_features(
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
        return self._unary(self._stub.TopFeatures, request, _convert.top_features_result, timeout)

    def generate_steered(
        self,
        study: Study,
        variants: Sequence[Variant] = (),
        *,
        task: Task | None = None,
        settings: GenerationSettings | None = None,
        sae_id: str = "",
        timeout: float | None = None,
    ) -> GenerationStream:
        """Starts a generation of one report per variant (none: one baseline)."""
        request = _convert.generate_request(
            study, variants=variants, task=task, settings=settings, sae_id=sae_id
        )
        call = self._stub.GenerateSteered(request, **self._call_options(timeout))
        return GenerationStream(call, [variant.name for variant in variants])

    def generate_texts(
        self, study: Study, variants: Sequence[Variant] = (), **options: Any
    ) -> list[VariantResult]:
        """``generate_steered(...).results()``: every variant's final report, by index."""
        with self.generate_steered(study, variants, **options) as stream:
            return stream.results()

    def info(self, *, timeout: float | None = None) -> ServerInfo:
        request = _convert.info_request()
        return self._unary(self._stub.GetInfo, request, _convert.info_result, timeout)

    def feature(
        self,
        feature: int,
        *,
        sae_id: str = "",
        include_decoder_row: bool = False,
        num_logits: int = 10,
        num_nearest: int = 10,
        timeout: float | None = None,
    ) -> Feature:
        """One feature: label with its provenance, decoder norm, logit effects (``num_logits``
        promoted and suppressed tokens), its ``num_nearest`` nearest features by decoder
        cosine, its dashboard where one was built, and with ``include_decoder_row`` its decoder
        row (d_model float32)."""
        request = _convert.feature_request(
            feature,
            sae_id,
            include_decoder_row=include_decoder_row,
            num_logits=num_logits,
            num_nearest=num_nearest,
        )
        return self._unary(self._stub.GetFeature, request, _convert.feature_result, timeout)

    def search_features(
        self, query: str, *, limit: int = 0, sae_id: str = "", timeout: float | None = None
    ) -> SearchResult:
        """Features whose labels match ``query``: exact, then phrase, then partial matches."""
        request = _convert.search_request(query, limit, sae_id)
        return self._unary(self._stub.SearchFeatures, request, _convert.search_result, timeout)

    def search_by_activation(
        self, text: str, *, limit: int = 0, sae_id: str = "", timeout: float | None = None
    ) -> SearchResult:
        """The features that fire most on ``text`` run through the language model (labelled
        or not), strongest first, each with the token where it peaks."""
        request = _convert.activation_search_request(text, limit, sae_id)
        return self._unary(self._stub.SearchFeatures, request, _convert.search_result, timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name, e.g. "SERVING" ("" asks about the whole server)."""
        check = health_pb2_grpc.HealthStub(self._channel).Check
        return self._unary(check, health_request(service), health_status, timeout)
