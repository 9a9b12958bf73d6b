"""Faults on the caller's side and inside a batch: a cancelled, killed or timed-out call stops
its work and frees its slot so that others are served; an exception in one batch fails only
that batch's requests, with a precise status, and the next batch runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    REPO_ROOT,
    SERVING,
    SMALL_PNG,
    admitted_requests,
    health_status,
    outcome_of,
    scrape_metrics,
    study,
)
from tests.support.servers import RunningServer
from tests.support.waiting import wait_until

LONG = 1000  # new tokens: tens of seconds on the demo model unless the generation is stopped
FREED_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def stub(demo_server: RunningServer) -> Iterator[pb_grpc.MairaSaeServiceStub]:
    with grpc.insecure_channel(demo_server.target) as channel:
        yield pb_grpc.MairaSaeServiceStub(channel)


def long_generation() -> pb.GenerateSteeredRequest:
    return pb.GenerateSteeredRequest(
        study=study(SMALL_PNG), settings=pb.GenerationSettings(max_new_tokens=LONG)
    )


def generated_tokens(server: RunningServer) -> float:
    return scrape_metrics(server.ports.metrics)["maira_sae_generated_tokens_total"]


def batches_run(server: RunningServer) -> float:
    return scrape_metrics(server.ports.metrics)["maira_sae_batch_size_count"]


def assert_work_stopped_and_others_served(
    server: RunningServer, stub: pb_grpc.MairaSaeServiceStub
) -> None:
    """The slot is free (queue depth 0 on the metrics port), no more tokens are generated, and
    a new call is answered at once rather than after the abandoned generation."""
    wait_until(
        lambda: admitted_requests(server.ports.metrics) == 0,
        FREED_WITHIN_S,
        what="the slot to free",
    )
    # The engine stops at the next token boundary: the count settles within a moment.
    samples = [generated_tokens(server)]

    def settled() -> bool:
        time.sleep(0.3)
        samples.append(generated_tokens(server))
        return samples[-1] == samples[-2]

    wait_until(settled, FREED_WITHIN_S, what="the abandoned generation to stop")
    started = time.monotonic()
    stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG)), timeout=FREED_WITHIN_S)
    assert time.monotonic() - started < FREED_WITHIN_S
    assert health_status(server.target) == SERVING


def test_client_cancel_mid_stream(demo_server, stub):
    call = stub.GenerateSteered(long_generation())
    assert next(call).WhichOneof("event") == "token"
    assert next(call).WhichOneof("event") == "token"
    call.cancel()
    assert call.code() == grpc.StatusCode.CANCELLED
    assert_work_stopped_and_others_served(demo_server, stub)


def test_client_process_killed_mid_stream(demo_server, stub):
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._stream_client", demo_server.target, str(LONG)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "streaming"
        assert admitted_requests(demo_server.ports.metrics) == 1
        client.send_signal(signal.SIGKILL)  # no goodbye: the connection just drops
        client.wait(10)
    finally:
        client.kill()
    assert_work_stopped_and_others_served(demo_server, stub)


def test_deadline_expiring_while_generating(demo_server, stub):
    outcome = outcome_of(lambda: stub.GenerateSteered(long_generation(), timeout=1.5))
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_work_stopped_and_others_served(demo_server, stub)


def test_deadline_expiring_while_queued_drops_the_work(demo_server, stub, monkeypatch):
    """Analysis runs between decode steps now, so a generation no longer holds the engine:
    an analysis batch that takes long does. An Encode queued behind it expires unrun."""
    release = threading.Event()
    engine = demo_server.server.runtime.engine
    slow = engine.analyse

    def held(batch):
        release.wait(10)
        return slow(batch)

    monkeypatch.setattr(engine, "analyse", held)
    before = batches_run(demo_server)
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(stub.Encode, pb.EncodeRequest(study=study(SMALL_PNG)))
        wait_until(lambda: batches_run(demo_server) > before, FREED_WITHIN_S, what="the blocker")
        queued = outcome_of(
            lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG)), timeout=0.5)
        )
        assert queued.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # Its slot is freed at once, while the engine is still busy with the blocker.
        wait_until(lambda: admitted_requests(demo_server.ports.metrics) == 1, FREED_WITHIN_S)
        release.set()
        assert blocker.result(30).total_tokens > 0
    assert_work_stopped_and_others_served(demo_server, stub)
    # Batches: the blocker and the probe Encode. The expired Encode never reached the model.
    assert batches_run(demo_server) - before == 2


# -------------------------------------------------------------------------------------------
# An exception inside one batch


def fail_once(monkeypatch, model: torch.nn.Module, error: Exception) -> list[int]:
    """Make the model's next forward pass raise ``error`` (where the accelerator would run out
    of memory); returns a list that receives the batch size of the failed forward."""
    original = model.forward
    failed: list[int] = []

    def flaky(*args, **kwargs):
        if not failed:
            fed = kwargs.get("input_ids", kwargs.get("inputs_embeds"))  # prefills feed embeds
            failed.append(int(fed.shape[0]))
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    return failed


def test_out_of_memory_fails_only_its_batch(demo_server, stub, monkeypatch):
    model = demo_server.server.runtime.engine.model
    failed = fail_once(monkeypatch, model, torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    request = pb.EncodeRequest(study=study(SMALL_PNG))
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: outcome_of(lambda: stub.Encode(request)), range(4)))
    exhausted = [o for o in outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(exhausted) == failed[0] >= 1
    assert all(o.retry_delay_s for o in exhausted)  # retryable, and says when
    assert {o.code for o in outcomes} <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert stub.Encode(request).total_tokens > 0  # the next batch runs


def test_out_of_memory_during_generation_then_the_next_generation_runs(
    demo_server, stub, monkeypatch
):
    model = demo_server.server.runtime.engine.model
    fail_once(monkeypatch, model, torch.OutOfMemoryError("CUDA out of memory"))
    request = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG), settings=pb.GenerationSettings(max_new_tokens=2)
    )
    assert outcome_of(lambda: stub.GenerateSteered(request)).code == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert outcome_of(lambda: stub.GenerateSteered(request)).code == grpc.StatusCode.OK


def test_unexpected_exception_is_internal_with_a_request_id_and_the_server_goes_on(
    demo_server, stub, monkeypatch
):
    fail_once(monkeypatch, demo_server.server.runtime.engine.model, RuntimeError("simulated bug"))
    request = pb.EncodeRequest(study=study(SMALL_PNG))
    outcome = outcome_of(lambda: stub.Encode(request))
    assert outcome.code == grpc.StatusCode.INTERNAL
    assert "request id" in outcome.details and "simulated bug" not in outcome.details
    assert outcome_of(lambda: stub.Encode(request)).code == grpc.StatusCode.OK
