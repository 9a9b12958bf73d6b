"""MAIRA-2 at full size with random bf16 weights on a GPU, through the real engine.

    .venv/bin/python -m bench.gpu_full_size [--out FILE]     # on a GPU (about 3-5 minutes)
    .venv/bin/python -m bench.gpu_full_size --smoke          # tiny widths, any device

Reports: Encode latency for a frontal-only study (~1.4k tokens) and a frontal + lateral +
prior study (~4.2k tokens) with the SAE encode's share; decode tokens per second at batch 1, 8
and 32 with and without steering, against the memory-bandwidth limit; the decode paths
(dynamic, static, captured with CUDA graphs) at batch 1, 8 and 32 and 32 concurrent steered
streams against one (``bench/decode_paths.py``); peak GPU memory.
Targets: steered decode at batch 1 >= 200 tokens/s; Encode (frontal only) < 80 ms; 32
concurrent steered streams >= 10x the tokens/s of one.
Stops measuring (and says so) when ``--budget-s`` is spent, to fit one 10-minute command.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import decode_paths, sae_encode
from bench.full_size_model import (
    SAE_LAYER,
    frontal_study,
    full_size_parts,
    full_study,
    maira2_config,
)
from bench.generation_runs import ADD, BASELINE, CLAMP, generation_request, timed_generation
from bench.harness import at_least, at_most, check, emit, machine, median, synchronised
from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.static_decode_batch import StaticDecodeSettings
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.types import EncodeRequest, Variant
from maira_sae.server.maira2.study import Study

H200_BANDWIDTH_BYTES_PER_S = 4.8e12
ENCODE_TARGET_S = at_most(0.080)
STEERED_DECODE_TARGET = at_least(200.0)


class Budget:
    """Wall-clock budget of the whole run: later measurements are skipped once it is spent."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self.skipped: list[str] = []

    def allows(self, name: str) -> bool:
        if time.monotonic() < self._deadline:
            return True
        self.skipped.append(name)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny widths: runs on a CPU")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop measuring after")
    arguments = parser.parse_args()
    if not arguments.smoke and not torch.cuda.is_available():
        sys.exit("gpu_full_size needs a CUDA device (use --smoke to check it on a CPU)")
    emit(run(smoke=arguments.smoke, budget=Budget(arguments.budget_s)), arguments.out)


def run(*, smoke: bool, budget: Budget) -> dict[str, Any]:
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 as served on a GPU; a CPU's bf16 kernels are too slow even for the smoke widths.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = maira2_config(smoke=smoke)
    repeats = 1 if smoke else 5
    with tempfile.TemporaryDirectory() as folder:
        model, processor, entry = full_size_parts(config, device, dtype, Path(folder))
    engine = Engine(model, processor, [entry])

    def engine_for(static: StaticDecodeSettings | None, limits: TokenLimits) -> Engine:
        return Engine(model, processor, [entry], token_limits=limits, static_decode=static)

    built_s = time.perf_counter() - started
    weights_bytes = _decode_weight_bytes(engine)
    report: dict[str, Any] = {
        "bench": "gpu_full_size",
        "smoke": smoke,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine(),
        "build_s": round(built_s, 1),
        "parameters": sum(p.numel() for p in engine.model.parameters()),
        "decode_weight_bytes": weights_bytes,
        # model weights plus the SAE, resident before any request runs
        "resident_after_build_bytes": (
            torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        ),
    }
    checks: list[dict[str, Any]] = []
    encode = {}
    for name, study in (("frontal", frontal_study()), ("frontal_lateral_prior", full_study())):
        if budget.allows(f"encode_{name}"):
            encode[name] = _encode_latency(engine, study, repeats)
    report["encode"] = encode
    if "frontal" in encode:
        checks.append(
            check("encode_frontal_s", encode["frontal"]["total_s"], ENCODE_TARGET_S, unit="s")
        )
    decode = _decode_rates(engine, smoke=smoke, repeats=repeats, budget=budget)
    report["decode"] = decode
    bandwidth_limit = H200_BANDWIDTH_BYTES_PER_S / weights_bytes
    report["decode_bandwidth_limit_tokens_per_s"] = bandwidth_limit
    for name in ("add", "clamp"):
        rate = decode.get(f"batch_1_{name}", {}).get("tokens_per_s_per_row")
        if rate is not None:
            checks.append(
                check(
                    f"steered_decode_batch_1_{name}_tokens_per_s",
                    rate,
                    STEERED_DECODE_TARGET,
                    unit="tokens/s",
                    fraction_of_bandwidth_limit=rate / bandwidth_limit,
                )
            )
    report["decode_paths"], path_checks = decode_paths.run(
        engine_for, smoke=smoke, repeats=repeats, allows=budget.allows
    )
    checks += path_checks
    if budget.allows("sae_encode"):
        report["sae_encode"] = sae_encode.run(quick=smoke, device=device.type)
    report["peak_memory_bytes"] = _peak_memory(device)
    report["skipped_for_budget"] = budget.skipped
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["checks"] = checks
    return report


