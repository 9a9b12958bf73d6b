"""The interceptors on a real grpc.aio server with a tiny servicer of the generated service."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from maira_sae.client import errors as client_errors
from maira_sae.client.errors import error_from_rpc
from maira_sae.server import errors
from maira_sae.server.service.config import AuthConfig, BatchingConfig, ServerConfig
from maira_sae.server.service.interceptors import build_interceptors, current_request_id
from maira_sae.server.service.metrics import Metrics
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

TOKEN = "s3cret-token"
PATIENT_TEXT = "PATIENT John Doe, 54, short of breath"

# sae_id -> the error the servicer raises
RAISED: dict[str, Exception] = {
    "invalid": errors.InvalidArgument(
        "study.frontal is required", field="study.frontal", reason="FIELD_REQUIRED"
    ),
    "not-found": errors.NotFound(
        "no SAE 'x'", reason="SAE_NOT_FOUND", resource_type="sae", resource_name="x"
    ),
    "out-of-range": errors.OutOfRange(
        "k is 999, over limits.max_top_k = 256",
        field="k",
        reason="LIMIT_EXCEEDED",
        metadata=errors.limit_metadata("max_top_k", 256, 999),
    ),
    "precondition": errors.FailedPrecondition(
        "no interpretations loaded",
        reason="NO_INTERPRETATIONS",
        precondition="INTERPRETATIONS",
        subject="sae/x",
    ),
    "exhausted": errors.ResourceExhausted("queue full", retry_after_s=1.5, reason="QUEUE_FULL"),
    "deadline": errors.DeadlineExceeded("deadline passed in the queue", reason="DEADLINE_QUEUED"),
    "cancelled": errors.Cancelled("caller went away"),
    "unavailable": errors.Unavailable("draining", reason="SHUTTING_DOWN"),
    "bug": RuntimeError("secret internals: patient text"),
}
SERVER_FULL = errors.ServerFull("queue full", retry_after_s=0.3, reason="QUEUE_FULL")
REASONS = {
    "invalid": "FIELD_REQUIRED",
    "not-found": "SAE_NOT_FOUND",
    "out-of-range": "LIMIT_EXCEEDED",
    "precondition": "NO_INTERPRETATIONS",
    "exhausted": "QUEUE_FULL",
    "deadline": "DEADLINE_QUEUED",
    "cancelled": "CANCELLED",  # the class's default reason
    "unavailable": "SHUTTING_DOWN",
    "bug": "INTERNAL_ERROR",
}
EXPECTED = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "out-of-range": grpc.StatusCode.OUT_OF_RANGE,
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "bug": grpc.StatusCode.INTERNAL,
}


class Servicer(pb_grpc.MairaSaeServiceServicer):
    async def Encode(self, request, context):  # noqa: N802 - generated service names
        if request.sae_id in RAISED:
            raise RAISED[request.sae_id]
        if request.sae_id == "full":
            raise SERVER_FULL
        return pb.EncodeResponse(sae_id=current_request_id(), total_tokens=7)

    async def GenerateSteered(self, request, context):  # noqa: N802
        while request.sae_id == "endless":  # more than any window takes
            yield pb.GenerateSteeredResponse(token=pb.TokenChunk(position=1, text="a" * 1024))
        yield pb.GenerateSteeredResponse(token=pb.TokenChunk(position=1, text="a"))
        if request.sae_id in RAISED:
            raise RAISED[request.sae_id]
        yield pb.GenerateSteeredResponse(finished=pb.VariantResult(text="a", num_tokens=1))


@asynccontextmanager
async def serving(
    config: ServerConfig, metrics: Metrics
) -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    server = grpc.aio.server(interceptors=build_interceptors(config, metrics))
    pb_grpc.add_MairaSaeServiceServicer_to_server(Servicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            yield channel, target
    finally:
        await server.stop(None)


def run(
    test: Callable[[grpc.aio.Channel], Awaitable[None]],
    config: ServerConfig | None = None,
    metrics: Metrics | None = None,
) -> None:
    async def main() -> None:
        async with serving(config or ServerConfig(), metrics or Metrics()) as (channel, _):
            await test(channel)

    asyncio.run(main())


async def call_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


@pytest.mark.parametrize("paced", [True, False])
def test_a_refusal_that_comes_too_soon_is_held_unless_pacing_is_off(paced):
    metrics = Metrics()
    config = ServerConfig(batching=BatchingConfig(pace_refusals=paced))
    refused_after_s: list[float] = []

    async def check(channel):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        for _ in range(2):  # the second at once, before the first's delay has passed
            started = asyncio.get_running_loop().time()
            err = await call_error(stub.Encode(pb.EncodeRequest(sae_id="full")))
            refused_after_s.append(asyncio.get_running_loop().time() - started)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    run(check, config, metrics)
    held = metrics.registry.get_sample_value("maira_sae_refusals_held_total")
    assert held == (1.0 if paced else 0.0)
    if paced:
        assert refused_after_s[1] >= 0.9 * SERVER_FULL.retry_after_s, refused_after_s


@pytest.mark.parametrize("case", sorted(RAISED))
def test_unary_domain_errors_map_to_their_codes(case, caplog):
    async def check(channel):
        err = await call_error(
            pb_grpc.MairaSaeServiceStub(channel).Encode(pb.EncodeRequest(sae_id=case))
        )
        assert err.code() == EXPECTED[case]
        if case == "bug":
            request_id = dict(err.trailing_metadata())["x-request-id"]
            assert err.details() == f"internal error (request id {request_id})"
            assert "secret" not in err.debug_error_string()
        else:
            assert err.details() == str(RAISED[case])

    with caplog.at_level(logging.ERROR, logger="maira_sae.server.service.interceptors"):
        run(check)
    if case == "bug":  # the traceback goes to the log, not to the caller
        assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("case", ["not-found", "bug"])
def test_streaming_errors_after_first_message(case):
    async def check(channel):
        call = pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(
            pb.GenerateSteeredRequest(sae_id=case)
        )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for event in call:
                received.append(event)
        assert len(received) == 1
        assert info.value.code() == EXPECTED[case]
        assert "secret" not in info.value.details()

    run(check)


def _retry_delay_s(status) -> float:
    assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    (retry,) = _details(status, error_details_pb2.RetryInfo)
    return retry.retry_delay.ToTimedelta().total_seconds()


def _details(status, kind) -> list:
    """The details of ``status`` of one type, unpacked."""
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


@pytest.mark.parametrize("case", sorted(RAISED))
def test_every_error_carries_error_info_and_request_info(case):
    async def check(channel):
        call = pb_grpc.MairaSaeServiceStub(channel).Encode(pb.EncodeRequest(sae_id=case))
        await call_error(call)
        status = await rpc_status.aio.from_call(call)
        (info,) = _details(status, error_details_pb2.ErrorInfo)
        assert (info.reason, info.domain) == (REASONS[case], "maira-sae.v1")
        (request,) = _details(status, error_details_pb2.RequestInfo)
        assert request.request_id == dict(await call.trailing_metadata())["x-request-id"]
        kinds = {d.type_url.rsplit(".", 1)[-1] for d in status.details}
        extra = {
            "invalid": {"BadRequest"},
            "out-of-range": {"BadRequest"},
            "not-found": {"ResourceInfo"},
            "precondition": {"PreconditionFailure"},
            "exhausted": {"RetryInfo"},
        }.get(case, set())
        assert kinds == {"ErrorInfo", "RequestInfo", *extra}

    run(check)


def test_field_errors_carry_a_bad_request_field_violation_and_limit_metadata():
    async def check(channel):
        call = pb_grpc.MairaSaeServiceStub(channel).Encode(pb.EncodeRequest(sae_id="out-of-range"))
        await call_error(call)
        status = await rpc_status.aio.from_call(call)
        (bad_request,) = _details(status, error_details_pb2.BadRequest)
        (violation,) = bad_request.field_violations
        assert violation.field == "k"
        assert violation.reason == "LIMIT_EXCEEDED"
        assert violation.description == "k is 999, over limits.max_top_k = 256"
        (info,) = _details(status, error_details_pb2.ErrorInfo)
        assert dict(info.metadata) == {"limit": "max_top_k", "limitValue": "256", "value": "999"}

    run(check)


def test_not_found_and_precondition_name_what_is_missing():
    async def check(channel):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        call = stub.Encode(pb.EncodeRequest(sae_id="not-found"))
        await call_error(call)
        (resource,) = _details(await rpc_status.aio.from_call(call), error_details_pb2.ResourceInfo)
        assert (resource.resource_type, resource.resource_name) == ("sae", "x")
        call = stub.Encode(pb.EncodeRequest(sae_id="precondition"))
        await call_error(call)
        status = await rpc_status.aio.from_call(call)
        (failure,) = _details(status, error_details_pb2.PreconditionFailure)
        (violation,) = failure.violations
        assert (violation.type, violation.subject) == ("INTERPRETATIONS", "sae/x")
        assert violation.description == "no interpretations loaded"

    run(check)


def test_the_sdk_exceptions_expose_the_details():
    async def check(channel):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        raised = {}
        for case in ("invalid", "out-of-range", "not-found", "precondition", "exhausted"):
            raised[case] = error_from_rpc(
                await call_error(stub.Encode(pb.EncodeRequest(sae_id=case)))
            )
        assert all(raised[case].reason == REASONS[case] for case in raised)
        assert all(error.details.domain == "maira-sae.v1" for error in raised.values())
        assert isinstance(raised["invalid"], client_errors.InvalidArgumentError)
        assert raised["invalid"].field_violations == (
            client_errors.FieldViolation(
                "study.frontal", "study.frontal is required", "FIELD_REQUIRED"
            ),
        )
        assert isinstance(raised["out-of-range"], client_errors.OutOfRangeError)
        assert raised["out-of-range"].field == "k"
        assert raised["out-of-range"].metadata["limitValue"] == "256"
        assert isinstance(raised["not-found"], client_errors.NotFoundError)
        assert raised["not-found"].resource == client_errors.ResourceInfo("sae", "x", "no SAE 'x'")
        assert isinstance(raised["precondition"], client_errors.FailedPreconditionError)
        (violation,) = raised["precondition"].precondition_violations
        assert violation.subject == "sae/x"
        assert isinstance(raised["exhausted"], client_errors.ServerBusyError)
        assert raised["exhausted"].retry_after_s == 1.5
        assert raised["exhausted"].field is None

    run(check)


def test_resource_exhausted_carries_retry_info():
    async def check(channel):
        call = pb_grpc.MairaSaeServiceStub(channel).Encode(pb.EncodeRequest(sae_id="exhausted"))
        await call_error(call)
        assert _retry_delay_s(await rpc_status.aio.from_call(call)) == 1.5

    run(check)


def test_resource_exhausted_retry_info_from_a_sync_client():
    def sync_call(target: str) -> float:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.MairaSaeServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Encode(pb.EncodeRequest(sae_id="exhausted"))
            return _retry_delay_s(rpc_status.from_call(info.value))

    async def main():
        async with serving(ServerConfig(), Metrics()) as (_, target):
            assert await asyncio.to_thread(sync_call, target) == 1.5

    asyncio.run(main())


def test_success_returns_request_id_and_logs_no_content(caplog):
    metrics = Metrics()

    async def check(channel):
        call = pb_grpc.MairaSaeServiceStub(channel).Encode(
            pb.EncodeRequest(sae_id="ok", study=pb.Study(indication=PATIENT_TEXT)),
            metadata=(("x-request-id", "req-42"),),
        )
        response = await call
        assert response.sae_id == "req-42"  # the servicer sees the caller's request id
        assert dict(await call.trailing_metadata())["x-request-id"] == "req-42"

    with caplog.at_level(logging.INFO, logger="maira_sae.access"):
        run(check, metrics=metrics)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "maira_sae.access"]
    assert line["request_id"] == "req-42"
    assert line["method"] == "/maira_sae.v1.MairaSaeService/Encode"
    assert line["code"] == "OK"
    assert line["request_bytes"] > 0 and line["response_bytes"] > 0
    assert all(PATIENT_TEXT not in r.getMessage() for r in caplog.records)
    sample = metrics.registry.get_sample_value
    labels = {"method": "/maira_sae.v1.MairaSaeService/Encode", "code": "OK"}
    assert sample("maira_sae_requests_total", labels) == 1
    assert sample("maira_sae_inflight_requests", {"method": labels["method"]}) == 0


def test_metrics_count_error_codes():
    metrics = Metrics()

    async def check(channel):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        await call_error(stub.Encode(pb.EncodeRequest(sae_id="not-found")))
        await call_error(stub.Encode(pb.EncodeRequest(sae_id="bug")))

    run(check, metrics=metrics)
    sample = metrics.registry.get_sample_value
    method = "/maira_sae.v1.MairaSaeService/Encode"
    assert sample("maira_sae_requests_total", {"method": method, "code": "NOT_FOUND"}) == 1
    assert sample("maira_sae_requests_total", {"method": method, "code": "INTERNAL"}) == 1


AUTH_CONFIG = ServerConfig(auth=AuthConfig(token=TOKEN))


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.OK),
        ((("authorization", f"bearer {TOKEN}"),), grpc.StatusCode.OK),
    ],
)
def test_bearer_token_auth(metadata, expected, caplog):
    async def check(channel):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        unary = stub.Encode(pb.EncodeRequest(sae_id="ok"), metadata=metadata)
        stream = stub.GenerateSteered(pb.GenerateSteeredRequest(), metadata=metadata)
        if expected is grpc.StatusCode.OK:
            assert (await unary).total_tokens == 7
            assert len([event async for event in stream]) == 2
        else:
            assert (await call_error(unary)).code() == expected
            status = await rpc_status.aio.from_call(unary)
            (info,) = _details(status, error_details_pb2.ErrorInfo)
            assert info.reason == ("TOKEN_MISSING" if not metadata else "TOKEN_INVALID")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [event async for event in stream]
            assert info.value.code() == expected
            error = error_from_rpc(info.value)
            assert isinstance(error, client_errors.AuthenticationError)
            assert error.reason in {"TOKEN_MISSING", "TOKEN_INVALID"}

    with caplog.at_level(logging.DEBUG):
        run(check, config=AUTH_CONFIG)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_health_stays_open_with_auth_on():
    async def check(channel):
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    run(check, config=AUTH_CONFIG)


def test_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")

    async def check(channel):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        ok = stub.Encode(pb.EncodeRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert (await ok).total_tokens == 7
        denied = stub.Encode(pb.EncodeRequest())
        assert (await call_error(denied)).code() == grpc.StatusCode.UNAUTHENTICATED

    run(check, config=ServerConfig(auth=AuthConfig(token_file=token_file)))


def test_a_stream_cancelled_mid_write_is_logged_when_it_ends(caplog):
    """A caller that does not read: the servicer is suspended in grpc's write when the server
    stops and cancels the call, and never resumes; its access-log line is written as the call
    ends, not whenever its generators are collected."""

    async def main() -> None:
        # As at the end of a process: generators let go are not closed by the loop.
        sys.set_asyncgen_hooks(finalizer=lambda generator: None)
        server = grpc.aio.server(interceptors=build_interceptors(ServerConfig(), Metrics()))
        pb_grpc.add_MairaSaeServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=window) as channel:
            call = pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(
                pb.GenerateSteeredRequest(sae_id="endless")
            )
            await call.initial_metadata()
            await asyncio.sleep(0.3)  # the window is full; the server waits in its write
            await server.stop(0.1)
            await asyncio.sleep(0.1)  # the call's done callbacks run on the loop
            lines = [json.loads(r.getMessage()) for r in access_records(caplog)]
            assert [(line["method"], line["code"]) for line in lines] == [
                ("/maira_sae.v1.MairaSaeService/GenerateSteered", "CANCELLED")
            ]
            call.cancel()

    with caplog.at_level(logging.INFO, logger="maira_sae.access"):
        asyncio.run(main())
    assert len(access_records(caplog)) == 1  # not again when the generators close


def access_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "maira_sae.access"]
