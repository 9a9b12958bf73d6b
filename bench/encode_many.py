"""encode_many: a dataset of studies encoded through the blocking SDK at concurrency 1, 4 and
16 against the demo server, in studies per second, with the speed-ups over concurrency 1 from
the same run (the variants interleave: 1 4 16, 16 4 1, ...).

The studies are different synthetic world films with the same prompt (so the same length),
as a researcher's dataset would be sent: PNG bytes, top 32 features per token. Informational:
how much more a dataset goes through when encode_many keeps several calls in flight, which
depends on the server's batching and on the machine (on 2 CPU cores a batch gains little).
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.harness import check, interleaved, median, timed
from maira_sae.client import Client, Study

CONCURRENCY = (1, 4, 16)
TOP_K_PER_TOKEN = 32


def dataset(count: int) -> list[Study]:
    from maira_sae.server.demo.world.studies import world_dataset

    return [Study.of(s.frontal, indication="Follow-up.") for s in world_dataset(count, seed=16)]


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 2 if quick else 3
    studies = dataset(16 if quick else 48)
    with Client(service.target) as client:

        def encode_all(concurrency: int) -> object:
            return client.encode_many(
                studies, concurrency=concurrency, progress=False, top_k_per_token=TOP_K_PER_TOKEN
            )

        encode_all(4)  # warm the channel and the server's allocator
        samples = interleaved(
            {str(n): timed(lambda n=n: encode_all(n)) for n in CONCURRENCY}, repeats
        )
    seconds = {n: median(samples[str(n)]) for n in CONCURRENCY}
    rates = {n: len(studies) / s for n, s in seconds.items()}
    batching = service.running.server.config.batching
    return {
        "bench": "encode_many",
        "studies": len(studies),
        "max_batch_size": batching.max_batch_size,
        "batch_window_ms": batching.batch_window_ms,
        "studies_per_second": {str(n): rate for n, rate in rates.items()},
        "checks": [
            check(
                f"encode_many_concurrency_{n}_over_1",
                rates[n] / rates[1],
                None,
                median_s=seconds[n],
                concurrency_1_median_s=seconds[1],
                repeats=repeats,
            )
            for n in CONCURRENCY[1:]
        ],
    }


def main() -> None:
    run_against_demo_service(run, __doc__ or "")


if __name__ == "__main__":
    main()
