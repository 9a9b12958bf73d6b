"""Service overhead: Encode and TopFeatures through gRPC (the client SDK over loopback) versus
the same request run on the engine in-process (prepare + analyse, what the servicer calls).

The gRPC side pays everything a caller pays: PNG decoding on the server, protobuf in both
directions, the scheduler's batch window, the SDK's typed results. Target: at most 1.10x.
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import DemoService, run_against_demo_service
from bench.harness import at_most, check, interleaved, median, timed
from maira_sae.client import Client
from maira_sae.client import _convert as client_convert
from maira_sae.server.engine.types import EncodeRequest, EncodeResult, TopFeaturesRequest
from maira_sae.server.service import to_proto
from maira_sae.v1 import maira_sae_pb2 as pb

TARGET = at_most(1.10)
TOP_K_PER_TOKEN = 32
TOP_FEATURES_K = 20


def run(service: DemoService, *, quick: bool) -> dict[str, Any]:
    repeats = 5 if quick else 15
    engine = service.engine
    encode = EncodeRequest(study=service.study, top_k_per_token=TOP_K_PER_TOKEN)
    top = TopFeaturesRequest(study=service.study, k=TOP_FEATURES_K)
    checks = []
    with Client(service.target) as client:
        calls = {
            "encode": (
                lambda: engine.analyse([engine.prepare_analysis(encode)]),
                lambda: client.encode(service.client_study, top_k_per_token=TOP_K_PER_TOKEN),
            ),
            "top_features": (
                lambda: engine.analyse([engine.prepare_analysis(top)]),
                lambda: client.top_features(service.client_study, k=TOP_FEATURES_K),
            ),
        }
        for name, (in_process, over_grpc) in calls.items():
            in_process()
            over_grpc()  # warm both paths (channel, allocator) before timing
            samples = interleaved(
                {"in_process": timed(in_process), "grpc": timed(over_grpc)}, repeats
            )
            in_process_s, grpc_s = median(samples["in_process"]), median(samples["grpc"])
            checks.append(
                check(
                    f"{name}_grpc_over_in_process",
                    grpc_s / in_process_s,
                    TARGET,
                    in_process_median_s=in_process_s,
                    grpc_median_s=grpc_s,
                    overhead_ms=(grpc_s - in_process_s) * 1000,
                    repeats=repeats,
                )
            )
    return {
        "bench": "service_overhead",
        "encode_overhead_parts": _encode_overhead_parts(service, encode, repeats),
        "checks": checks,
    }


def _encode_overhead_parts(
    service: DemoService, request: EncodeRequest, repeats: int
) -> dict[str, Any]:
    """Where an Encode's overhead goes, each part timed alone in-process (median ms): the
    server's result-to-protobuf conversion, the SDK's protobuf-to-typed-results conversion,
    the wire size, and the scheduler's batch window (a lone request waits it out)."""
    engine = service.engine
    result = engine.analyse([engine.prepare_analysis(request)])[0]
    assert isinstance(result, EncodeResult)
    message = to_proto.encode_result_to_proto(result)
    wire = message.SerializeToString()
    parts = {
        "server_result_to_protobuf": lambda: to_proto.encode_result_to_proto(result),
        "serialize_and_parse": lambda: pb.EncodeResponse.FromString(message.SerializeToString()),
        "sdk_protobuf_to_typed_result": lambda: client_convert.encode_result(message),
    }
    samples = interleaved({name: timed(call) for name, call in parts.items()}, repeats)
    return {
        "tokens": result.total_tokens,
        "response_bytes": len(wire),
        "batch_window_ms": service.running.server.config.batching.batch_window_ms,
        **{f"{name}_ms": median(values) * 1000 for name, values in samples.items()},
    }


def main() -> None:
    run_against_demo_service(run, __doc__ or "")


if __name__ == "__main__":
    main()
