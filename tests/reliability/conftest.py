"""Fixtures of the reliability suite: a shared in-process server with small limits, so that
"over the limit" costs little and every limit is reachable by the property test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import pytest

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint
    from tests.support.servers import RunningServer

TIGHT_LIMITS = {
    "max_text_chars": 200,
    "max_new_tokens": 6,
    "default_max_new_tokens": 3,
    "max_variants": 3,
    "max_interventions_per_variant": 3,
    "max_top_k": 16,
    "max_abs_strength": 100.0,
    # The demo prompt with one image is 1420 tokens; one demo token per ASCII character, four
    # per emoji: one field of 200 emoji passes max_text_chars but not max_prompt_tokens.
    "max_prompt_tokens": 1900,
    "max_sequence_tokens": 2000,
    "max_token_ranges": 8,
    "max_image_aspect_ratio": 4.0,
    "max_id_chars": 64,
}


@pytest.fixture(scope="session")
def tight_server(demo_checkpoint: DemoCheckpoint) -> Iterator[RunningServer]:
    """A real server on loopback serving the demo checkpoint under TIGHT_LIMITS."""
    from maira_sae.server.service.config import LimitsConfig
    from tests.support.servers import demo_config, running_server

    with running_server(demo_config(demo_checkpoint, limits=LimitsConfig(**TIGHT_LIMITS))) as s:
        yield s


@pytest.fixture(scope="session")
def tight_stub(tight_server: RunningServer) -> Iterator[pb_grpc.MairaSaeServiceStub]:
    with grpc.insecure_channel(tight_server.target) as channel:
        yield pb_grpc.MairaSaeServiceStub(channel)


@pytest.fixture(scope="session")
def tight_info(tight_stub: pb_grpc.MairaSaeServiceStub) -> pb.GetInfoResponse:
    return tight_stub.GetInfo(pb.GetInfoRequest())
