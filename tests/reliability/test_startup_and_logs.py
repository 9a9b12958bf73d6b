"""The real ``maira-sae-server serve`` process: a port already in use fails start-up with the
one JSON ``startup_failed`` line, and a caller's undecodable DICOM never puts pydicom's
traceback (or any ERROR) in the server's log."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import grpc
import pytest

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    ServerProcess,
    demo_server_config,
    dicom_bytes,
    outcome_of,
    server_process,
    study,
)
from tests.support.waiting import wait_until


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("port_name", ["metrics_port", "grpc_port"])
def test_a_port_in_use_fails_start_up_with_one_json_line(
    demo_checkpoint, tmp_path, occupied_port, port_name
):
    server = ServerProcess(demo_server_config(demo_checkpoint), tmp_path)
    setattr(server, port_name, occupied_port)
    server.launch()
    exit_code = server.wait(180)
    stderr = server.stderr
    assert exit_code != 0, stderr
    assert "Traceback" not in stderr, stderr
    errors = [json.loads(line) for line in stderr.splitlines() if '"level": "ERROR"' in line]
    assert len(errors) == 1, stderr
    assert errors[0]["event"] == "startup_failed"
    assert f"serving.{port_name} {occupied_port}" in errors[0]["error"], errors[0]


@pytest.fixture(scope="module")
def info_server(demo_checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    config = demo_server_config(demo_checkpoint)
    with server_process(config, tmp_path_factory.mktemp("log-server")) as process:
        yield process


def test_an_undecodable_dicom_logs_nothing_above_info(info_server):
    broken = dicom_bytes(compressed_pixel_data=b"\xff\x4f\xff\x51" + bytes(200))
    with grpc.insecure_channel(info_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        outcome = outcome_of(lambda: stub.Encode(pb.EncodeRequest(study=study(broken))))
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.details
        # The access line comes after the decoder's own: once it is there, all of them are.
        wait_until(lambda: '"code": "INVALID_ARGUMENT"' in info_server.stderr, timeout_s=10)
    stderr = info_server.stderr
    assert "Traceback" not in stderr, stderr
    levels = {json.loads(line)["level"] for line in stderr.splitlines() if line.startswith("{")}
    assert levels <= {"INFO", "DEBUG"}, stderr
