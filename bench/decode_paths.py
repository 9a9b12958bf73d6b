"""Decode tokens per second of the three decode paths over one model, and concurrent streams.

Paths: "dynamic" (the growing KV cache, eager), "static" (preallocated slots, eager) and
"captured" (the static step compiled: torch.compile "reduce-overhead", i.e. inductor with CUDA
graphs, on a GPU; inductor's "default" mode on a CPU, where there are no graphs to capture).
Each path decodes one call of ``rows`` steered variants at batch 1, 8 and 32; then 32 separate
single-variant steered calls decode together against one such call alone (the issue's target:
at least 10x the tokens per second of one stream). The first run of each shape is a warm-up
and, for the captured path, includes the compile (reported as ``warmup_s``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.full_size_model import frontal_study
from bench.generation_runs import ADD, CLAMP, generation_request, timed_generation
from bench.harness import at_least, check, median
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.static_decode_batch import StaticDecodeSettings
from maira_sae.server.engine.token_limits import TokenLimits

STREAMS = 32
STREAMS_SPEEDUP_TARGET = at_least(10.0)

EngineFor = Callable[[StaticDecodeSettings | None, TokenLimits], Engine]


def run(
    engine_for: EngineFor,
    *,
    smoke: bool,
    repeats: int,
    allows: Callable[[str], bool],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``engine_for(static, token_limits)`` builds an engine over the one loaded model."""
    batches = (1, 2, 4) if smoke else (1, 8, 32)
    new_tokens = 4 if smoke else 64
    study = frontal_study()
    probe = engine_for(None, TokenLimits(1 << 20, 1 << 20))
    prompt = len(probe.prepare_generation(generation_request(study, (ADD,), 1)).inputs.tokens)
    width = prompt + new_tokens
    limits = TokenLimits(width, width)
    compile_mode = "reduce-overhead" if torch.cuda.is_available() else "default"
    engines = {
        "dynamic": lambda: engine_for(None, limits),
        "static": lambda: engine_for(_static(STREAMS, width, "off"), limits),
        "captured": lambda: engine_for(_static(STREAMS, width, compile_mode), limits),
    }
    report: dict[str, Any] = {"prompt_tokens": prompt, "compile_mode": compile_mode}
    checks: list[dict[str, Any]] = []
    for path, build in engines.items():
        if not allows(f"decode_{path}"):
            continue
        engine = build()
        rates: dict[str, Any] = {}
        for rows in batches:
            variants = tuple(ADD if row % 2 == 0 else CLAMP for row in range(rows))
            request = generation_request(study, variants, new_tokens)
            started = time.perf_counter()
            timed_generation(engine, request)
            warmup_s = time.perf_counter() - started
            timings = [timed_generation(engine, request) for _ in range(repeats)]
            per_row = median([t.decode_tokens_per_s for t in timings])
            rates[f"batch_{rows}"] = {
                "tokens_per_s_per_row": per_row,
                "tokens_per_s_all_rows": per_row * rows,
                "warmup_s": warmup_s,
            }
        streams = _concurrent_streams(engine, STREAMS if not smoke else 4, new_tokens)
        rates["streams"] = streams
        report[path] = rates
        engine.close()
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        checks.append(
            check(
                f"{path}_{streams['streams']}_streams_over_one",
                streams["speedup"],
                STREAMS_SPEEDUP_TARGET,
                unit="x",
            )
        )
    for rows in batches:
        eager = report.get("static", {}).get(f"batch_{rows}", {}).get("tokens_per_s_per_row")
        captured = report.get("captured", {}).get(f"batch_{rows}", {}).get("tokens_per_s_per_row")
        if eager and captured:
            report[f"captured_over_static_batch_{rows}"] = captured / eager
    return report, checks


def _static(slots: int, width: int, compile_mode: str) -> StaticDecodeSettings:
    return StaticDecodeSettings(slots=slots, width=width, capacity=4, compile_mode=compile_mode)


def _concurrent_streams(engine: Engine, streams: int, new_tokens: int) -> dict[str, Any]:
    """Decode tokens/s of ``streams`` single-variant steered calls in one batch, over one."""
    one = _decode_rate(engine, 1, new_tokens)
    _decode_rate(engine, streams, new_tokens)  # warm-up of this shape
    many = _decode_rate(engine, streams, new_tokens)
    return {
        "streams": streams,
        "one_stream_tokens_per_s": one,
        "all_streams_tokens_per_s": many,
        "speedup": many / one,
    }


def _decode_rate(engine: Engine, calls: int, new_tokens: int) -> float:
    """Tokens per second of ``calls`` calls decoding together, prefills excluded."""
    study = frontal_study()
    runner = engine.generations
    batch = runner.new_batch()

    def step() -> int:
        return sum(len(events.tokens) for events in runner.decode(batch))

    for index in range(calls):
        variant = ADD if index % 2 == 0 else CLAMP
        request = generation_request(study, (variant,), new_tokens)
        call = runner.start(index, engine.prepare_generation(request))
        runner.prefill_chunk(batch, call, call.prefill_remaining)
    step()  # the first tokens come from the prefills' logits
    _synchronise()
    count, started = 0, time.perf_counter()
    while batch.calls:
        count += step()
    _synchronise()
    return count / (time.perf_counter() - started)


def _synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
