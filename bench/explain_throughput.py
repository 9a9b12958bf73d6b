"""Explain-run throughput against an LLM endpoint with a fixed 1 s latency: achieved / ideal
requests per second at 32 and 128 requests in flight (issue: automated interpretability).

The endpoint (``tests.support.chat_endpoint.ChatEndpoint``, its own process, 127.0.0.1)
answers every chat completion after exactly ``LATENCY_S``, so a run with N requests in flight
can reach at most N / LATENCY_S requests per second (ideal). The run is the real one
(``runner.explain_features`` with the LLM explainer and detection judge through
``ChatCaller``: one explanation, then two detection batches per feature, a progress line per
feature, no control) over synthetic features sized to last about ``seconds`` at the ideal
rate; achieved = the endpoint's requests / the run's wall time. The ramp-down at the end (the
last features' judge requests) is counted against the run. Target: achieved / ideal >= 0.8.

    .venv/bin/python -m bench.explain_throughput [--quick] [--out FILE]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import at_least, bench_arguments, check, emit, machine

# imported before the clock starts, not inside the first measured run
from maira_sae.server.training.explain import llm_roles, runner  # noqa: F401
from tests.support.chat_endpoint import ChatEndpoint
from tests.support.synthetic_features import keyword_reply, run_synthetic

LATENCY_S = 1.0
IN_FLIGHT = (32, 128)
REQUESTS_PER_FEATURE = 3  # one explanation, two detection batches of 10 examples
TARGET = at_least(0.8)


def serve(port_out: Any, stop: Any, counts: Any) -> None:
    with ChatEndpoint(keyword_reply, latency_s=LATENCY_S) as endpoint:
        port_out.send(endpoint.port)
        stop.wait()
        counts.send((endpoint.requests, endpoint.most_in_flight))


def measure(in_flight: int, seconds: float) -> dict[str, Any]:
    features = int(in_flight * seconds / LATENCY_S / REQUESTS_PER_FEATURE)
    port_in, port_out = multiprocessing.Pipe(duplex=False)
    counts_in, counts_out = multiprocessing.Pipe(duplex=False)
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(port_out, stop, counts_out))
    server.start()
    try:
        url = f"http://127.0.0.1:{port_in.recv()}/v1"
        with tempfile.TemporaryDirectory(prefix="explain-bench-") as folder:
            started, cpu_started = time.perf_counter(), time.process_time()
            summary = asyncio.run(
                run_synthetic(
                    url,
                    str(Path(folder) / "run.progress.jsonl"),
                    range(features),
                    concurrency=in_flight,
                    control_features=0,
                    timeout_s=30.0,
                )
            )
            elapsed = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
    finally:
        stop.set()
        requests, most_in_flight = counts_in.recv()
        server.join(timeout=30)
    achieved = requests / elapsed
    ideal = in_flight / LATENCY_S
    return {
        "in_flight": in_flight,
        "features": features,
        "explained": summary["explained"],
        "requests": requests,
        "wall_s": elapsed,
        "achieved_per_s": achieved,
        "ideal_per_s": ideal,
        "ratio": achieved / ideal,
        "most_in_flight_at_endpoint": most_in_flight,
        # the run's own CPU seconds per wall second: near 1, the client is CPU-bound
        "client_cpu_share": cpu_s / elapsed,
        "client_cpu_ms_per_request": 1000 * cpu_s / requests,
        "usage": summary["usage"],
    }


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0])
    seconds = 6.0 if args.quick else 15.0
    runs = [measure(in_flight, seconds) for in_flight in IN_FLIGHT]
    emit(
        {
            "benchmark": "explain_throughput",
            "machine": machine(),
            "latency_s": LATENCY_S,
            "runs": runs,
            "checks": [
                check(
                    f"achieved / ideal requests per second, {run['in_flight']} in flight",
                    run["ratio"],
                    TARGET,
                    achieved_per_s=run["achieved_per_s"],
                    ideal_per_s=run["ideal_per_s"],
                    wall_s=run["wall_s"],
                    client_cpu_share=run["client_cpu_share"],
                )
                for run in runs
            ],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
