"""The real ``maira-sae-server serve`` process: memory under sustained requests, no patient
text on stderr at DEBUG, drain on SIGTERM under load, restart after SIGKILL on the same ports,
and a clear refusal to start when a model or SAE file is missing or corrupt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    CANARY,
    SERVING,
    SMALL_PNG,
    ServerProcess,
    admitted_requests,
    canary_calls,
    demo_server_config,
    finished_events,
    health_status,
    outcome_of,
    server_process,
    study,
)
from tests.support.waiting import wait_until

# 5 x 256: every feature the mix's GetFeature asks for (index % 256) is in the logit-effects
# cache before measuring, so the cache filling up is not counted as growth.
WARM_UP_REQUESTS = 1280
MEASURED_REQUESTS = 2000
ENGINE_EVERY = 50  # one request in this many runs the model; the rest stop earlier
MAX_RSS_GROWTH = 0.10


@pytest.fixture(scope="module")
def server(demo_checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    """One DEBUG-level server process; a test that stops or kills it leaves the next test to
    start it again on the same ports (``ensure_running``)."""
    config = demo_server_config(demo_checkpoint, serving={"log_level": "DEBUG"})
    process = ServerProcess(config, tmp_path_factory.mktemp("server-process"))
    try:
        process.start()
        yield process
    finally:
        process.stop()


# -------------------------------------------------------------------------------------------
# Memory


def mixed_request(stub: pb_grpc.MairaSaeServiceStub, index: int, timeout: float) -> Any:
    """The index-th request of a mix through every layer: the model now and then, and
    otherwise image decoding, validation, error mapping, the catalogue and GetInfo."""
    small = study(SMALL_PNG)
    if index % ENGINE_EVERY == 0:
        return stub.Encode(pb.EncodeRequest(study=small, top_k_per_token=4), timeout=timeout)
    kind = index % 5
    if kind == 0:  # decoded, then refused: an unknown SAE
        return stub.Encode(pb.EncodeRequest(study=small, sae_id="missing"), timeout=timeout)
    if kind == 1:  # a corrupt image
        return stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG[:300])), timeout=timeout)
    if kind == 2:
        return stub.SearchFeatures(
            pb.SearchFeaturesRequest(query="pleural effusion"), timeout=timeout
        )
    if kind == 3:
        return stub.GetFeature(pb.GetFeatureRequest(feature=index % 256), timeout=timeout)
    return stub.GetInfo(pb.GetInfoRequest(), timeout=timeout)


async def send_requests(target: str, first: int, count: int, concurrency: int = 16) -> Counter:
    """Send requests ``first`` .. ``first + count - 1`` of the mix; a call that takes a minute
    counts as DEADLINE_EXCEEDED instead of hanging the test."""
    codes: Counter = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        indices = iter(range(first, first + count))

        async def worker() -> None:
            for index in indices:
                try:
                    await mixed_request(stub, index, timeout=60)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes


@pytest.fixture(scope="module")
def info_server(demo_checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server at the production log level. (At DEBUG this mix has deadlocked the server's
    logging: reported to the lead with the stacks; the DEBUG tests below stay short.)"""
    config = demo_server_config(demo_checkpoint)
    with server_process(config, tmp_path_factory.mktemp("info-server")) as process:
        yield process


