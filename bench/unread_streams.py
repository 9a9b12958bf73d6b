"""Callers that stop reading their GenerateSteered streams, over real connections.

    python -m bench.unread_streams            # every case
    python -m bench.unread_streams --quick    # the unread-stream cases only

A demo server (default settings: ``batching.stream_buffer_events`` 512, 32 decode rows) in a
subprocess; each caller is a plain grpc channel of its own. An unread stream is 8 variants x
1024 tokens at temperature 3 (the demo model then rarely ends a row early). Figures:

- ``unread_stream``: the tokens the engine generated for one unread stream (the server's
  ``maira_sae_generated_tokens_total``, once it stops moving), and how the call ended, for
  three client windows: grpc's default (BDP probing grows the window to a few MiB), a fixed
  64 KiB window (``grpc.http2.bdp_probe`` 0) and a fixed 1 KiB window (and
  ``grpc.http2.lookahead_bytes`` 1024). What a client's HTTP/2 window accepts is taken by the
  transport: the server cannot tell it from what the caller read.
- ``small_call_with_unread_streams``: seconds an 8-token call (one variant) takes while 20
  unread streams are open, for the default and the 1 KiB client window (deadline 60 s: a call
  that waits longer is reported as DEADLINE_EXCEEDED).

Nothing is compared within a run: run it on two commits and compare the JSON.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reliability

import grpc

from bench.harness import bench_arguments, emit, machine
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import SMALL_PNG, ServerProcess, scrape_metrics

GENERATED = "maira_sae_generated_tokens_total"
UNREAD_VARIANTS = 8
UNREAD_TOKENS = 1024
OPEN_STREAMS = 20
SMALL_CALL_DEADLINE_S = 60.0
WINDOWS: dict[str, list[tuple[str, int]]] = {
    "default": [],
    "fixed_64KiB": [("grpc.http2.bdp_probe", 0)],
    "fixed_1KiB": [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)],
}


def unread_request() -> pb.GenerateSteeredRequest:
    return pb.GenerateSteeredRequest(
        study=pb.Study(frontal=pb.Image(data=SMALL_PNG)),
        settings=pb.GenerationSettings(max_new_tokens=UNREAD_TOKENS, temperature=3.0, seed=1),
        variants=[pb.Variant() for _ in range(UNREAD_VARIANTS)],
    )


def generated(server: ServerProcess) -> float:
    return scrape_metrics(server.metrics_port).get(GENERATED, 0.0)


def wait_until_still(server: ServerProcess, still_s: float = 3.0, limit_s: float = 300.0) -> float:
    """The generated-token count once it has not moved for ``still_s`` seconds."""
    started = time.monotonic()
    last, since = generated(server), time.monotonic()
    while time.monotonic() - started < limit_s:
        time.sleep(0.5)
        now = generated(server)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still_s:
            break
    return last


def ending(call: Any) -> tuple[str, int]:
    """Read what is left of a stream: how it ended and how many events came."""
    events = 0
    try:
        for _ in call:
            events += 1
        return "OK", events
    except grpc.RpcError as error:
        return error.code().name, events


def unread_stream(server: ServerProcess, options: Sequence[tuple[str, int]]) -> dict[str, Any]:
    before = generated(server)
    started = time.monotonic()
    with grpc.insecure_channel(server.target, options=list(options)) as channel:
        call = pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(unread_request())
        tokens = wait_until_still(server) - before
        engine_s = time.monotonic() - started
        code, events = ending(call)
    return {
        "generated_tokens": int(tokens),
        "of_at_most": UNREAD_VARIANTS * UNREAD_TOKENS,
        "code": code,
        "events_read_afterwards": events,
        "seconds_until_generation_stopped": round(engine_s, 1),
    }


def small_call_with_unread_streams(
    server: ServerProcess, options: Sequence[tuple[str, int]]
) -> dict[str, Any]:
    channels = [
        grpc.insecure_channel(server.target, options=list(options)) for _ in range(OPEN_STREAMS)
    ]
    before = generated(server)
    try:
        calls = [pb_grpc.MairaSaeServiceStub(c).GenerateSteered(unread_request()) for c in channels]
        time.sleep(2.0)  # admitted, the first of them running
        request = pb.GenerateSteeredRequest(
            study=pb.Study(frontal=pb.Image(data=SMALL_PNG)),
            settings=pb.GenerationSettings(max_new_tokens=8),
        )
        with grpc.insecure_channel(server.target) as channel:
            started = time.monotonic()
            try:
                list(
                    pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(
                        request, timeout=SMALL_CALL_DEADLINE_S
                    )
                )
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            seconds = time.monotonic() - started
        for call in calls:
            call.cancel()
        tokens = wait_until_still(server, still_s=2.0) - before
    finally:
        for channel in channels:
            channel.close()
    return {
        "open_unread_streams": OPEN_STREAMS,
        "small_call_seconds": round(seconds, 2),
        "small_call_code": code,
        "tokens_generated_meanwhile": int(tokens),
    }


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0])
    with tempfile.TemporaryDirectory(prefix="unread-streams-") as workdir:
        cache = Path(".cache/demo-checkpoint").resolve()
        config = {
            "serving": {"host": "127.0.0.1"},
            "model": {"demo": True, "demo_dir": str(cache)},
        }
        server = ServerProcess(config, Path(workdir))
        server.start(timeout_s=600)
        try:
            unread = {name: unread_stream(server, options) for name, options in WINDOWS.items()}
            small = (
                {}
                if args.quick
                else {
                    name: small_call_with_unread_streams(server, WINDOWS[name])
                    for name in ("default", "fixed_1KiB")
                }
            )
        finally:
            server.stop()
    emit(
        {
            "benchmark": "unread_streams",
            "machine": machine(),
            "stream_buffer_events": 512,
            "unread_stream": unread,
            "small_call_with_unread_streams": small,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
