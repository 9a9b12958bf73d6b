"""The load mix of the reliability suite and of ``make soak`` (bench/soak.py): N concurrent
clients, each looping over Encode, TopFeatures and a streamed GenerateSteered on loopback, every
call recorded with its status and latency.

A client that is told RESOURCE_EXHAUSTED waits for the RetryInfo delay the server sent, as a
well-behaved caller does, then makes its next call (``OnRefusal.WAIT``); ``RETRY`` makes the
refused call again after the delay (retries on, honouring RetryInfo), ``NEXT`` makes the next
call at once (retries off, no waiting). A stream counts as OK only when every variant sent its
``finished`` event: an accepted request that silently lost work would show up as INCOMPLETE.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

METHODS = ("Encode", "TopFeatures", "GenerateSteered")
INCOMPLETE = "INCOMPLETE"  # a stream that ended OK without every variant's finished event


class OnRefusal(enum.Enum):
    WAIT = "wait"  # wait the RetryInfo delay, then the next call
    RETRY = "retry"  # wait the RetryInfo delay, then the same call again
    NEXT = "next"  # the next call at once


@dataclass(frozen=True)
class CallRecord:
    method: str
    code: str  # a grpc.StatusCode name, or INCOMPLETE
    started_s: float  # since the start of the run
    latency_s: float
    retry_delay_s: float | None = None  # the RetryInfo of a RESOURCE_EXHAUSTED


@dataclass
class LoadMix:
    """What each client sends; one small image set shared by every call."""

    image: bytes
    max_new_tokens: int = 4
    variants: int = 2
    call_timeout_s: float = 120.0
    metadata: tuple[tuple[str, str], ...] = ()

    def study(self) -> pb.Study:
        return pb.Study(frontal=pb.Image(data=self.image), indication="Cough.")

    def generate_request(self) -> pb.GenerateSteeredRequest:
        steered = pb.Variant(
            name="steered",
            interventions=[pb.Intervention(feature=3, mode=pb.STEERING_MODE_ADD, value=8.0)],
        )
        variants = [pb.Variant(name="baseline"), steered][: self.variants]
        return pb.GenerateSteeredRequest(
            study=self.study(),
            settings=pb.GenerationSettings(max_new_tokens=self.max_new_tokens),
            variants=variants,
        )


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


async def _one_call(stub: pb_grpc.MairaSaeServiceStub, method: str, mix: LoadMix) -> str:
    """Makes one call of ``method``; returns "OK" or INCOMPLETE, raises AioRpcError."""
    options = {"timeout": mix.call_timeout_s, "metadata": mix.metadata}
    if method == "Encode":
        await stub.Encode(pb.EncodeRequest(study=mix.study(), top_k_per_token=4), **options)
        return "OK"
    if method == "TopFeatures":
        await stub.TopFeatures(pb.TopFeaturesRequest(study=mix.study(), k=5), **options)
        return "OK"
    request = mix.generate_request()
    finished = 0
    async for event in stub.GenerateSteered(request, **options):
        finished += event.WhichOneof("event") == "finished"
    return "OK" if finished == len(request.variants) else INCOMPLETE


async def run_load(
    target: str,
    mix: LoadMix,
    *,
    clients: int,
    duration_s: float,
    on_record: Callable[[CallRecord], None] | None = None,
    channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    on_refusal: OnRefusal = OnRefusal.WAIT,
) -> list[CallRecord]:
    """``clients`` loops start calls for ``duration_s``; calls in flight at the end finish and
    are recorded. One channel per client, as separate callers would have (gRPC shares one
    connection between the channels of a process to the same target)."""
    records: list[CallRecord] = []
    start = time.monotonic()
    end = start + duration_s

    async def client(index: int) -> None:
        async with channel_factory(target) as channel:
            stub = pb_grpc.MairaSaeServiceStub(channel)
            turn = index
            while time.monotonic() < end:
                method = METHODS[turn % len(METHODS)]
                began = time.monotonic()
                delay = None
                try:
                    code = await _one_call(stub, method, mix)
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                    delay = retry_delay_s(error)
                record = CallRecord(method, code, began - start, time.monotonic() - began, delay)
                records.append(record)
                if on_record is not None:
                    on_record(record)
                refused = code == "RESOURCE_EXHAUSTED"
                if refused and on_refusal is not OnRefusal.NEXT:
                    await asyncio.sleep(delay if delay is not None else 0.5)
                if not (refused and on_refusal is OnRefusal.RETRY):
                    turn += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return records


async def sample_periodically(
    sample: Callable[[], float], interval_s: float, into: list[tuple[float, float]]
) -> None:
    """Append (seconds since start, ``sample()``) every ``interval_s`` until cancelled;
    ``sample`` runs in a thread (it may do blocking I/O such as scraping /metrics)."""
    start = time.monotonic()
    while True:
        value = await asyncio.to_thread(sample)
        into.append((round(time.monotonic() - start, 3), value))
        await asyncio.sleep(interval_s)


async def while_sampling(
    work: Awaitable[list[CallRecord]],
    sample: Callable[[], float],
    interval_s: float,
) -> tuple[list[CallRecord], list[tuple[float, float]]]:
    """Run ``work`` while sampling; returns its records and the samples."""
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(sample_periodically(sample, interval_s, samples))
    try:
        records = await work
    finally:
        sampler.cancel()
    return records, samples


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    values = np.asarray(latencies) * 1000
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "p99": round(float(np.percentile(values, 99)), 1),
        "max": round(float(values.max()), 1),
    }


@dataclass
class Summary:
    """What a run produced, in a JSON-ready form."""

    requests: int
    statuses: dict[str, int]
    by_method: dict[str, dict[str, int]]
    latency_ms: dict[str, float]  # over OK calls
    latency_ms_by_method: dict[str, dict[str, float]]
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "statuses": self.statuses,
            "by_method": self.by_method,
            "latency_ms": self.latency_ms,
            "latency_ms_by_method": self.latency_ms_by_method,
            **self.extra,
        }


def summarise(records: list[CallRecord], **extra: object) -> Summary:
    ok = [r for r in records if r.code == "OK"]
    return Summary(
        requests=len(records),
        statuses=dict(Counter(r.code for r in records)),
        by_method={
            method: dict(Counter(r.code for r in records if r.method == method))
            for method in METHODS
        },
        latency_ms=percentiles_ms([r.latency_s for r in ok]),
        latency_ms_by_method={
            method: percentiles_ms([r.latency_s for r in ok if r.method == method])
            for method in METHODS
        },
        extra=dict(extra),
    )
