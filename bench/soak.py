"""``make soak``: the reliability load mix for a long time, with a live summary line and a JSON
report of requests, statuses, latency percentiles over time and memory over time.

    python bench/soak.py                       # 10 minutes against its own demo server
    python bench/soak.py --duration 120 --clients 32 --report soak.json
    python bench/soak.py --target host:50051   # an existing server (no memory samples)

The load is tests/reliability/_load.py: 32 clients looping over Encode, TopFeatures and a
streamed GenerateSteered, against a server it starts with a queue of 12 (overload). The
report's goodput is OK calls per second, per window and over the run (bench/goodput.py
compares it across client counts). The exit status is 1 when any call ended other than OK or
RESOURCE_EXHAUSTED (a full queue is back-pressure, not an error), so CI could gate on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reliability

from tests.reliability._load import (
    CallRecord,
    LoadMix,
    percentiles_ms,
    run_load,
    summarise,
)
from tests.reliability._support import SMALL_PNG, ServerProcess, admitted_requests

ACCEPTABLE = {"OK", "RESOURCE_EXHAUSTED"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per report window")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--queue-size",
        type=int,
        default=12,
        help="batching.queue_size of the server it starts: under --clients, so it is overload",
    )
    parser.add_argument("--target", help="host:port of a running server; default: start one")
    parser.add_argument("--report", type=Path, default=Path("soak-report.json"))
    return parser.parse_args(argv)


class Soak:
    """Collects call records into time windows and samples memory and queue depth."""

    def __init__(self, window_s: float, server: ServerProcess | None) -> None:
        self.window_s = window_s
        self.server = server
        self.records: list[CallRecord] = []
        self.memory: list[dict[str, float]] = []
        self.started = time.monotonic()

    def record(self, call: CallRecord) -> None:
        self.records.append(call)

    def sample(self) -> dict[str, float]:
        point: dict[str, float] = {"t_s": round(time.monotonic() - self.started, 1)}
        if self.server is not None and self.server.running:
            point["rss_kib"] = self.server.rss_kib()
            point["admitted_requests"] = admitted_requests(self.server.metrics_port)
        self.memory.append(point)
        return point

    def live_line(self) -> str:
        elapsed = time.monotonic() - self.started
        recent = [r for r in self.records if r.started_s >= elapsed - self.window_s]
        errors = sum(r.code not in ACCEPTABLE for r in self.records)
        ok_recent = sum(r.code == "OK" for r in recent)
        latency = percentiles_ms([r.latency_s for r in recent if r.code == "OK"])
        rss = self.memory[-1].get("rss_kib") if self.memory else None
        return (
            f"[{elapsed:7.1f}s] requests {len(self.records):6d}  "
            f"rate {len(recent) / min(self.window_s, max(elapsed, 1e-9)):5.2f}/s  "
            f"goodput {ok_recent / min(self.window_s, max(elapsed, 1e-9)):5.2f} OK/s  "
            f"errors {errors}  p50 {latency['p50']:.0f} ms  p95 {latency['p95']:.0f} ms  "
            f"rss {rss if rss is not None else '-'} KiB"
        )

    def windows(self) -> list[dict[str, object]]:
        if not self.records:
            return []
        last = max(r.started_s for r in self.records)
        end = max(r.started_s + r.latency_s for r in self.records)  # the last window is partial
        out: list[dict[str, object]] = []
        start = 0.0
        while start <= last:
            inside = [r for r in self.records if start <= r.started_s < start + self.window_s]
            summary = summarise(inside)
            memory = [m for m in self.memory if start <= m["t_s"] < start + self.window_s]
            out.append(
                {
                    "t_start_s": start,
                    "t_end_s": start + self.window_s,
                    "requests": summary.requests,
                    "goodput_ok_per_s": round(
                        summary.statuses.get("OK", 0) / min(self.window_s, max(end - start, 1e-9)),
                        3,
                    ),
                    "statuses": summary.statuses,
                    "latency_ms": summary.latency_ms,
                    "rss_kib_max": max((m.get("rss_kib", 0) for m in memory), default=None),
                    "admitted_requests_max": max(
                        (m.get("admitted_requests", 0) for m in memory), default=None
                    ),
                }
            )
            start += self.window_s
        return out


async def soak(args: argparse.Namespace, target: str, server: ServerProcess | None) -> Soak:
    state = Soak(args.window, server)
    mix = LoadMix(image=SMALL_PNG, max_new_tokens=args.max_new_tokens)

    async def report_live() -> None:
        while True:
            await asyncio.to_thread(state.sample)
            print(state.live_line(), flush=True)
            await asyncio.sleep(5)

    reporter = asyncio.create_task(report_live())
    try:
        await run_load(
            target, mix, clients=args.clients, duration_s=args.duration, on_record=state.record
        )
    finally:
        reporter.cancel()
    await asyncio.to_thread(state.sample)
    print(state.live_line(), flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        server = None
        target = args.target
        if target is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            cache = Path(".cache/demo-checkpoint").resolve()
            config = {
                "serving": {"host": "127.0.0.1"},
                "model": {"demo": True, "demo_dir": str(cache)},
                "batching": {"queue_size": args.queue_size},
            }
            server = ServerProcess(config, workdir)
            print("starting a demo server ...", flush=True)
            server.start(timeout_s=600)
            stack.callback(server.stop)
            target = server.target
        state = asyncio.run(soak(args, target, server))
        summary = summarise(state.records)
        stopped_cleanly = None
        if server is not None:
            server.stop()
            stopped_cleanly = server.process is not None and server.process.returncode == 0
            stopped_cleanly = stopped_cleanly and "Traceback" not in server.stderr
        report = {
            "target": target,
            "clients": args.clients,
            "queue_size": args.queue_size if server is not None else None,
            "duration_s": args.duration,
            "totals": summary.as_dict(),
            "goodput_ok_per_s": round(summary.statuses.get("OK", 0) / args.duration, 3),
            "windows": state.windows(),
            "memory": state.memory,
            "server_stopped_cleanly": stopped_cleanly,
        }
    args.report.write_text(json.dumps(report, indent=2))
    goodput = report["goodput_ok_per_s"]
    print(
        json.dumps({"report": str(args.report), "goodput_ok_per_s": goodput, **summary.as_dict()})
    )
    unexpected = {code for code in summary.statuses if code not in ACCEPTABLE}
    return 1 if unexpected or stopped_cleanly is False else 0


if __name__ == "__main__":
    sys.exit(main())
