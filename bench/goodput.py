"""Goodput under overload: closed-loop clients against a demo server with a small queue.

    python -m bench.goodput               # 4, 16 and 32 clients, 30 s each, twice (ABC CBA)
    python -m bench.goodput --quick       # 10 s each, once

Each client loops over Encode, TopFeatures and a streamed GenerateSteered (the reliability
load mix) and waits the RetryInfo delay when refused. Goodput is OK calls per second. Targets
(issue 15): goodput at 32 clients at least 0.8 x goodput at 4, and every rejection answered in
under 5 ms at p99, timed on the server (the access log's ``duration_ms`` of each
RESOURCE_EXHAUSTED). The ratios come from one run on one machine; absolute rates do not
compare across machines.

It also times the longest request the token limits admit (an Encode whose prompt is just
under ``limits.max_prompt_tokens``, the demo's context length): a forward already running is
not interrupted when its caller leaves, so this is the most engine time a departed caller can
leave behind.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reliability

import grpc

from bench.harness import at_least, at_most, bench_arguments, check, emit, interleaved, machine
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._load import LoadMix, percentiles_ms, run_load
from tests.reliability._support import SMALL_PNG, ServerProcess

CLIENTS = (4, 16, 32)
QUEUE_SIZE = 12
SERVED_METHODS = ("Encode", "TopFeatures", "GenerateSteered")


class ServerLog:
    """The access-log lines a server wrote since the last ``take``."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._seen = 0

    def take(self) -> list[dict[str, Any]]:
        lines = self._server.stderr.splitlines()
        new, self._seen = lines[self._seen :], len(lines)
        entries = []
        for line in new:
            if line.startswith("{") and '"duration_ms"' in line:
                entries.append(json.loads(line))
        return entries


def rejection_ms(entries: list[dict[str, Any]]) -> list[float]:
    return [
        entry["duration_ms"]
        for entry in entries
        if entry.get("code") == "RESOURCE_EXHAUSTED"
        and entry.get("method", "").rsplit("/", 1)[-1] in SERVED_METHODS
    ]


def longest_admitted_encode_s(server: ServerProcess, log: ServerLog, repeats: int) -> float:
    """Server-side seconds of an Encode whose prompt is a few tokens under the limit (the
    demo tokenizer gives one token per ASCII character)."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        limits = stub.GetInfo(pb.GetInfoRequest()).limits
        base = stub.Encode(pb.EncodeRequest(study=pb.Study(frontal=pb.Image(data=SMALL_PNG))))
        room = limits.max_prompt_tokens - base.total_tokens - 8
        fields = ("indication", "technique", "comparison")
        texts = {}
        for name in fields:
            texts[name] = "a" * min(room, limits.max_text_chars)
            room -= len(texts[name])
        request = pb.EncodeRequest(
            study=pb.Study(frontal=pb.Image(data=SMALL_PNG), **texts), top_k_per_token=1
        )
        log.take()
        for _ in range(repeats):
            stub.Encode(request, timeout=600)
    durations = [e["duration_ms"] / 1000 for e in log.take() if e["method"].endswith("/Encode")]
    return statistics.median(durations)


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0])
    duration_s = 10.0 if args.quick else 30.0
    repeats = 1 if args.quick else 2
    mix = LoadMix(image=SMALL_PNG, max_new_tokens=8)
    with tempfile.TemporaryDirectory(prefix="goodput-") as workdir:
        cache = Path(".cache/demo-checkpoint").resolve()
        config = {
            "serving": {"host": "127.0.0.1"},
            "model": {"demo": True, "demo_dir": str(cache)},
            "batching": {"queue_size": QUEUE_SIZE},
        }
        server = ServerProcess(config, Path(workdir))
        server.start(timeout_s=600)
        log = ServerLog(server)
        rejections: dict[int, list[float]] = {n: [] for n in CLIENTS}
        statuses: dict[int, dict[str, int]] = {n: {} for n in CLIENTS}

        def goodput(clients: int) -> Any:
            def measure() -> float:
                log.take()
                records = asyncio.run(
                    run_load(server.target, mix, clients=clients, duration_s=duration_s)
                )
                rejections[clients] += rejection_ms(log.take())
                for record in records:
                    counts = statuses[clients]
                    counts[record.code] = counts.get(record.code, 0) + 1
                ok = sum(record.code == "OK" for record in records)
                return ok / duration_s

            return measure

        try:
            samples = interleaved({str(n): goodput(n) for n in CLIENTS}, repeats)
            longest_s = longest_admitted_encode_s(server, log, repeats=3)
        finally:
            server.stop()
    rates = {n: sum(samples[str(n)]) / len(samples[str(n)]) for n in CLIENTS}
    all_rejections = [ms for n in CLIENTS for ms in rejections[n]]
    p99 = percentiles_ms([ms / 1000 for ms in all_rejections])["p99"]
    emit(
        {
            "benchmark": "goodput",
            "machine": machine(),
            "queue_size": QUEUE_SIZE,
            "duration_s_per_run": duration_s,
            "repeats": repeats,
            "goodput_ok_per_s": {str(n): round(rates[n], 3) for n in CLIENTS},
            "statuses": {str(n): statuses[n] for n in CLIENTS},
            "longest_admitted_encode_s": round(longest_s, 3),
            "server_rejection_ms": {
                str(n): percentiles_ms([ms / 1000 for ms in rejections[n]]) for n in CLIENTS
            },
            "checks": [
                check(
                    "goodput(32) / goodput(4)",
                    rates[32] / rates[4] if rates[4] else 0.0,
                    at_least(0.8),
                    goodput_16_over_4=rates[16] / rates[4] if rates[4] else 0.0,
                ),
                check(
                    "server-side rejection p99",
                    p99,
                    at_most(5.0),
                    unit="ms",
                    rejections=len(all_rejections),
                ),
            ],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
