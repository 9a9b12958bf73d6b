"""Every call of the service, written once for ``Client`` and ``AsyncClient``.

A function here takes a call's arguments and returns what to send and how to read the answer (a
``UnaryCall``, or a ``StreamCall`` for GenerateSteered); it never touches the network. Each
client turns these functions into its methods (``Client`` blocking in sync.py, ``AsyncClient``
awaited in aio.py) with ``client_method``, which gives the method the function's name,
signature and docstring: the signatures and docstrings of the SDK are the ones written here.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from grpc_health.v1 import health_pb2

from maira_sae.client import _convert
from maira_sae.client.requests import (
    Aggregation,
    GenerationSettings,
    Priority,
    Task,
    TokenFilter,
    Variant,
)
from maira_sae.client.results import (
    EncodeResult,
    Feature,
    SearchResult,
    ServerInfo,
    TopFeaturesResult,
)
from maira_sae.client.study import Study

R = TypeVar("R")


class Service(enum.Enum):
    MAIRA_SAE = "maira_sae.v1.MairaSaeService"
    HEALTH = "grpc.health.v1.Health"


@dataclass(frozen=True)
class UnaryCall(Generic[R]):
    """One request, one answer: ``rpc`` of ``service`` with ``request``, read by ``parse``."""

    rpc: str
    request: Any
    parse: Callable[[Any], R]
    timeout: float | None
    service: Service = Service.MAIRA_SAE
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True)
class StreamCall:
    """A GenerateSteered call; ``names`` are the variants' names, by index."""

    request: Any
    names: tuple[str, ...]
    timeout: float | None


def encode(
    study: Study,
    *,
    response: str | None = None,
    task: Task | None = None,
    sae_id: str = "",
    token_filter: TokenFilter | None = None,
    top_k_per_token: int = 0,
    matryoshka_level: int = 0,
    timeout: float | None = None,
    priority: Priority = Priority.INTERACTIVE,
) -> UnaryCall[EncodeResult]:
    """Per-token SAE features of the study, with ``response`` teacher-forced if given;
    ``priority`` BATCH lets interactive callers go first (``encode_many``'s default)."""
    request = _convert.encode_request(
        study,
        task=task,
        response=response,
        sae_id=sae_id,
        token_filter=token_filter,
        top_k_per_token=top_k_per_token,
        matryoshka_level=matryoshka_level,
    )
    return UnaryCall("Encode", request, _convert.encode_result, timeout, priority=priority)


def top_features(
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
    priority: Priority = Priority.INTERACTIVE,
) -> UnaryCall[TopFeaturesResult]:
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
    return UnaryCall(
        "TopFeatures", request, _convert.top_features_result, timeout, priority=priority
    )


def generate_steered(
    study: Study,
    variants: Sequence[Variant] = (),
    *,
    task: Task | None = None,
    settings: GenerationSettings | None = None,
    sae_id: str = "",
    timeout: float | None = None,
) -> StreamCall:
    """Starts a generation of one report per variant (none: one baseline): a stream of
    ``TokenEvent`` for each token of each variant, then a ``VariantResult`` per variant;
    closing the stream cancels the call on the server."""
    request = _convert.generate_request(
        study, variants=variants, task=task, settings=settings, sae_id=sae_id
    )
    return StreamCall(request, tuple(variant.name for variant in variants), timeout)


def info(*, timeout: float | None = None) -> UnaryCall[ServerInfo]:
    """The server's model, SAEs, limits and versions."""
    return UnaryCall("GetInfo", _convert.info_request(), _convert.info_result, timeout)


def feature(
    feature: int,
    *,
    sae_id: str = "",
    include_decoder_row: bool = False,
    num_logits: int = 10,
    num_nearest: int = 10,
    timeout: float | None = None,
) -> UnaryCall[Feature]:
    """One feature: label with its provenance, decoder norm, logit effects (``num_logits``
    promoted and suppressed tokens), its ``num_nearest`` nearest features by decoder cosine,
    its dashboard where one was built, and with ``include_decoder_row`` its decoder row
    (d_model float32)."""
    request = _convert.feature_request(
        feature,
        sae_id,
        include_decoder_row=include_decoder_row,
        num_logits=num_logits,
        num_nearest=num_nearest,
    )
    return UnaryCall("GetFeature", request, _convert.get_feature_result, timeout)


def search_features(
    query: str, *, limit: int = 0, sae_id: str = "", timeout: float | None = None
) -> UnaryCall[SearchResult]:
    """The features whose interpretations match ``query`` best: exact, then phrase, then
    partial matches, each ordered by interpretation score (``limit`` 0: the server's default)."""
    request = _convert.search_request(query, limit, sae_id)
    return UnaryCall("SearchFeatures", request, _convert.search_result, timeout)


def search_by_activation(
    text: str, *, limit: int = 0, sae_id: str = "", timeout: float | None = None
) -> UnaryCall[SearchResult]:
    """The features that fire most on ``text`` run through the language model (labelled or
    not), strongest first, each with the token where it peaks."""
    request = _convert.activation_search_request(text, limit, sae_id)
    return UnaryCall("SearchFeatures", request, _convert.search_result, timeout)


def health(service: str = "", *, timeout: float | None = None) -> UnaryCall[str]:
    """The grpc.health.v1 status name, e.g. "SERVING" ("" asks about the whole server)."""
    request = health_pb2.HealthCheckRequest(service=service)
    return UnaryCall("Check", request, _health_status, timeout, Service.HEALTH)


def _health_status(response: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


P = ParamSpec("P")
C = TypeVar("C")
A = TypeVar("A")


def client_method(
    call: Callable[P, C], run: Callable[[Any, C], A], returns: Any = None
) -> Callable[Concatenate[Any, P], A]:
    """``call`` as a client method that gives what ``run`` makes of it."""

    def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> A:
        return run(self, call(*args, **kwargs))

    return _dressed(method, call, returns)


def awaited_client_method(
    call: Callable[P, C], run: Callable[[Any, C], Awaitable[A]]
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, A]]:
    """``client_method`` for an asyncio client: a coroutine method."""

    async def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> A:
        return await run(self, call(*args, **kwargs))

    return _dressed(method, call, None)


M = TypeVar("M", bound=Callable[..., Any])


def _dressed(method: M, call: Callable[..., Any], returns: Any) -> M:
    """``method`` under ``call``'s name, docstring and signature, with ``self`` first and
    ``returns`` as the answer's type (None: the ``R`` of the ``UnaryCall[R]`` ``call`` makes)."""
    signature = inspect.signature(call)
    if returns is None:
        (returns,) = typing.get_args(typing.get_type_hints(call)["return"])
    receiver = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[receiver, *signature.parameters.values()], return_annotation=returns
    )
    method.__name__ = call.__name__
    method.__qualname__ = call.__name__
    method.__doc__ = call.__doc__
    return method
