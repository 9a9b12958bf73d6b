"""Fair sharing on a real server: a short generation completes while long ones hold the
engine (the long call that waits for rows does not hold it back), batch-marked calls yield
to an interactive one, long calls without deadlines leave a queue place to short calls, and
the priority metadata is checked."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import SMALL_PNG, StreamOnThread, scrape_metrics, study
from tests.support.waiting import wait_until

PRIORITY = "x-maira-sae-priority"
BATCH = ((PRIORITY, "batch"),)
ROWS = 4  # decode rows; long calls may take 3 of them, short calls all 4
WITHIN_S = 60.0


@pytest.fixture(scope="module")
def fair_server(demo_checkpoint):
    from maira_sae.server.service.config import BatchingConfig
    from tests.support.servers import demo_config, running_server

    batching = BatchingConfig(
        max_decode_rows=ROWS, short_call_rows=1, long_call_tokens=64, long_call_share=1.0
    )
    with running_server(replace(demo_config(demo_checkpoint), batching=batching)) as server:
        yield server


@pytest.fixture(scope="module")
def stub(fair_server) -> Iterator[pb_grpc.MairaSaeServiceStub]:
    with grpc.insecure_channel(fair_server.target) as channel:
        yield pb_grpc.MairaSaeServiceStub(channel)


def waiting_prefill_tokens(server) -> float:
    return scrape_metrics(server.ports.metrics)["maira_sae_waiting_prefill_tokens"]


@pytest.mark.slow
def test_a_short_call_completes_while_long_ones_hold_the_engine(fair_server, stub):
    first = StreamOnThread(stub, variants=2, tokens=1024)  # 2 rows of 1024 tokens: a long call
    wait_until(lambda: first.tokens > 0, WITHIN_S, what="the first long call to run")
    second = StreamOnThread(stub, variants=2, tokens=1024)  # 2 more rows: over the 3 long calls get
    try:
        wait_until(lambda: waiting_prefill_tokens(fair_server) > 0, WITHIN_S, what="a wait")
        short = StreamOnThread(stub, variants=1, tokens=4)
        short.thread.join(WITHIN_S)
        assert short.complete
        assert first.finished == 0 and second.tokens == 0  # the long calls still hold on
    finally:
        first.cancel()
        second.cancel()
    wait_until(lambda: second.code is not None, WITHIN_S)


@pytest.mark.slow
def test_batch_marked_calls_yield_to_an_interactive_one(fair_server, stub):
    long = StreamOnThread(stub, variants=3, tokens=1024)  # every row a long call may take
    wait_until(lambda: long.tokens > 0, WITHIN_S, what="the long call to run")
    batch = [StreamOnThread(stub, variants=1, tokens=4, metadata=BATCH) for _ in range(2)]
    try:
        wait_until(
            lambda: waiting_prefill_tokens(fair_server) >= 2 * 1000, WITHIN_S, what="the batch"
        )
        interactive = StreamOnThread(stub, variants=1, tokens=4)
        interactive.thread.join(WITHIN_S)
        assert interactive.complete
        assert [call.tokens for call in batch] == [0, 0]  # still waiting their turn
    finally:
        long.cancel()
    for call in batch:
        call.thread.join(WITHIN_S)
        assert call.complete  # and served once the rows free up


@pytest.mark.parametrize("value", ["urgent", "BATCH", ""])
def test_an_unknown_priority_is_invalid_argument_naming_the_known_ones(stub, value):
    request = pb.EncodeRequest(study=study(SMALL_PNG))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Encode(request, timeout=30, metadata=((PRIORITY, value),))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"{PRIORITY} is {value!r}; known values: interactive, batch" in refused.value.details()


def test_a_batch_marked_encode_is_served(stub):
    reply = stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG)), timeout=60, metadata=BATCH)
    assert reply.total_tokens > 0


@pytest.fixture(scope="module")
def four_place_server(demo_checkpoint):
    """The issue's server: a queue of 4, default shares (3 places for long calls)."""
    from maira_sae.server.service.config import BatchingConfig
    from tests.support.servers import demo_config, running_server

    config = replace(demo_config(demo_checkpoint), batching=BatchingConfig(queue_size=4))
    with running_server(config) as server:
        yield server


@pytest.mark.slow
def test_long_calls_without_deadlines_cannot_take_every_place(four_place_server):
    with grpc.insecure_channel(four_place_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        holders = [
            StreamOnThread(stub, variants=2, tokens=1024) for _ in range(3)
        ]  # no deadline set
        try:
            wait_until(lambda: all(h.tokens > 0 for h in holders), WITHIN_S, what="3 long calls")
            one_more = StreamOnThread(stub, variants=2, tokens=1024)
            one_more.thread.join(WITHIN_S)
            assert one_more.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            details = one_more.call.details()
            assert "places for long and batch calls are taken (3 of 4" in details
            reply = stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG)), timeout=WITHIN_S)
            assert reply.total_tokens > 0  # the place kept for short calls
            assert all(h.code is None for h in holders)  # still streaming
        finally:
            for holder in holders:
                holder.cancel()
