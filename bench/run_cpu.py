"""The CPU benchmark suite on the demo checkpoint: one demo server, every benchmark in turn,
one JSON object on stdout (``--out`` also writes it to a file).

    .venv/bin/python -m bench.run_cpu [--quick] [--only NAME,...] [--out FILE]

Full: about 5 minutes on an idle 2-core machine; ``--quick``: about 1 minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    batching,
    concurrency,
    encode_many,
    first_token,
    sae_encode,
    service_overhead,
    steering_overhead,
    variants,
)
from bench.fixtures import DemoService, demo_service
from bench.harness import emit, machine

ServiceBench = Callable[..., dict[str, Any]]

SERVICE_BENCHES: dict[str, ServiceBench] = {
    "service_overhead": service_overhead.run,
    "batching": batching.run,
    "steering_overhead": steering_overhead.run,
    "variants": variants.run,
    "first_token": first_token.run,
    "encode_many": encode_many.run,
    "concurrency": concurrency.run,
}
ALL = (*SERVICE_BENCHES, "sae_encode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(ALL)}")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    arguments = parser.parse_args()
    selected = arguments.only.split(",") if arguments.only else list(ALL)
    unknown = sorted(set(selected) - set(ALL))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(ALL)}")

    started = time.perf_counter()
    reports = []
    service_names = [name for name in selected if name in SERVICE_BENCHES]
    if service_names:
        with demo_service() as service:
            reports += [
                _run(name, SERVICE_BENCHES[name], service, arguments.quick)
                for name in service_names
            ]
    if "sae_encode" in selected:
        _progress("sae_encode")
        encode_started = time.perf_counter()
        report = sae_encode.run(quick=arguments.quick)
        reports.append({**report, "wall_s": round(time.perf_counter() - encode_started, 1)})
    emit(
        {
            "suite": "cpu",
            "quick": arguments.quick,
            "command": " ".join(["python -m bench.run_cpu", *sys.argv[1:]]),
            "machine": machine(),
            "wall_s": round(time.perf_counter() - started, 1),
            "summary": [
                {key: check.get(key) for key in ("name", "ratio", "target", "met")}
                for report in reports
                for check in report["checks"]
            ],
            "benches": reports,
        },
        arguments.out,
    )


def _run(name: str, bench: ServiceBench, service: DemoService, quick: bool) -> dict[str, Any]:
    _progress(name)
    started = time.perf_counter()
    report = bench(service, quick=quick)
    return {**report, "wall_s": round(time.perf_counter() - started, 1)}


def _progress(name: str) -> None:
    print(f"running {name} ...", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
