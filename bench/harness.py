"""Timing and reporting shared by every benchmark.

The machines are shared and noisy, so a benchmark never compares absolute times across runs:
it alternates the variants it compares inside one run (A B B A ...), repeats, and reports the
ratio of medians against the issue's target. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Measurement = Callable[[], float]
"""One repeat of a variant; returns the seconds (or other figure) that repeat measured."""


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``ratio <= bound`` when ``at_most``, else ``ratio >= bound``."""

    bound: float
    at_most: bool

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.at_most else ratio >= self.bound

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}"


def at_most(bound: float) -> Target:
    return Target(bound, at_most=True)


def at_least(bound: float) -> Target:
    return Target(bound, at_most=False)


def check(
    name: str, ratio: float, target: Target | None, *, unit: str | None = None, **details: Any
) -> dict[str, Any]:
    """One compared figure: the ratio (or, with ``unit``, an absolute value in that unit), the
    target it is held to (None: informational) and whether it is met, plus the medians and
    counts behind it."""
    figure = (
        {"ratio": round(ratio, 4)} if unit is None else {"value": round(ratio, 6), "unit": unit}
    )
    return {
        "name": name,
        **figure,
        "target": None if target is None else str(target),
        "met": None if target is None else target.met(ratio),
        **{key: _rounded(value) for key, value in details.items()},
    }


def interleaved(variants: Mapping[str, Measurement], repeats: int) -> dict[str, list[float]]:
    """Run every variant ``repeats`` times, alternating the order on each round (ABC, CBA,
    ...) so that drift in the machine's load falls on all variants alike."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(variants[name]())
    return samples


def timed(call: Callable[[], object]) -> Measurement:
    """A measurement of one call's wall time."""

    def measure() -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    return measure


def synchronised(call: Callable[[], object]) -> Measurement:
    """``timed``, waiting for queued GPU work before and after (CUDA kernels run async)."""
    measure = timed(call)

    def run() -> float:
        if not torch.cuda.is_available():
            return measure()
        torch.cuda.synchronize()
        seconds = measure()
        torch.cuda.synchronize()
        return seconds

    return run


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on a shared machine
    }


def bench_arguments(
    description: str, more: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """``--quick`` and ``--out``, and what ``more`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    if more is not None:
        more(parser)
    return parser.parse_args()


def emit(report: Mapping[str, Any], out: Path | None) -> None:
    """Print the report as one JSON object (and write it to ``out`` when given)."""
    text = json.dumps(report, indent=2)
    print(text)
    sys.stdout.flush()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value
