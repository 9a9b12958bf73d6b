"""Goodput under overload and Encode latency beside long generations, against demo servers.

    python -m bench.goodput                 # 4, 16 and 32 clients, 30 s each, twice (ABC CBA)
    python -m bench.goodput --quick         # 10 s each, twice
    python -m bench.goodput --quick --baseline-pythonpath /tmp/base25-tree
                                            # the same, first against a server running the
                                            # code under that path (an earlier commit)

Closed-loop clients loop over Encode, TopFeatures and a streamed GenerateSteered (the
reliability load mix) against a queue of 12, three times: with retries on (a refused call
waits the RetryInfo delay and is made again), off (it fails; the client's next call waits the
delay) and off unpaced (the next call at once, as a client that ignores RetryInfo does; the
server's refusal pacing holds such refusals back; informational, as the client runs on the
same cores as the server: ``server_cpu_cores`` shows the server's share). The clients of a
run share one connection, as the channels of one process do. Goodput is OK calls per second.
Targets (issues 15 and 25): goodput at 32 clients at least 0.8 x goodput at 4 with retries on
and off, and every rejection answered in under 5 ms at p99, timed on the server (the access
log's ``duration_ms`` of each RESOURCE_EXHAUSTED, less the ``held_ms`` it was held;
``server_rejection_ms_by_mode`` splits them by mode, answered at once or held). Then
the p99 of sequential Encodes while 8 long generations (2 variants x 1024 tokens) stream, as
a ratio to the p99 of Encodes on an idle server (informational: issue 25 asks for the
figure). The ratios come from one run on one machine; absolute rates do not compare across
machines.

It also times the longest request the token limits admit (an Encode whose prompt is just
under ``limits.max_prompt_tokens``, the demo's context length): a forward already running is
not interrupted when its caller leaves, so this is the most engine time a departed caller can
leave behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reliability

import grpc

from bench.harness import at_least, at_most, bench_arguments, check, emit, interleaved, machine
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._load import LoadMix, OnRefusal, percentiles_ms, run_load
from tests.reliability._support import SMALL_PNG, ServerProcess

CLIENTS = (4, 16, 32)
QUEUE_SIZE = 12
SERVED_METHODS = ("Encode", "TopFeatures", "GenerateSteered")
# retries on: the refused call is made again after the RetryInfo delay; retries off: it fails
# (as with the SDK's retry=None) and the client's next call waits the delay; off, unpaced: the
# next call at once (informational: the client spins on refusals on the server's own cores).
MODES = {
    "retries_on": OnRefusal.RETRY,
    "retries_off": OnRefusal.WAIT,
    "retries_off_unpaced": OnRefusal.NEXT,
}
TARGET_MODES = ("retries_on", "retries_off")
LONG_STREAMS = 8
LONG_VARIANTS = 2
LONG_TOKENS = 1024


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


def rejection_ms(entries: list[dict[str, Any]], held: bool) -> list[float]:
    """The server's time to refuse each refused call answered at once (``held`` False) or held
    back by refusal pacing (True: less the time it was held)."""
    return [
        entry["duration_ms"] - entry.get("held_ms", 0.0)
        for entry in entries
        if entry.get("code") == "RESOURCE_EXHAUSTED"
        and entry.get("method", "").rsplit("/", 1)[-1] in SERVED_METHODS
        and ("held_ms" in entry) is held
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


async def encode_latencies_s(target: str, mix: LoadMix, duration_s: float) -> list[float]:
    """Sequential Encodes for ``duration_s``: each one's latency, as a caller sees it."""
    latencies = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            began = time.monotonic()
            await stub.Encode(pb.EncodeRequest(study=mix.study(), top_k_per_token=4), timeout=120)
            latencies.append(time.monotonic() - began)
    return latencies


async def encode_latencies_beside_long_streams_s(
    target: str, mix: LoadMix, duration_s: float
) -> list[float]:
    """``encode_latencies_s`` while LONG_STREAMS generations of LONG_VARIANTS x LONG_TOKENS
    stream (each read as it arrives), once every one has sent its first token."""
    request = pb.GenerateSteeredRequest(
        study=mix.study(),
        settings=pb.GenerationSettings(max_new_tokens=LONG_TOKENS),
        variants=[pb.Variant() for _ in range(LONG_VARIANTS)],
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        first_tokens = [asyncio.Event() for _ in range(LONG_STREAMS)]

        async def stream(first_token: asyncio.Event) -> None:
            async for _ in stub.GenerateSteered(request, timeout=600):
                first_token.set()

        readers = [asyncio.create_task(stream(event)) for event in first_tokens]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_tokens)), 300)
            return await encode_latencies_s(target, mix, duration_s)
        finally:
            for reader in readers:
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await asyncio.gather(*readers, return_exceptions=True)


def every(lists: dict[str, list[float]]) -> list[float]:
    return [value for values in lists.values() for value in values]


def ratio(rates: dict[str, float], mode: str, clients: int) -> float:
    """goodput(clients) / goodput(4) in one mode."""
    base = rates[f"{mode}/4"]
    return round(rates[f"{mode}/{clients}"] / base, 4) if base else 0.0


