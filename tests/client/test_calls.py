"""The calls are written once (client/calls.py): both clients expose each under the same
signature and docstring, blocking in one and awaited in the other."""

from __future__ import annotations

import inspect

import pytest

from maira_sae.client import AsyncClient, AsyncGenerationStream, Client, GenerationStream, calls
from maira_sae.client.requests import Aggregation
from maira_sae.client.results import EncodeResult, TopFeaturesResult
from maira_sae.v1 import maira_sae_pb2 as pb

UNARY = ["encode", "top_features", "info", "feature", "search_features", "health"]


@pytest.mark.parametrize("name", [*UNARY, "generate_steered"])
def test_both_clients_have_the_call_s_signature_and_docstring(name):
    call = getattr(calls, name)
    for client in (Client, AsyncClient):
        method = getattr(client, name)
        assert method.__doc__ == call.__doc__ and method.__doc__
        assert method.__name__ == name
        parameters = list(inspect.signature(method).parameters)
        assert parameters == ["self", *inspect.signature(call).parameters]


def test_blocking_methods_answer_and_async_methods_are_awaited():
    assert inspect.signature(Client.encode).return_annotation is EncodeResult
    assert inspect.signature(AsyncClient.top_features).return_annotation is TopFeaturesResult
    assert inspect.signature(Client.generate_steered).return_annotation is GenerationStream
    streams = inspect.signature(AsyncClient.generate_steered).return_annotation
    assert streams is AsyncGenerationStream
    for name in UNARY:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name))
        assert not inspect.iscoroutinefunction(getattr(Client, name))


def test_a_call_is_a_request_and_its_reader_without_the_network(study):
    call = calls.top_features(study, k=3, aggregation=Aggregation.MEAN, timeout=5.0)
    assert (call.rpc, call.service, call.timeout) == ("TopFeatures", calls.Service.MAIRA_SAE, 5.0)
    assert isinstance(call.request, pb.TopFeaturesRequest) and call.request.k == 3
    health = calls.health("maira_sae.v1.MairaSaeService")
    assert (health.rpc, health.service) == ("Check", calls.Service.HEALTH)
    assert health.request.service == "maira_sae.v1.MairaSaeService"
