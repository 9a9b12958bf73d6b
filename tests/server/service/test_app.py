"""Service behaviour beyond single calls: health transitions, metrics, a full queue, deadlines,
cancellation, auth, limits and a SIGTERM drain, each on a real server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from maira_sae.server.service import app as app_module
from maira_sae.server.service.config import AuthConfig, BatchingConfig, LimitsConfig
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.server.service.test_servicer import demo_study, png_bytes
from tests.support.servers import demo_config, running_server
from tests.support.waiting import wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def long_generation(max_new_tokens: int = 400) -> pb.GenerateSteeredRequest:
    return pb.GenerateSteeredRequest(
        study=demo_study(), settings=pb.GenerationSettings(max_new_tokens=max_new_tokens)
    )


def wait_for_first_event(stream) -> pb.GenerateSteeredResponse:
    return next(iter(stream))


def test_health_not_serving_while_loading_then_serving_then_draining(demo_checkpoint, monkeypatch):
    release = threading.Event()
    real_load = app_module.load_runtime

    def slow_load(config, metrics):
        assert release.wait(30)
        return real_load(config, metrics)

    monkeypatch.setattr(app_module, "load_runtime", slow_load)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = app_module.MairaSaeServer(demo_config(demo_checkpoint))
    starting = asyncio.run_coroutine_threadsafe(server.start(), loop)
    try:
        wait_until(lambda: server.health_port is not None, 10, 0.01, "the health port")
        assert health_status(server.health_port) == NOT_SERVING
        assert health_status(server.health_port, "maira_sae.v1.MairaSaeService") == NOT_SERVING
        release.set()
        ports = starting.result(60)
        assert health_status(ports.health) == SERVING
        assert health_status(ports.grpc, "maira_sae.v1.MairaSaeService") == SERVING

        with grpc.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            stream = pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(long_generation(60))
            wait_for_first_event(stream)
            stopping = asyncio.run_coroutine_threadsafe(server.stop(grace_s=30), loop)
            wait_until(lambda: health_status(ports.health) == NOT_SERVING, 10, what="NOT_SERVING")
            rest = list(stream)  # the call in flight completes during the drain
            assert rest[-1].WhichOneof("event") == "finished"
            stopping.result(60)
    finally:
        release.set()
        if not starting.done():
            starting.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_metrics_endpoint_serves_the_named_metrics_and_they_move(demo_server):
    before = scrape(demo_server.ports.metrics)
    for name in (
        "maira_sae_requests_total",
        "maira_sae_request_duration_seconds",
        "maira_sae_admitted_requests",
        "maira_sae_admitted_calls_total",
        "maira_sae_queued_cost_tokens",
        "maira_sae_engine_busy_ratio",
        "maira_sae_batch_size",
        "maira_sae_queue_wait_seconds",
        "maira_sae_time_to_first_token_seconds",
        "maira_sae_generated_tokens_total",
        "maira_sae_model_load_seconds",
        "maira_sae_sae_load_seconds",
        "maira_sae_engine_busy_seconds_total",
    ):
        assert name in before, name
    with grpc.insecure_channel(demo_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        stub.Encode(pb.EncodeRequest(study=demo_study()))
        list(stub.GenerateSteered(long_generation(5)))
    after = scrape(demo_server.ports.metrics)
    labels = {"method": "/maira_sae.v1.MairaSaeService/Encode", "code": "OK"}
    assert metric_value(after, "maira_sae_requests_total", **labels) == (
        metric_value(before, "maira_sae_requests_total", **labels) + 1
    )
    assert metric_value(after, "maira_sae_generated_tokens_total") >= (
        metric_value(before, "maira_sae_generated_tokens_total") + 5
    )
    assert metric_value(after, "maira_sae_model_load_seconds") > 0
    assert 0 < metric_value(after, "maira_sae_engine_busy_ratio") <= 1
    assert metric_value(after, "maira_sae_queued_cost_tokens") == 0  # all done
    calls = {"priority": "interactive", "lane": "short"}
    assert metric_value(after, "maira_sae_admitted_calls_total", **calls) == (
        metric_value(before, "maira_sae_admitted_calls_total", **calls) + 2
    )


@pytest.fixture(scope="module")
def one_slot_server(demo_checkpoint):
    """A server whose queue holds one request: a running generation fills it."""
    config = demo_config(
        demo_checkpoint,
        batching=BatchingConfig(queue_size=1, max_batch_size=8),
    )
    with running_server(config) as server:
        yield server


def test_full_queue_is_resource_exhausted_with_retry_info_and_cancel_frees_the_slot(
    one_slot_server,
):
    with grpc.insecure_channel(one_slot_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        stream = stub.GenerateSteered(long_generation())
        wait_for_first_event(stream)
        with pytest.raises(grpc.RpcError) as error:
            stub.Encode(pb.EncodeRequest(study=demo_study()))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(error.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert retry.retry_delay.ToNanoseconds() > 0
        trailers = dict(error.value.trailing_metadata())
        assert int(trailers["grpc-retry-pushback-ms"]) > 0

        stream.cancel()
        started = time.monotonic()
        deadline = started + 10
        while True:  # the slot frees at the generation's next step, not after 400 tokens
            try:
                stub.Encode(pb.EncodeRequest(study=demo_study()))
                break
            except grpc.RpcError as retry_error:
                assert retry_error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "cancelling did not free the slot"
                time.sleep(0.05)
        assert time.monotonic() - started < 5


def test_expired_deadline_is_deadline_exceeded_and_the_model_never_runs(demo_checkpoint):
    """An Encode queued behind a long-running batch expires; it never reaches the model."""
    with running_server(demo_config(demo_checkpoint)) as server:
        engine = server.server.runtime.engine
        analysed: list[int] = []
        release = threading.Event()
        real_analyse = engine.analyse

        def counting_analyse(requests):
            analysed.append(len(requests))
            release.wait(10)  # the first batch holds the engine thread
            return real_analyse(requests)

        engine.analyse = counting_analyse  # type: ignore[method-assign]
        with grpc.insecure_channel(server.target) as channel, ThreadPoolExecutor(1) as pool:
            stub = pb_grpc.MairaSaeServiceStub(channel)
            blocker = pool.submit(stub.Encode, pb.EncodeRequest(study=demo_study()))
            while not analysed:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as error:
                stub.Encode(pb.EncodeRequest(study=demo_study()), timeout=0.3)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            assert blocker.result(10).total_tokens > 0
            stub.GetInfo(pb.GetInfoRequest())
            time.sleep(0.2)
        assert analysed == [1], "an expired request reached the model"


def test_auth_required_but_health_open(demo_checkpoint):
    config = demo_config(demo_checkpoint, auth=AuthConfig(token="s3cret-token"))
    with running_server(config) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as error:
                stub.GetInfo(pb.GetInfoRequest(), metadata=metadata)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = stub.GetInfo(
            pb.GetInfoRequest(), metadata=(("authorization", "Bearer s3cret-token"),)
        )
        assert info.model.num_layers == 16
        assert health_status(server.ports.grpc) == SERVING


@pytest.fixture(scope="module")
def strict_server(demo_checkpoint):
    limits = replace(
        LimitsConfig(),
        max_image_bytes=200_000,
        max_image_pixels=1_000_000,
        max_images=2,
        max_text_chars=50,
        max_new_tokens=16,
        default_max_new_tokens=8,
        max_variants=2,
        max_interventions_per_variant=2,
        max_top_k=10,
        max_abs_strength=100.0,
    )
    with running_server(demo_config(demo_checkpoint, limits=limits)) as server:
        yield server


def add(feature: int = 1, value: float = 1.0) -> pb.Intervention:
    return pb.Intervention(feature=feature, mode=pb.STEERING_MODE_ADD, value=value)


def generation(*variants: pb.Variant, **settings: float) -> pb.GenerateSteeredRequest:
    return pb.GenerateSteeredRequest(
        study=demo_study(),
        settings=pb.GenerationSettings(max_new_tokens=2, **settings),
        variants=list(variants),
    )


def image(pixels_side: int) -> pb.Image:
    import numpy as np

    pixels = (np.arange(pixels_side * pixels_side) % 251).astype("uint8")
    return pb.Image(data=png_bytes(pixels.reshape(pixels_side, pixels_side)))


LIMIT_CASES = {
    "image bytes": (
        "Encode",
        pb.EncodeRequest(study=pb.Study(frontal=pb.Image(data=b"\x89PNG" + b"0" * 300_000))),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "image pixels": (
        "Encode",
        pb.EncodeRequest(study=pb.Study(frontal=image(1100))),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "number of images": (
        "Encode",
        pb.EncodeRequest(study=pb.Study(frontal=image(64), lateral=image(64), prior=image(64))),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "text length": (
        "Encode",
        pb.EncodeRequest(study=pb.Study(frontal=image(64), indication="x" * 51)),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "top-k": (
        "TopFeatures",
        pb.TopFeaturesRequest(study=demo_study(), k=11),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "max new tokens": (
        "GenerateSteered",
        pb.GenerateSteeredRequest(
            study=demo_study(), settings=pb.GenerationSettings(max_new_tokens=17)
        ),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "variants": (
        "GenerateSteered",
        generation(pb.Variant(), pb.Variant(), pb.Variant()),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "interventions": (
        "GenerateSteered",
        generation(pb.Variant(interventions=[add(), add(), add()])),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "strength": (
        "GenerateSteered",
        generation(pb.Variant(interventions=[add(value=101.0)])),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "NaN strength": (
        "GenerateSteered",
        generation(pb.Variant(interventions=[add(value=float("nan"))])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "infinite temperature": (
        "GenerateSteered",
        generation(temperature=float("inf")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "feature index": (
        "GenerateSteered",
        generation(pb.Variant(interventions=[add(feature=2**31)])),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    "unknown SAE": (
        "Encode",
        pb.EncodeRequest(study=demo_study(), sae_id="ef8"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "undecodable image": (
        "Encode",
        pb.EncodeRequest(study=pb.Study(frontal=image(64), lateral=pb.Image(data=b"garbage"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}


@pytest.mark.parametrize("case", sorted(LIMIT_CASES))
def test_each_limit_and_bad_input_has_its_status(strict_server, case):
    method, message, code = LIMIT_CASES[case]
    with grpc.insecure_channel(strict_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        call = getattr(stub, method)
        with pytest.raises(grpc.RpcError) as error:
            result = call(message)
            if method == "GenerateSteered":
                list(result)
        assert error.value.code() == code, error.value.details()
        assert error.value.details()
        if case == "undecodable image":
            assert "lateral" in error.value.details()
        assert stub.GetInfo(pb.GetInfoRequest()).limits.max_top_k == 10


def test_sigterm_during_a_stream_completes_it_refuses_new_calls_and_exits_zero(
    demo_checkpoint, tmp_path
):
    port_file = tmp_path / "serve.log"
    command = [
        sys.executable, "-m", "maira_sae.server.cli", "serve",
        "--model-path", str(demo_checkpoint.model_dir),
        "--sae", f"demo={demo_checkpoint.sae_dir}",
        "--serving-host", "127.0.0.1", "--serving-grpc-port", "0",
        "--serving-metrics-port", "0", "--serving-health-port", "0",
        "--serving-drain-grace-s", "30",
    ]  # fmt: skip
    with port_file.open("w") as log:
        process = subprocess.Popen(command, stderr=log, stdout=log, env=os.environ.copy())
    try:
        grpc_port = _wait_for_serving_port(port_file, process)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.MairaSaeServiceStub(channel)
            stream = stub.GenerateSteered(long_generation(40))
            wait_for_first_event(stream)
            process.send_signal(signal.SIGTERM)

            def refuses_new_calls() -> bool:
                """UNAVAILABLE once the drain refuses calls; a call that arrives as the
                signal does may still be answered, or cancelled by the server's stop."""
                try:
                    stub.GetInfo(pb.GetInfoRequest(), timeout=5)
                except grpc.RpcError as error:
                    assert error.code() in {UNAVAILABLE, grpc.StatusCode.CANCELLED}, error
                    return error.code() == UNAVAILABLE
                return False

            wait_until(refuses_new_calls, 30, what="the draining server to refuse new calls")
            events = list(stream)
            assert events[-1].WhichOneof("event") == "finished"
            assert events[-1].finished.num_tokens == 40
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in port_file.read_text()


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _wait_for_serving_port(log_path, process) -> int:
    import json

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        for line in log_path.read_text().splitlines():
            if '"event": "serving"' in line:
                return int(json.loads(line)["grpc"])
        time.sleep(0.1)
    raise AssertionError("the server did not start: " + log_path.read_text())
