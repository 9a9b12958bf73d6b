"""Overload and departed callers on a real server: admission before any preparation, refusals
paced for callers that ignore RetryInfo, the shared image memory budget, deadline expiry
counted as such, cancelled streams that log no error, an unread stream that cannot grow the
server's memory, and the token limit's default."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import grpc
import pytest

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    SMALL_PNG,
    StreamOnThread,
    noise,
    outcome_of,
    png_bytes,
    scrape_metrics,
    study,
)
from tests.support.waiting import wait_until

Code = grpc.StatusCode
ENCODE = "/maira_sae.v1.MairaSaeService/Encode"
GENERATE = "/maira_sae.v1.MairaSaeService/GenerateSteered"
QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def small_queue_server(demo_checkpoint):
    from maira_sae.server.service.config import BatchingConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(demo_checkpoint)
    # Every place may hold a long call: the holders below fill the whole queue.
    batching = BatchingConfig(queue_size=QUEUE_SIZE, long_call_share=1.0)
    config = replace(config, batching=batching)
    with running_server(config) as server:
        yield server


@pytest.fixture(scope="module")
def small_queue_stub(small_queue_server) -> Iterator[pb_grpc.MairaSaeServiceStub]:
    with grpc.insecure_channel(small_queue_server.target) as channel:
        yield pb_grpc.MairaSaeServiceStub(channel)


@contextmanager
def holding(
    stub: pb_grpc.MairaSaeServiceStub, server, count: int
) -> Iterator[list[StreamOnThread]]:
    """``count`` long generations admitted (the queue depth says so) until the block ends."""
    holders = [StreamOnThread(stub, variants=8, tokens=1024, timeout=300) for _ in range(count)]
    try:
        port = server.ports.metrics
        wait_until(
            lambda: scrape_metrics(port)["maira_sae_admitted_requests"] >= count,
            timeout_s=60,
            what="the holders to be admitted",
        )
        running = lambda: any(holder.events for holder in holders)  # noqa: E731
        wait_until(running, timeout_s=60, what="the first token")
        yield holders
    finally:
        for holder in holders:
            holder.cancel()
        wait_until(
            lambda: scrape_metrics(server.ports.metrics)["maira_sae_admitted_requests"] == 0,
            timeout_s=60,
            what="the queue to drain",
        )


def test_a_full_server_refuses_before_looking_at_the_request(small_queue_stub, small_queue_server):
    """A junk image is INVALID_ARGUMENT only once decoded: a full server answers
    RESOURCE_EXHAUSTED with RetryInfo instead, so the refusal cost no decoding at all."""
    junk = pb.EncodeRequest(study=study(b"\x89PNG\r\n\x1a\n" + bytes(1000)))
    with holding(small_queue_stub, small_queue_server, QUEUE_SIZE):
        outcomes = [outcome_of(lambda: small_queue_stub.Encode(junk, timeout=30))]
        outcomes.append(outcome_of(lambda: small_queue_stub.Encode(junk, timeout=30)))
    for outcome in outcomes:
        assert outcome.code == Code.RESOURCE_EXHAUSTED, (outcome.code, outcome.details)
        assert outcome.retry_delay_s is not None and outcome.retry_delay_s > 0
    assert outcome_of(lambda: small_queue_stub.Encode(junk, timeout=30)).code == (
        Code.INVALID_ARGUMENT
    )


def test_a_caller_that_ignores_retry_info_is_refused_at_the_pace_it_was_told(
    small_queue_stub, small_queue_server, caplog
):
    """A caller that calls again at once after a refusal waits out the delay it was told before
    its next refusal; one that waited the delay is refused at once (refusal pacing)."""
    caplog.set_level(logging.INFO, logger="maira_sae.access")
    held_count = lambda: scrape_metrics(metrics_port).get(  # noqa: E731
        "maira_sae_refusals_held_total", 0.0
    )
    metrics_port = small_queue_server.ports.metrics
    request = pb.EncodeRequest(study=study(SMALL_PNG))
    # A connection of its own (the pace is kept per connection, for each call open on it):
    # the holders' calls are open on the module's.
    own_connection = (("grpc.use_local_subchannel_pool", 1),)
    with grpc.insecure_channel(small_queue_server.target, options=own_connection) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        with holding(small_queue_stub, small_queue_server, QUEUE_SIZE):
            before = held_count()
            first = outcome_of(lambda: stub.Encode(request, timeout=30))
            assert held_count() == before, "a first refusal is not held"
            started = time.monotonic()
            second = outcome_of(lambda: stub.Encode(request, timeout=30))  # at once: too soon
            second_s = time.monotonic() - started
            assert held_count() == before + 1
            time.sleep(second.retry_delay_s)  # honours the delay it was told
            third = outcome_of(lambda: stub.Encode(request, timeout=30))
            assert held_count() == before + 1, "a caller that kept the pace is not held"
    for outcome in (first, second, third):
        assert outcome.code == Code.RESOURCE_EXHAUSTED, (outcome.code, outcome.details)
    assert second_s >= 0.9 * first.retry_delay_s, (second_s, first.retry_delay_s)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "maira_sae.access"]
    refused = [line for line in lines if line["method"] == ENCODE]
    held = [line["held_ms"] for line in refused if "held_ms" in line]
    assert len(held) == 1 and held[0] >= 900 * first.retry_delay_s, refused


def test_deadline_expiry_is_deadline_exceeded_in_metrics_and_access_log(
    small_queue_stub, small_queue_server, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="maira_sae.access")
    metrics_port = small_queue_server.ports.metrics

    def count(code: str) -> float:
        key = f'maira_sae_requests_total{{code="{code}",method="{ENCODE}"}}'
        return scrape_metrics(metrics_port).get(key, 0.0)

    before = {code: count(code) for code in ("DEADLINE_EXCEEDED", "CANCELLED")}
    request = pb.EncodeRequest(study=study(SMALL_PNG))
    # Generations no longer hold the engine (analysis runs between decode steps): a slow
    # analysis batch does, and the Encode waits behind it until its deadline passes.
    release = threading.Event()
    engine = small_queue_server.server.runtime.engine
    slow = engine.analyse
    started: list[int] = []

    def held(batch):
        started.append(len(batch))
        release.wait(30)
        return slow(batch)

    monkeypatch.setattr(engine, "analyse", held)
    blocker = threading.Thread(target=lambda: small_queue_stub.Encode(request, timeout=60))
    blocker.start()
    try:
        wait_until(lambda: bool(started), timeout_s=30, what="the slow batch to start")
        outcome = outcome_of(lambda: small_queue_stub.Encode(request, timeout=1.0))
        assert outcome.code == Code.DEADLINE_EXCEEDED, (outcome.code, outcome.details)
        wait_until(
            lambda: count("DEADLINE_EXCEEDED") > before["DEADLINE_EXCEEDED"],
            timeout_s=30,
            what="the expired call in the metrics",
        )
    finally:
        release.set()
        blocker.join(30)
    assert count("CANCELLED") == before["CANCELLED"]
    lines = [r.getMessage() for r in caplog.records if r.name == "maira_sae.access"]
    encodes = [line for line in lines if ENCODE in line]
    assert any('"code": "DEADLINE_EXCEEDED"' in line for line in encodes), encodes


def test_cancelling_streams_logs_no_error(small_queue_stub, small_queue_server, caplog):
    caplog.set_level(logging.DEBUG)
    metrics_port = small_queue_server.ports.metrics
    cancelled = f'maira_sae_requests_total{{code="CANCELLED",method="{GENERATE}"}}'
    before = scrape_metrics(metrics_port).get(cancelled, 0.0)
    request = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG), settings=pb.GenerationSettings(max_new_tokens=64)
    )
    for _ in range(12):
        call = small_queue_stub.GenerateSteered(request, timeout=60)
        next(call)
        call.cancel()
    gc.collect()
    # every call has ended on the server (its finalizers and tasks have run on the loop)
    wait_until(
        lambda: scrape_metrics(metrics_port).get(cancelled, 0.0) == before + 12,
        timeout_s=30,
        what="the server to end the 12 cancelled calls",
    )
    gc.collect()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()) for r in errors]
    assert not [r for r in caplog.records if r.exc_info], "a cancel is normal: no traceback"


# -------------------------------------------------------------------------------------------
# The image memory budget

BIG_SIDE = 1500  # 2.25 M pixels: its decoding memory is reserved as 54 MB


@pytest.fixture(scope="module")
def budget_server(demo_checkpoint):
    from maira_sae.server.service.config import BatchingConfig, LimitsConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(demo_checkpoint)
    per_image = BIG_SIDE * BIG_SIDE * 24
    config = replace(
        config,
        limits=LimitsConfig(image_memory_bytes=int(per_image * 1.5)),  # one at a time
        batching=BatchingConfig(prepare_workers=4),
    )
    with running_server(config) as server:
        yield server


def _concurrently(call: Callable[[], object], count: int) -> list:
    results: list = [None] * count

    def run(index: int) -> None:
        results[index] = outcome_of(call)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_image_memory_is_a_budget_shared_by_concurrent_requests(budget_server):
    big = png_bytes(noise(BIG_SIDE, BIG_SIDE))
    request = pb.EncodeRequest(study=study(big), top_k_per_token=1)
    with grpc.insecure_channel(budget_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        codes: set[Code] = set()
        for _ in range(6):  # concurrency on a busy machine: a few rounds until they overlap
            outcomes = _concurrently(lambda: stub.Encode(request, timeout=120), 8)
            codes |= {o.code for o in outcomes}
            exhausted = [o for o in outcomes if o.code == Code.RESOURCE_EXHAUSTED]
            for outcome in exhausted:
                assert "image_memory_bytes" in outcome.details
                assert outcome.retry_delay_s is not None and outcome.retry_delay_s > 0
            if exhausted:
                break
        assert codes <= {Code.OK, Code.RESOURCE_EXHAUSTED}, codes
        assert Code.RESOURCE_EXHAUSTED in codes, "eight at once never overlapped"
        # Everything was given back: one at a time always fits.
        assert outcome_of(lambda: stub.Encode(request, timeout=120)).code == Code.OK


def test_a_study_that_can_never_fit_the_budget_is_out_of_range(budget_server):
    frontal = png_bytes(noise(BIG_SIDE, BIG_SIDE))
    request = pb.EncodeRequest(
        study=pb.Study(frontal=pb.Image(data=frontal), lateral=pb.Image(data=frontal))
    )
    with grpc.insecure_channel(budget_server.target) as channel:
        outcome = outcome_of(
            lambda: pb_grpc.MairaSaeServiceStub(channel).Encode(request, timeout=60)
        )
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "image_memory_bytes" in outcome.details


# -------------------------------------------------------------------------------------------
# Token limits' default


def test_token_limits_default_to_the_models_context_length(demo_server, demo_checkpoint):
    config = json.loads((demo_checkpoint.model_dir / "config.json").read_text())
    context = config["text_config"]["max_position_embeddings"]
    with grpc.insecure_channel(demo_server.target) as channel:
        limits = pb_grpc.MairaSaeServiceStub(channel).GetInfo(pb.GetInfoRequest()).limits
    assert (limits.max_prompt_tokens, limits.max_sequence_tokens) == (context, context)
