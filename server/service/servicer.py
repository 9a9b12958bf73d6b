"""The gRPC servicer: protobuf in, domain objects to the engine and scheduler, protobuf out.

Thin on purpose (the only logic is which converter and which queue). A call first takes its
place in the scheduler, in the lane its priority metadata and size give it (``priority``), so
a full server refuses it before any work; then conversion, which decodes images within the
shared image memory budget, and preparation run on a few worker threads so the event loop and
the engine thread stay free; errors are domain errors that the error-mapping interceptor turns
into status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import grpc

from maira_sae.server.engine.async_engine import AsyncEngine, deadline_from_timeout
from maira_sae.server.engine.engine import AnalysisResult, Engine, PreparedAnalysis
from maira_sae.server.engine.types import ActivationSearchRequest
from maira_sae.server.service import feature_to_proto, from_proto, to_proto
from maira_sae.server.service.config import ServerConfig
from maira_sae.server.service.image_memory import ImageMemoryBudget
from maira_sae.server.service.priority import call_priority, tokens_to_generate
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

R = TypeVar("R")
T = TypeVar("T")
Reply = TypeVar("Reply")


class MairaSaeServicer(pb_grpc.MairaSaeServiceServicer):
    def __init__(
        self,
        engine: Engine,
        scheduler: AsyncEngine,
        config: ServerConfig,
        info: pb.GetInfoResponse,
    ) -> None:
        self._engine = engine
        self._scheduler = scheduler
        self._limits = config.limits
        self._decode = from_proto.image_decoder(config.limits, config.dicom)
        self._image_memory = ImageMemoryBudget(
            config.limits.image_memory_bytes, config.limits.max_image_pixels
        )
        self._workers = ThreadPoolExecutor(
            config.batching.prepare_workers, thread_name_prefix="maira-sae-prepare"
        )
        self._info = info

    def close(self) -> None:
        """Stop the preparation threads (after the server has stopped taking calls)."""
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def _in_worker(self, work: Callable[[], T]) -> T:
        """``work`` on a preparation thread, with this call's context (its request id)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._workers, context.run, work)

    async def _prepare(
        self, converter: Callable[..., R], message: object, prepare: Callable[[R], T]
    ) -> T:
        """Convert (decoding images) and prepare model inputs on a preparation thread, within
        the image memory budget; the decoded images are let go before it returns."""

        def work() -> T:
            with self._image_memory.hold() as hold:
                decode = hold.decoder(self._decode)
                return prepare(converter(message, self._limits, decode))

        return await self._in_worker(work)

    async def _queued_analysis(
        self, context: grpc.aio.ServicerContext, prepare: Callable[[], T]
    ) -> AnalysisResult:
        """A place in the scheduler, in the lane of the call's priority (a full server refuses
        before any work), ``prepare`` on a worker thread, then the analysis on the engine."""
        priority = call_priority(context.invocation_metadata())
        with self._scheduler.admit(priority) as admission:
            prepared = await self._in_worker(prepare)
            deadline = deadline_from_timeout(context.time_remaining)
            return await self._scheduler.analyse(prepared, deadline, admission)

    async def _analyse(
        self,
        message: object,
        context: grpc.aio.ServicerContext,
        converter: Callable[..., R],
        to_reply: Callable[[Any], Reply],
    ) -> Reply:
        """Encode and TopFeatures: conversion (decoding images within the image memory budget)
        and preparation queued as an analysis, and the reply built off the event loop (an
        Encode reply holds every selected token's features)."""

        def prepare() -> PreparedAnalysis:
            with self._image_memory.hold() as hold:
                decode = hold.decoder(self._decode)
                return self._engine.prepare_analysis(converter(message, self._limits, decode))

        result = await self._queued_analysis(context, prepare)
        return await asyncio.to_thread(to_reply, result)

    async def Encode(  # noqa: N802
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeResponse:
        convert = from_proto.encode_request_from_proto
        return await self._analyse(request, context, convert, to_proto.encode_result_to_proto)

    async def TopFeatures(  # noqa: N802
        self, request: pb.TopFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.TopFeaturesResponse:
        convert = from_proto.top_features_request_from_proto
        return await self._analyse(request, context, convert, to_proto.top_features_result_to_proto)

    async def GenerateSteered(  # noqa: N802
        self, request: pb.GenerateSteeredRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateSteeredResponse]:
        priority = call_priority(context.invocation_metadata())
        tokens = tokens_to_generate(request, self._limits.default_max_new_tokens)
        with self._scheduler.admit(priority, tokens) as admission:
            prepared = await self._prepare(
                from_proto.generate_request_from_proto, request, self._engine.prepare_generation
            )
            deadline = deadline_from_timeout(context.time_remaining)
            events = self._scheduler.generate(prepared, deadline, admission)
            async with contextlib.aclosing(events):  # closed here, not by the GC elsewhere
                async for event in events:
                    yield to_proto.generation_event_to_proto(event)

    async def GetInfo(  # noqa: N802
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInfoResponse:
        return self._info

    async def GetFeature(  # noqa: N802
        self, request: pb.GetFeatureRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFeatureResponse:
        query = from_proto.feature_query_from_proto(request, self._limits)
        details = await asyncio.to_thread(  # the logit effects and cosines run torch
            self._engine.feature,
            query.sae_id,
            query.feature,
            num_logits=query.num_logits,
            num_nearest=query.num_nearest,
            decoder_row=query.decoder_row,
        )
        feature = await asyncio.to_thread(feature_to_proto.feature_details_to_proto, details)
        return pb.GetFeatureResponse(feature=feature)

    async def SearchFeatures(  # noqa: N802
        self, request: pb.SearchFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchFeaturesResponse:
        query = from_proto.search_query_from_proto(request, self._limits)
        if isinstance(query, ActivationSearchRequest):  # runs the model: queued as analysis
            prepare = partial(self._engine.prepare_activation_search, query)
            result = await self._queued_analysis(context, prepare)
        else:
            result = self._engine.search_features(query.sae_id, query.query, query.limit)
        return to_proto.search_response_to_proto(result)
