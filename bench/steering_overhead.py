"""Steering overhead: decode tokens per second with one ADD intervention and with one CLAMP,
versus no intervention (one row each, greedy, on the engine in-process: the hooks are the cost
being measured, not the transport). Target: steered at most 1.05x slower."""

from __future__ import annotations

from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.generation_runs import ADD, BASELINE, CLAMP, generation_request, timed_generation
from bench.harness import at_most, check, interleaved, median
from maira_sae.server.engine.types import Variant

TARGET = at_most(1.05)


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 3 if quick else 5
    max_new_tokens = 24 if quick else 96
    engine = service.engine

    def decode_rate(variant: Variant) -> float:
        request = generation_request(service.study, (variant,), max_new_tokens)
        return timed_generation(engine, request).decode_tokens_per_s

    decode_rate(CLAMP)  # warm-up
    variants = {"none": BASELINE, "add": ADD, "clamp": CLAMP}
    samples = interleaved(
        {name: (lambda v=v: decode_rate(v)) for name, v in variants.items()}, repeats
    )
    rates = {name: median(values) for name, values in samples.items()}
    return {
        "bench": "steering_overhead",
        "max_new_tokens": max_new_tokens,
        "decode_tokens_per_s": rates,
        "checks": [
            check(
                f"{name}_slowdown",
                rates["none"] / rates[name],
                TARGET,
                tokens_per_s=rates[name],
                unsteered_tokens_per_s=rates["none"],
                repeats=repeats,
            )
            for name in ("add", "clamp")
        ],
    }


def main() -> None:
    run_against_demo_service(run, __doc__ or "")


if __name__ == "__main__":
    main()
