"""Variants: one GenerateSteered call with a baseline and 3 steered variants versus 4 separate
calls of one variant each, through the client SDK over loopback. Target: the one call takes
at most half the time of the four."""

from __future__ import annotations

from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.generation_runs import ADD_VALUE, CLAMP_VALUE, STEERED_FEATURE
from bench.harness import at_most, check, interleaved, median, timed
from maira_sae.client import Client, GenerationSettings, Intervention, SteeringMode, Variant

TARGET = at_most(0.5)
VARIANTS = (
    Variant(name="baseline"),
    Variant.of("add", Intervention(SteeringMode.ADD, ADD_VALUE, feature=STEERED_FEATURE)),
    Variant.of("clamp", Intervention(SteeringMode.CLAMP, CLAMP_VALUE, feature=STEERED_FEATURE)),
    Variant.of("ablate", Intervention(SteeringMode.ABLATE, feature=STEERED_FEATURE + 1)),
)


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 2 if quick else 3
    max_new_tokens = 16 if quick else 64
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    with Client(service.target) as client:

        def generate(variants: tuple[Variant, ...]) -> None:
            results = client.generate_texts(service.client_study, variants, settings=settings)
            if any(result.num_tokens != max_new_tokens for result in results):
                raise RuntimeError("a variant stopped early: the timings would not compare")

        def one_call() -> None:
            generate(VARIANTS)

        def separate_calls() -> None:
            for variant in VARIANTS:
                generate((variant,))

        generate(VARIANTS[:1])  # warm-up
        samples = interleaved(
            {"one_call": timed(one_call), "separate_calls": timed(separate_calls)}, repeats
        )
    one, separate = median(samples["one_call"]), median(samples["separate_calls"])
    return {
        "bench": "variants",
        "variants": len(VARIANTS),
        "max_new_tokens": max_new_tokens,
        "checks": [
            check(
                "one_call_over_separate_calls",
                one / separate,
                TARGET,
                one_call_median_s=one,
                separate_calls_median_s=separate,
                repeats=repeats,
            )
        ],
    }


def main() -> None:
    run_against_demo_service(run, __doc__ or "")


if __name__ == "__main__":
    main()
