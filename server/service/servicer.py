"""The gRPC servicer: protobuf in, domain objects to the engine and scheduler, protobuf out.

Thin on purpose (the only logic is which converter and which queue): conversion, which decodes
images, runs in a worker thread so the event loop stays free; errors are domain errors that the
error-mapping interceptor turns into status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.scheduler import Scheduler, deadline_from_timeout
from maira_sae.server.service import from_proto, to_proto
from maira_sae.server.service.config import ServerConfig
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

R = TypeVar("R")
T = TypeVar("T")


class MairaSaeServicer(pb_grpc.MairaSaeServicer):
    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        config: ServerConfig,
        info: pb.InfoResponse,
    ) -> None:
        self._engine = engine
        self._scheduler = scheduler
        self._limits = config.limits
        self._decode = from_proto.image_decoder(config.limits)
        self._info = info

    async def _prepare(
        self, converter: Callable[..., R], message: object, prepare: Callable[[R], T]
    ) -> T:
        """Convert (decoding images) and prepare model inputs in a worker thread."""

        def work() -> T:
            return prepare(converter(message, self._limits, self._decode))

        return await asyncio.to_thread(work)

    async def Encode(  # noqa: N802
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeResponse:
        prepared = await self._prepare(
            from_proto.encode_request_from_proto, request, self._engine.prepare_analysis
        )
        deadline = deadline_from_timeout(context.time_remaining)
        result = await self._scheduler.analyse(prepared, deadline)
        return await asyncio.to_thread(to_proto.encode_result_to_proto, result)

    async def TopFeatures(  # noqa: N802
        self, request: pb.TopFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.TopFeaturesResponse:
        prepared = await self._prepare(
            from_proto.top_features_request_from_proto, request, self._engine.prepare_analysis
        )
        deadline = deadline_from_timeout(context.time_remaining)
        result = await self._scheduler.analyse(prepared, deadline)
        return to_proto.top_features_result_to_proto(result)

    async def GenerateSteered(  # noqa: N802
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateEvent]:
        prepared = await self._prepare(
            from_proto.generate_request_from_proto, request, self._engine.prepare_generation
        )
        events = self._scheduler.generate(prepared, deadline_from_timeout(context.time_remaining))
        async for event in events:
            yield to_proto.generation_event_to_proto(event)

    async def GetInfo(  # noqa: N802
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.InfoResponse:
        return self._info

    async def GetFeature(  # noqa: N802
        self, request: pb.GetFeatureRequest, context: grpc.aio.ServicerContext
    ) -> pb.Feature:
        return to_proto.feature_to_proto(self._engine.feature(request.sae_id, request.feature))

    async def SearchFeatures(  # noqa: N802
        self, request: pb.SearchFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchFeaturesResponse:
        query = from_proto.search_query_from_proto(request, self._limits)
        result = self._engine.search_features(query.sae_id, query.query, query.limit)
        return to_proto.search_response_to_proto(result)
