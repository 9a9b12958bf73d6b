"""Many callers at once, through the client SDK over loopback (issue: the engine serves many
callers at once). In one run, interleaved:

- Encode latency while 4 GenerateSteered calls stream, over idle Encode latency (<= 3);
- 4 concurrent single-variant generations, over the same 4 one by one (<= 0.7);
- time to first token of a call that joins 8 running streams, over the same on an idle
  server (reported, no target).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.harness import at_most, check, interleaved, median, timed
from maira_sae.client import Client, GenerationSettings, TokenEvent

ENCODE_TARGET = at_most(3.0)
CONCURRENT_TARGET = at_most(0.7)


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 2 if quick else 4
    tokens = 16 if quick else 48
    settings = GenerationSettings(max_new_tokens=tokens)
    with Client(service.target, timeout_s=600) as client:

        def generate() -> None:
            client.generate_texts(service.client_study, settings=settings)

        def first_token_s() -> float:
            started = time.perf_counter()
            with client.generate_steered(service.client_study, settings=settings) as stream:
                for event in stream:
                    if isinstance(event, TokenEvent):
                        return time.perf_counter() - started
            raise RuntimeError("no token streamed")

        def encode_s() -> float:
            started = time.perf_counter()
            client.encode(service.client_study, top_k_per_token=8)
            return time.perf_counter() - started

        def while_streaming(streams: int, measure: Callable[[], float]) -> Callable[[], float]:
            def measurement() -> float:
                running = threading.Event()
                with ThreadPoolExecutor(streams) as pool:
                    busy = [pool.submit(_stream_until, client, service, settings, running)
                            for _ in range(streams)]  # fmt: skip
                    time.sleep(0.3)  # the streams are admitted and decoding
                    value = measure()
                    running.set()
                    for future in busy:
                        future.result()
                return value

            return measurement

        def four_concurrent() -> None:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: generate(), range(4)))

        def four_one_by_one() -> None:
            for _ in range(4):
                generate()

        generate()  # warm-up
        samples = interleaved(
            {
                "encode_idle_s": encode_s,
                "encode_with_4_streams_s": while_streaming(4, encode_s),
                "first_token_idle_s": first_token_s,
                "first_token_with_8_streams_s": while_streaming(8, first_token_s),
                "four_concurrent_s": timed(four_concurrent),
                "four_one_by_one_s": timed(four_one_by_one),
            },
            repeats,
        )
    m = {name: median(values) for name, values in samples.items()}
    return {
        "bench": "concurrency",
        "max_new_tokens": tokens,
        "medians_s": m,
        "checks": [
            check(
                "encode_with_4_streams_over_idle",
                m["encode_with_4_streams_s"] / m["encode_idle_s"],
                ENCODE_TARGET,
                repeats=repeats,
            ),
            check(
                "four_concurrent_over_one_by_one",
                m["four_concurrent_s"] / m["four_one_by_one_s"],
                CONCURRENT_TARGET,
                repeats=repeats,
            ),
        ],
        "first_token_with_8_streams_over_idle": round(
            m["first_token_with_8_streams_s"] / m["first_token_idle_s"], 3
        ),
        "encode_with_4_streams_spread_s": statistics.pstdev(samples["encode_with_4_streams_s"]),
    }


def _stream_until(
    client: Client, service: DemoService, settings: GenerationSettings, stop: threading.Event
) -> None:
    """Generate call after call until ``stop``: a sustained stream of decode work."""
    while not stop.is_set():
        client.generate_texts(service.client_study, settings=settings)


if __name__ == "__main__":
    run_against_demo_service(run, __doc__.splitlines()[0])
