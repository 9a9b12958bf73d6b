"""Batching: Encode requests per second with 1, 4, 16 and 32 concurrent clients.

Each client is a coroutine on one ``AsyncClient`` channel that sends its next Encode as soon as
the last one returns, for a fixed number of requests per client. The server runs with its
default batching settings, so concurrent Encodes share forward passes. Target: 16 concurrent
clients reach at least 3x the throughput of one. The in-process ceiling (one forward over 8
studies versus 8 forwards) says how much a batch can gain on this machine at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.harness import at_least, check, interleaved, median, timed
from maira_sae.client import AsyncClient
from maira_sae.server.engine.types import EncodeRequest

CONCURRENCY = (1, 4, 16, 32)
QUICK_CONCURRENCY = (1, 4, 16)
TARGET = at_least(3.0)
TOP_K_PER_TOKEN = 32
ENGINE_BATCH = 8


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 1 if quick else 2
    concurrency = QUICK_CONCURRENCY if quick else CONCURRENCY
    # Every client sends at least one request and every round spans several batches.
    least = 8 if quick else 16

    def throughput(clients: int) -> float:
        requests = max(least, clients)
        return asyncio.run(_requests_per_second(service, clients, requests))

    asyncio.run(_requests_per_second(service, 4, 4))  # warm-up
    samples = interleaved({str(n): (lambda n=n: throughput(n)) for n in concurrency}, repeats)
    rates = {n: median(samples[str(n)]) for n in concurrency}
    batching = service.running.server.config.batching
    return {
        "bench": "batching",
        "max_batch_size": batching.max_batch_size,
        "batch_window_ms": batching.batch_window_ms,
        "requests_per_second": {str(n): rate for n, rate in rates.items()},
        "checks": [
            check(
                "throughput_16_clients_over_1",
                rates[16] / rates[1],
                TARGET,
                speedup_by_clients={str(n): rates[n] / rates[1] for n in concurrency},
                repeats=repeats,
            ),
            _engine_batch_ceiling(service, repeats=2 if quick else 3),
        ],
    }


def _engine_batch_ceiling(service: DemoService, *, repeats: int) -> dict[str, Any]:
    """What batching can gain at most here: one forward over ENGINE_BATCH studies versus
    ENGINE_BATCH forwards of one, on the engine in-process (no transport, no queue)."""
    engine = service.engine
    prepared = engine.prepare_analysis(
        EncodeRequest(study=service.study, top_k_per_token=TOP_K_PER_TOKEN)
    )
    samples = interleaved(
        {
            "one_by_one": timed(lambda: [engine.analyse([prepared]) for _ in range(ENGINE_BATCH)]),
            "batched": timed(lambda: engine.analyse([prepared] * ENGINE_BATCH)),
        },
        repeats,
    )
    one_by_one, batched = median(samples["one_by_one"]), median(samples["batched"])
    return check(
        f"engine_batch_{ENGINE_BATCH}_speedup_in_process",
        one_by_one / batched,
        None,
        one_by_one_median_s=one_by_one,
        batched_median_s=batched,
        repeats=repeats,
    )


async def _requests_per_second(service: DemoService, clients: int, requests: int) -> float:
    """``requests`` Encodes spread over ``clients`` concurrent callers; requests per second."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    async with AsyncClient(service.target) as client:

        async def caller(count: int) -> None:
            for _ in range(count):
                await client.encode(service.client_study, top_k_per_token=TOP_K_PER_TOKEN)

        started = time.perf_counter()
        await asyncio.gather(*(caller(count) for count in per_client))
        return requests / (time.perf_counter() - started)


def main() -> None:
    run_against_demo_service(run, __doc__ or "")


if __name__ == "__main__":
    main()