def cpu_seconds(server: ServerProcess) -> float:
    """The server process's CPU time so far (user + system, from /proc)."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    label: str, env: dict[str, str], duration_s: float, repeats: int, longest: bool
) -> dict[str, Any]:
    """Everything, against one server (``env``: PYTHONPATH for a baseline's code)."""
    mix = LoadMix(image=SMALL_PNG, max_new_tokens=8)
    with tempfile.TemporaryDirectory(prefix="goodput-") as workdir:
        cache = Path(".cache/demo-checkpoint").resolve()
        config = {
            "serving": {"host": "127.0.0.1"},
            "model": {"demo": True, "demo_dir": str(cache)},
            "batching": {"queue_size": QUEUE_SIZE},
        }
        server = ServerProcess(config, Path(workdir), env=env)
        server.start(timeout_s=600)
        log = ServerLog(server)
        rejections: dict[str, list[float]] = {}  # by mode and how answered: at once or held
        statuses: dict[str, dict[str, int]] = {}
        cpu_cores: dict[str, list[float]] = {}

        def goodput(mode: str, clients: int) -> Any:
            def one_run() -> float:
                log.take()
                cpu_before = cpu_seconds(server)
                records = asyncio.run(
                    run_load(
                        server.target,
                        mix,
                        clients=clients,
                        duration_s=duration_s,
                        on_refusal=MODES[mode],
                    )
                )
                cores = (cpu_seconds(server) - cpu_before) / duration_s
                cpu_cores.setdefault(f"{mode}/{clients}", []).append(round(cores, 2))
                entries = log.take()
                for how, held in (("at_once", False), ("held", True)):
                    found = rejection_ms(entries, held)
                    rejections.setdefault(f"{mode}/{how}", []).extend(found)
                counts = statuses.setdefault(f"{mode}/{clients}", {})
                for record in records:
                    counts[record.code] = counts.get(record.code, 0) + 1
                return sum(record.code == "OK" for record in records) / duration_s

            return one_run

        try:
            runs = {f"{m}/{n}": goodput(m, n) for m in MODES for n in CLIENTS}
            samples = interleaved(runs, repeats)
            idle = asyncio.run(encode_latencies_s(server.target, mix, duration_s))
            loaded = asyncio.run(
                encode_latencies_beside_long_streams_s(server.target, mix, duration_s)
            )
            longest_s = longest_admitted_encode_s(server, log, repeats=3) if longest else None
        finally:
            server.stop()
    rates = {name: statistics.fmean(values) for name, values in samples.items()}
    idle_p99, loaded_p99 = percentiles_ms(idle)["p99"], percentiles_ms(loaded)["p99"]
    return {
        "label": label,
        "goodput_ok_per_s": {name: round(rate, 3) for name, rate in rates.items()},
        "goodput_32_over_4": {mode: ratio(rates, mode, 32) for mode in MODES},
        "goodput_16_over_4": {mode: ratio(rates, mode, 16) for mode in MODES},
        "statuses": statuses,
        "server_cpu_cores": cpu_cores,
        "server_rejection_ms": percentiles_ms([ms / 1000 for ms in every(rejections)]),
        "rejections": len(every(rejections)),
        "server_rejection_ms_by_mode": {
            key: {"count": len(found), **percentiles_ms([ms / 1000 for ms in found])}
            for key, found in rejections.items()
            if found
        },
        "encode_ms_idle": percentiles_ms(idle),
        "encode_ms_beside_long_streams": percentiles_ms(loaded),
        "encode_p99_beside_long_streams_over_idle": round(loaded_p99 / idle_p99, 3),
        "longest_admitted_encode_s": None if longest_s is None else round(longest_s, 3),
    }


def main() -> None:
    def more(parser: Any) -> None:
        parser.add_argument(
            "--baseline-pythonpath",
            help="also measure a server whose maira_sae comes from this path (first)",
        )

    args = bench_arguments(__doc__.split("\n")[0], more)
    duration_s = 10.0 if args.quick else 30.0
    repeats = 2
    servers = []
    if args.baseline_pythonpath:
        env = {"PYTHONPATH": args.baseline_pythonpath}
        servers.append(measure("baseline", env, duration_s, repeats, longest=False))
    current = measure("this tree", {}, duration_s, repeats, longest=True)
    servers.append(current)
    checks = [
        check(
            f"goodput(32) / goodput(4), {mode.replace('_', ' ')}",
            current["goodput_32_over_4"][mode],
            at_least(0.8),
            goodput_16_over_4=current["goodput_16_over_4"][mode],
        )
        for mode in TARGET_MODES
    ]
    checks += [
        check(
            "server-side rejection p99",
            current["server_rejection_ms"]["p99"],
            at_most(5.0),
            unit="ms",
            rejections=current["rejections"],
        ),
        check(
            "Encode p99 beside 8 long streams / idle",
            current["encode_p99_beside_long_streams_over_idle"],
            None,
        ),
    ]
    emit(
        {
            "benchmark": "goodput",
            "machine": machine(),
            "queue_size": QUEUE_SIZE,
            "duration_s_per_run": duration_s,
            "repeats": repeats,
            "servers": servers,
            "checks": checks,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