def _encode_latency(engine: Engine, study: Study, repeats: int) -> dict[str, Any]:
    """Prepare (CPU) and analyse (model to layer 15, SAE, results), each timed; the model part
    and the SAE encode alone give the SAE's share of the analyse time."""
    request = EncodeRequest(study=study)
    prepared = engine.prepare_analysis(request)
    entry = engine.sae(request.sae_id)
    pad = engine.processor.pad_token_id

    def model_only() -> torch.Tensor:
        return capture_batch(engine.model, [prepared.inputs], {SAE_LAYER}, pad_token_id=pad)[0][
            SAE_LAYER
        ]

    residual = model_only()
    phases: dict[str, Callable[[], object]] = {
        "prepare": lambda: engine.prepare_analysis(request),
        "analyse": lambda: engine.analyse([prepared]),
        "model_to_layer_15": model_only,
        "sae_encode": lambda: entry.sae.encode(residual),
    }
    synchronised(phases["analyse"])()  # warm-up
    _reset_peak_memory()
    medians = {
        name: median([synchronised(call)() for _ in range(repeats)])
        for name, call in phases.items()
    }
    return {
        "tokens": len(prepared.inputs.tokens),
        "total_s": medians["prepare"] + medians["analyse"],
        **{f"{name}_s": seconds for name, seconds in medians.items()},
        "sae_encode_share_of_analyse": medians["sae_encode"] / medians["analyse"],
        "peak_memory_bytes": _peak_memory(engine.model.device),
    }


def _decode_rates(
    engine: Engine, *, smoke: bool, repeats: int, budget: Budget
) -> dict[str, dict[str, Any]]:
    batches = (1, 2) if smoke else (1, 8, 32)
    max_new_tokens = 4 if smoke else 64
    runs: list[tuple[str, tuple[Variant, ...]]] = [
        ("batch_1_none", (BASELINE,)),
        ("batch_1_add", (ADD,)),
        ("batch_1_clamp", (CLAMP,)),
    ]
    for batch in batches[1:]:
        steered = tuple(ADD if row % 2 == 0 else CLAMP for row in range(batch))
        runs += [(f"batch_{batch}_none", (BASELINE,) * batch), (f"batch_{batch}_steered", steered)]
    study = frontal_study()
    results: dict[str, dict[str, Any]] = {}
    for name, variants in runs:
        if not budget.allows(name):
            continue
        request = generation_request(study, variants, max_new_tokens)
        timed_generation(engine, request)  # warm-up (allocator, kernels)
        _reset_peak_memory()
        timings = [timed_generation(engine, request) for _ in range(repeats)]
        per_row = median([t.decode_tokens_per_s for t in timings])
        results[name] = {
            "rows": len(variants),
            "tokens_per_s_per_row": per_row,
            "tokens_per_s_all_rows": per_row * len(variants),
            "first_token_s": median([t.first_token_s for t in timings]),
            "max_new_tokens": max_new_tokens,
            "peak_memory_bytes": _peak_memory(engine.model.device),
        }
    return results


def _decode_weight_bytes(engine: Engine) -> int:
    """Bytes a decode step must read: every language-model weight except the embedding
    table (one row per token is read) and nothing of the vision tower or projector."""
    language_model = engine.model.model.language_model
    read = sum(p.numel() * p.element_size() for p in language_model.parameters())
    read -= (
        language_model.embed_tokens.weight.numel()
        * language_model.embed_tokens.weight.element_size()
    )
    lm_head = engine.model.lm_head.weight
    return read + lm_head.numel() * lm_head.element_size()


def _reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


if __name__ == "__main__":
    main()
