"""A GenerateSteered caller that stops reading, over a real connection: once
``batching.stream_buffer_events`` events wait for the connection to take them, the call's rows
stop (the engine generates nothing more for it, and frees its rows while the caller still holds
the stream open) and the call ends RESOURCE_EXHAUSTED, saying why.

The connection takes what the caller's HTTP/2 window holds before the server can tell that
nobody reads: grpc's default client grows that window to a few MiB (BDP probing), so these
callers fix theirs at 1 KiB (``grpc.http2.bdp_probe`` 0, ``grpc.http2.lookahead_bytes``).
bench/unread_streams.py measures the default window too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import grpc
import pytest

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import SMALL_PNG, finished_events, scrape_metrics
from tests.support.waiting import wait_until

BUFFER = 32
ROWS = 8
TOKENS = 1024
WINDOW_BYTES = 1024
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", WINDOW_BYTES)]
# The smallest token event on the wire: grpc's 5-byte message prefix and a GenerateEvent of
# at least a few bytes (the token's position, id and text fields).
MIN_EVENT_BYTES = 12
# What the engine may generate for an unread stream: what the window takes, the buffer, and the
# decode step that overflows it (one token per row).
MOST_GENERATED = WINDOW_BYTES // MIN_EVENT_BYTES + BUFFER + ROWS
GENERATED = "maira_sae_generated_tokens_total"


@pytest.fixture(scope="module")
def buffered_server(demo_checkpoint):
    from maira_sae.server.service.config import BatchingConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(demo_checkpoint)
    config = replace(config, batching=BatchingConfig(stream_buffer_events=BUFFER))
    with running_server(config) as server:
        yield server


def unread_request() -> pb.GenerateSteeredRequest:
    """8 x 1024 tokens at temperature 3: the demo model then rarely ends a row early."""
    return pb.GenerateSteeredRequest(
        study=pb.Study(frontal=pb.Image(data=SMALL_PNG)),
        settings=pb.GenerationSettings(max_new_tokens=TOKENS, temperature=3.0, seed=1),
        variants=[pb.Variant() for _ in range(ROWS)],
    )


def metric(server, name: str) -> float:
    return scrape_metrics(server.ports.metrics).get(name, 0.0)


def settled(server, still_s: float = 1.5, timeout_s: float = 120.0) -> float:
    """The generated-token count once it has stopped moving for ``still_s``."""
    last, since = metric(server, GENERATED), time.monotonic()

    def still() -> bool:
        nonlocal last, since
        now = metric(server, GENERATED)
        if now != last:
            last, since = now, time.monotonic()
        return time.monotonic() - since >= still_s

    wait_until(still, timeout_s, interval_s=0.2, what="the generated tokens to stop moving")
    return last


@contextmanager
def unread_streams(server, count: int) -> Iterator[list[grpc.Future]]:
    """``count`` 8 x 1024 streams opened by callers with a 1 KiB window that never read."""
    channels = [grpc.insecure_channel(server.target, options=SMALL_WINDOW) for _ in range(count)]
    calls = [pb_grpc.MairaSaeServiceStub(c).GenerateSteered(unread_request()) for c in channels]
    try:
        yield calls
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()


def test_an_unread_stream_stops_its_rows_and_ends_resource_exhausted(buffered_server):
    server = buffered_server
    before = metric(server, GENERATED)
    with unread_streams(server, 1) as (call,):
        generated = settled(server) - before
        # Stopped where the buffer filled, far short of the 8192 tokens asked for, and its rows
        # are free while its caller still holds the stream open.
        assert 0 < generated <= MOST_GENERATED, generated
        assert metric(server, "maira_sae_active_rows") == 0
        events = 0
        with pytest.raises(grpc.RpcError) as raised:
            for _ in call:
                events += 1
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "stopped reading" in error.details() and "stream_buffer_events" in error.details()
    # What was generated reached the caller, then the status; the step that overflowed the
    # buffer may have generated a few tokens (at most one a row) past it, which are dropped.
    assert generated - ROWS < events <= generated


def test_a_small_call_completes_while_unread_streams_hold_every_row(buffered_server):
    """Four unread 8-row streams take the 32 decode rows; an 8-token call gets rows once
    they overflow, instead of waiting for 4 x 8192 tokens."""
    server = buffered_server
    small = pb.GenerateSteeredRequest(
        study=pb.Study(frontal=pb.Image(data=SMALL_PNG)),
        settings=pb.GenerationSettings(max_new_tokens=8),
    )
    with unread_streams(server, 4), grpc.insecure_channel(server.target) as channel:
        wait_until(
            lambda: metric(server, "maira_sae_active_rows") > 0, 60, what="the streams to run"
        )
        events = list(pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(small, timeout=120))
    (result,) = finished_events(events).values()
    assert result.num_tokens > 0
