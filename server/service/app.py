"""The server process: health first, then the model, then the service; drained on SIGTERM.

Start-up order matters to Kubernetes: the plaintext health port and the metrics port come up
at once and report NOT_SERVING while the model loads (minutes for 14 GB); the main port opens
once the model is loaded, and health turns SERVING only after a warm-up pass has run through
the engine. On SIGTERM or SIGINT health turns NOT_SERVING, new calls get UNAVAILABLE, calls in
flight get ``serving.drain_grace_s`` to finish (those still running near its end get
UNAVAILABLE), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from maira_sae.server.engine.admission import AdmissionLimits
from maira_sae.server.engine.admission_policy import FairShareByCost
from maira_sae.server.engine.async_engine import AsyncEngine
from maira_sae.server.engine.types import (
    EncodeRequest,
    GenerateRequest,
    GenerationSettings,
)
from maira_sae.server.service import to_proto
from maira_sae.server.service.config import ServerConfig
from maira_sae.server.service.interceptors import build_interceptors
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import Runtime, StartupError, load_runtime
from maira_sae.server.service.servicer import MairaSaeServicer
from maira_sae.server.service.warmup import warmup_study
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MairaSaeService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
HEALTH_STOP_GRACE_S = 0.5
# The calls still running when this much of the drain grace is left are ended (UNAVAILABLE),
# so that they end with a status before the transport cancels them: up to 2 s, a fifth of a
# short grace.
DRAIN_CUT_AHEAD_S = 2.0
DRAIN_CUT_AHEAD_SHARE = 0.2


@dataclass(frozen=True)
class BoundPorts:
    grpc: int
    health: int | None
    metrics: int


class MairaSaeServer:
    """One server process's parts; ``start`` brings them up in order, ``stop`` drains them."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.health = health_aio.HealthServicer()
        self.runtime: Runtime | None = None
        self._scheduler: AsyncEngine | None = None
        self._health_server: grpc.aio.Server | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: MairaSaeServicer | None = None
        self.ports: BoundPorts | None = None
        self.health_port: int | None = None  # bound before the model loads

    async def start(self) -> BoundPorts:
        serving = self.config.serving
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        with _bind_failure_is_startup_error("serving.metrics_port", serving.metrics_port):
            metrics_port = self.metrics.serve(serving.metrics_port, _metrics_host(serving.host))
        health_port = await self._start_health_server()
        self.runtime = await asyncio.to_thread(load_runtime, self.config, self.metrics)
        batching = self.config.batching
        self._scheduler = AsyncEngine(
            self.runtime.engine,
            queue_size=batching.queue_size,
            max_batch_size=batching.max_batch_size,
            batch_window_s=batching.batch_window_ms / 1000,
            stream_buffer_events=batching.stream_buffer_events,
            limits=self.runtime.decode_limits,
            policy=FairShareByCost(batching.batch_weight),
            observer=self.metrics,
            admission=AdmissionLimits(
                places=batching.queue_size,
                long_places=batching.long_call_places,
                long_call_tokens=batching.long_call_tokens,
            ),
            max_call_s=batching.max_call_s,
        )
        self._scheduler.start()
        await self._warm_up()
        grpc_port = await self._start_main_server()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.ports = BoundPorts(grpc=grpc_port, health=health_port, metrics=metrics_port)
        log.info(json.dumps({"event": "serving", **vars(self.ports)}))
        return self.ports

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let calls in flight finish, then close."""
        grace = self.config.serving.drain_grace_s if grace_s is None else grace_s
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._scheduler is not None:
            self._scheduler.stop_accepting()
        if self._server is not None:
            await self._drain(self._server, grace)
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.close)
        if self._servicer is not None:
            self._servicer.close()
        if self._health_server is not None:
            # A probe's Check takes microseconds: a short grace lets those in flight finish
            # instead of being cancelled (which grpc logs as an ERROR traceback).
            await self._health_server.stop(HEALTH_STOP_GRACE_S)
        self.metrics.stop()
        log.info(json.dumps({"event": "stopped"}))

    async def _drain(self, server: grpc.aio.Server, grace: float) -> None:
        """Let calls in flight finish within ``grace``; shortly before it runs out, end those
        still running with UNAVAILABLE (each gets its status and its access-log line) rather
        than leave them to be cancelled by the transport. A call whose caller does not read
        cannot take its status: it is cancelled at the end of the grace, and logged then."""
        stopping = asyncio.create_task(server.stop(grace))
        cut_after = grace - min(DRAIN_CUT_AHEAD_S, grace * DRAIN_CUT_AHEAD_SHARE)
        done, _ = await asyncio.wait({stopping}, timeout=cut_after)
        if not done and self._scheduler is not None:
            calls = self._scheduler.cut_in_flight(
                f"the server is shutting down and its drain grace of {grace:g} s"
                " (serving.drain_grace_s) ran out before this call ended; retry on another"
                " replica"
            )
            log.info(json.dumps({"event": "drain_cut", "calls": calls, "grace_s": grace}))
        await stopping

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in HEALTH_SERVICES:
            await self.health.set(service, status)

    async def _start_health_server(self) -> int | None:
        port = self.config.serving.health_port
        if port < 0:
            return None
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        with _bind_failure_is_startup_error("serving.health_port", port):
            bound = server.add_insecure_port(f"{self.config.serving.host}:{port}")
        await server.start()
        self._health_server = server
        self.health_port = bound
        return bound

    async def _warm_up(self) -> None:
        """One Encode and a two-token generation through the scheduler, before SERVING."""
        assert self._scheduler is not None and self.runtime is not None
        engine = self.runtime.engine
        study = warmup_study()
        analysis = await asyncio.to_thread(engine.prepare_analysis, EncodeRequest(study=study))
        await self._scheduler.analyse(analysis, deadline=None)
        request = GenerateRequest(study=study, settings=GenerationSettings(max_new_tokens=2))
        generation = await asyncio.to_thread(engine.prepare_generation, request)
        async for _ in self._scheduler.generate(generation, deadline=None):
            pass

    async def _start_main_server(self) -> int:
        assert self.runtime is not None and self._scheduler is not None
        server = grpc.aio.server(
            interceptors=build_interceptors(self.config, self.metrics),
            options=self.config.grpc_server_options(),
        )
        info = to_proto.info_to_proto(
            self.runtime.model,
            self.runtime.saes,
            self.config,
            self.runtime.versions,
            self.runtime.engine.token_limits,
            self.runtime.decode_limits,
            self.runtime.engine.default_sae_id,
        )
        self._servicer = MairaSaeServicer(self.runtime.engine, self._scheduler, self.config, info)
        pb_grpc.add_MairaSaeServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{self.config.serving.host}:{self.config.serving.grpc_port}"
        credentials = _server_credentials(self.config)
        with _bind_failure_is_startup_error("serving.grpc_port", self.config.serving.grpc_port):
            port = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
        await server.start()
        self._server = server
        return port


@contextlib.contextmanager
def _bind_failure_is_startup_error(setting: str, port: int) -> Iterator[None]:
    """A port that cannot be bound (in use, no permission) fails start-up with one line
    naming the setting, like every other start-up failure. grpc raises RuntimeError for it,
    the metrics HTTP server OSError."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        raise StartupError(f"cannot bind {setting} {port}: {error}") from error


def _metrics_host(grpc_host: str) -> str:
    return "0.0.0.0" if grpc_host in ("[::]", "0.0.0.0", "") else grpc_host.strip("[]")


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    tls = config.tls
    if tls.cert is None or tls.key is None:
        return None
    client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean drain, 1 when start-up failed."""
    server = MairaSaeServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    starting = asyncio.create_task(server.start())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done and starting.exception() is not None:
        error = starting.exception()
        stopping.cancel()
        await server.stop(0)
        if isinstance(error, StartupError):
            log.error(json.dumps({"event": "startup_failed", "error": str(error)}))
            return 1
        raise error  # type: ignore[misc]
    await stop.wait()
    log.info(json.dumps({"event": "draining", "grace_s": config.serving.drain_grace_s}))
    if not starting.done():
        starting.cancel()
    await server.stop()
    return 0
