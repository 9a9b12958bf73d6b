"""Time to first streamed token: a GenerateSteered call through the client SDK over loopback,
from the call to the first token event, versus the engine's own prefill in-process (from
``generate`` to its first token) and versus the whole streamed generation. The issue sets no
target: the ratios say how much of the wait is service and how soon streaming shows text."""

from __future__ import annotations

import time
from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.generation_runs import BASELINE, generation_request, timed_generation
from bench.harness import check, interleaved, median
from maira_sae.client import Client, GenerationSettings, TokenEvent


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 3 if quick else 7
    max_new_tokens = 16 if quick else 64
    streamed_total: list[float] = []
    with Client(service.target) as client:

        def streamed_first_token() -> float:
            settings = GenerationSettings(max_new_tokens=max_new_tokens)
            started = time.perf_counter()
            first = None
            with client.generate_steered(service.client_study, settings=settings) as stream:
                for event in stream:
                    if first is None and isinstance(event, TokenEvent):
                        first = time.perf_counter() - started
            streamed_total.append(time.perf_counter() - started)
            assert first is not None
            return first

        def in_process_prefill() -> float:
            request = generation_request(service.study, (BASELINE,), max_new_tokens)
            return timed_generation(service.engine, request).first_token_s

        streamed_first_token()  # warm-up
        streamed_total.clear()
        samples = interleaved(
            {"grpc_first_token": streamed_first_token, "in_process_prefill": in_process_prefill},
            repeats,
        )
    first, prefill = median(samples["grpc_first_token"]), median(samples["in_process_prefill"])
    total = median(streamed_total)
    return {
        "bench": "first_token",
        "max_new_tokens": max_new_tokens,
        "checks": [
            check(
                "grpc_first_token_over_in_process_prefill",
                first / prefill,
                None,
                grpc_first_token_median_s=first,
                in_process_prefill_median_s=prefill,
                repeats=repeats,
            ),
            check(
                "grpc_first_token_over_full_stream",
                first / total,
                None,
                full_stream_median_s=total,
                repeats=repeats,
            ),
        ],
    }


def main() -> None:
    run_against_demo_service(run, __doc__ or "")


if __name__ == "__main__":
    main()