def test_resident_memory_grows_under_10_percent_over_2000_requests(info_server):
    server = info_server
    warm_codes = asyncio.run(send_requests(server.target, 0, WARM_UP_REQUESTS))
    after_warm_up = server.rss_kib()
    started = time.monotonic()
    codes = asyncio.run(send_requests(server.target, WARM_UP_REQUESTS, MEASURED_REQUESTS))
    after = server.rss_kib()
    growth = (after - after_warm_up) / after_warm_up
    print(
        "\nMEMORY "
        + json.dumps(
            {
                "rss_kib_after_warm_up": after_warm_up,
                "rss_kib_after": after,
                "growth": round(growth, 4),
                "requests": sum(codes.values()),
                "statuses": dict(codes),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    assert sum(codes.values()) == MEASURED_REQUESTS
    assert set(codes) | set(warm_codes) == {"OK", "NOT_FOUND", "INVALID_ARGUMENT"}
    assert growth < MAX_RSS_GROWTH


# -------------------------------------------------------------------------------------------
# Logs


def test_canary_never_appears_on_stderr_at_debug(server):
    server.ensure_running()
    with grpc.insecure_channel(server.target) as channel:
        codes = canary_calls(pb_grpc.MairaSaeServiceStub(channel))
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.INVALID_ARGUMENT in codes
    stderr = server.stderr
    assert '"level": "DEBUG"' in stderr and "maira_sae.access" in stderr
    assert CANARY not in stderr


# -------------------------------------------------------------------------------------------
# Signals


def test_sigterm_under_load_drains_then_exits_0(server):
    server.ensure_running()
    streams = 3
    encodes = 3
    generation = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG), settings=pb.GenerationSettings(max_new_tokens=20)
    )
    with grpc.insecure_channel(server.target) as channel, ThreadPoolExecutor(8) as pool:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        in_flight = [
            pool.submit(outcome_of, lambda: stub.GenerateSteered(generation, timeout=60))
            for _ in range(streams)
        ] + [
            pool.submit(outcome_of, lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG))))
            for _ in range(encodes)
        ]
        wait_until(
            lambda: admitted_requests(server.metrics_port) == streams + encodes,
            10,
            what="every call to be admitted",
        )
        server.signal(signal.SIGTERM)
        wait_until(
            lambda: health_status(server.health_target, timeout_s=1) != SERVING,
            10,
            what="health to leave SERVING",
        )
        late = outcome_of(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=5))
        late_encode = outcome_of(
            lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG)), timeout=5)
        )
        outcomes = [future.result(60) for future in in_flight]
    assert late.code == late_encode.code == grpc.StatusCode.UNAVAILABLE
    assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * (streams + encodes), outcomes
    for outcome in outcomes[:streams]:
        (result,) = finished_events(outcome.response).values()
        assert result.num_tokens == 20  # complete, not cut short
    assert server.wait(60) == 0
    assert "Traceback" not in server.stderr
    assert '"event": "stopped"' in server.stderr


def test_sigkill_then_restart_on_the_same_ports(server):
    server.ensure_running()
    target = server.target
    server.signal(signal.SIGKILL)
    assert server.wait(10) == -signal.SIGKILL
    server.start()
    assert server.target == target
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.MairaSaeServiceStub(channel).Encode(
            pb.EncodeRequest(study=study(SMALL_PNG))
        )
    assert response.total_tokens > 0


# -------------------------------------------------------------------------------------------
# Start-up with broken files


def _remove(path: Path) -> None:
    path.unlink()


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00not a real weights file\xff" * 64)


@dataclass(frozen=True)
class Breakage:
    folder: str  # "model" or "sae"
    file: str
    damage: Callable[[Path], None]


BREAKAGES = {
    "model shard missing": Breakage("model", "model-00002-of-00002.safetensors", _remove),
    "model shard corrupt": Breakage("model", "model-00001-of-00002.safetensors", _corrupt),
    "model config corrupt": Breakage("model", "config.json", _corrupt),
    "sae weights missing": Breakage("sae", "ae.pt", _remove),
    "sae weights corrupt": Breakage("sae", "ae.pt", _corrupt),
}


@dataclass
class StartAttempt:
    server: ServerProcess
    statuses: list[int] = field(default_factory=list)
    exit_code: int | None = None


def _watch_health(attempt: StartAttempt) -> None:
    """Poll the health port until the process exits, recording every status seen."""
    process = attempt.server.process
    assert process is not None
    while process.poll() is None:
        with contextlib.suppress(grpc.RpcError):  # not listening yet
            attempt.statuses.append(health_status(attempt.server.health_target, timeout_s=0.5))
        time.sleep(0.02)


@pytest.fixture(scope="module")
def start_attempts(demo_checkpoint, tmp_path_factory) -> dict[str, StartAttempt]:
    """Every breakage started at once (they fail in seconds), each watched on its health port."""
    attempts: dict[str, StartAttempt] = {}
    for name, breakage in BREAKAGES.items():
        root = tmp_path_factory.mktemp("broken")
        model, sae = root / "model", root / "sae"
        shutil.copytree(demo_checkpoint.model_dir, model)
        shutil.copytree(demo_checkpoint.sae_dir, sae)
        breakage.damage((model if breakage.folder == "model" else sae) / breakage.file)
        config = demo_server_config(demo_checkpoint, model={"path": str(model)})
        config["saes"][0]["path"] = str(sae)
        attempt = StartAttempt(ServerProcess(config, root))
        attempt.server.launch()
        attempts[name] = attempt
    watchers = [threading.Thread(target=_watch_health, args=(a,)) for a in attempts.values()]
    for watcher in watchers:
        watcher.start()
    for attempt in attempts.values():
        try:
            attempt.exit_code = attempt.server.wait(180)
        except subprocess.TimeoutExpired:
            attempt.server.stop()
    for watcher in watchers:
        watcher.join(10)
    return attempts


@pytest.mark.parametrize("name", BREAKAGES)
def test_missing_or_corrupt_file_fails_start_with_one_line_naming_it(start_attempts, name):
    attempt = start_attempts[name]
    stderr = attempt.server.stderr
    assert attempt.exit_code not in (None, 0), stderr
    assert SERVING not in attempt.statuses
    assert "Traceback" not in stderr, stderr
    errors = [json.loads(line) for line in stderr.splitlines() if '"level": "ERROR"' in line]
    assert len(errors) == 1, stderr
    assert BREAKAGES[name].file in errors[0]["error"], errors[0]


def test_sigterm_past_the_grace_ends_every_call_with_a_status_and_a_log_line(
    demo_checkpoint, tmp_path
):
    """Calls still running when the drain grace runs out end UNAVAILABLE, saying why; a call
    whose caller does not read is cancelled at the end of the grace; each has one access-log
    line, and none holds request text."""
    grace_s = 3.0
    config = demo_server_config(demo_checkpoint, serving={"drain_grace_s": grace_s})
    server = ServerProcess(config, tmp_path)
    server.start()
    reading, unread = 5, 1
    long = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG, indication=CANARY),
        settings=pb.GenerationSettings(max_new_tokens=1024, temperature=3.0, seed=1),
        variants=[pb.Variant() for _ in range(4)],
    )
    # The unread caller's window is 1 KiB, so the server's write to it blocks.
    window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    try:
        with (
            grpc.insecure_channel(server.target) as channel,
            grpc.insecure_channel(server.target, options=window) as unread_channel,
            ThreadPoolExecutor(reading) as pool,
        ):
            stub = pb_grpc.MairaSaeServiceStub(channel)
            in_flight = [
                pool.submit(outcome_of, lambda: stub.GenerateSteered(long, timeout=120))
                for _ in range(reading)
            ]
            never_read = pb_grpc.MairaSaeServiceStub(unread_channel).GenerateSteered(
                long, timeout=120
            )
            wait_until(
                lambda: admitted_requests(server.metrics_port) == reading + unread,
                30,
                what="every call to be admitted",
            )
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            outcomes = [future.result(60) for future in in_flight]
            ended_s = time.monotonic() - signalled
            assert server.wait(60) == 0
            with pytest.raises(grpc.RpcError):
                list(never_read)
    finally:
        server.stop()
    assert ended_s < grace_s + 2.0
    for outcome in outcomes:
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome
        assert "drain grace" in outcome.details
    lines = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    calls = [line for line in lines if line.get("method", "").endswith("/GenerateSteered")]
    codes = Counter(line["code"] for line in calls)
    # One line a call. The unread call ends UNAVAILABLE too when the cut finds it between
    # writes, and CANCELLED when grpc cancels it at the end of the grace, mid-write.
    assert sum(codes.values()) == reading + unread, codes
    assert set(codes) <= {"UNAVAILABLE", "CANCELLED"}, codes
    assert any(line.get("event") == "drain_cut" for line in lines)
    assert CANARY not in server.stderr
