"""grpc.aio server interceptors: access log and metrics, bearer-token auth, error mapping.

Order matters and ``build_interceptors`` fixes it, outermost first: the access log sees every
call (rejected ones too) and its final code; auth rejects before any work; the error mapper
sits next to the servicer and is the one place where domain errors
(``maira_sae.server.errors``) become status codes with their google.rpc error details
(``error_status``), and where a refusal that comes sooner than its connection's RetryInfo
delays allow is held back (``refusal_pacing``). Each wraps the handler's behaviour, for unary
and server-streaming methods; streaming behaviours must be async generators.

Nothing here reads request content: logs and metrics hold ids, method names, codes, sizes and
timings only. The bearer token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from maira_sae.server import errors
from maira_sae.server.service.config import ServerConfig
from maira_sae.server.service.error_status import error_info, rich_status, status_for
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.refusal_pacing import RefusalPacer

log = logging.getLogger(__name__)
access_log = logging.getLogger("maira_sae.access")

REQUEST_ID_KEY = "x-request-id"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
DEADLINE_SLACK_S = 0.1

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Seconds the call's refusal was held back by refusal pacing (set by the error mapper, read by
# the access log around it: the same task).
_refusal_held_s: contextvars.ContextVar[float] = contextvars.ContextVar(
    "refusal_held_s", default=0.0
)

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def current_request_id() -> str:
    """The id of the call being handled ("-" outside a call); for the servicer's own logs."""
    return _request_id.get()


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item in details.invocation_metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def _wrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    stream: Callable[[StreamBehaviour], StreamBehaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped; this service has no client streaming."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _message_bytes(message: Any) -> int:
    return message.ByteSize() if hasattr(message, "ByteSize") else len(message or b"")


# -------------------------------------------------------------------------------------------
# Access log and metrics


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """Gives each call a request id (the caller's ``x-request-id`` or a new one), returns it in
    the trailing metadata, counts the call in the metrics and writes one JSON access-log line.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        request_id = _metadata_value(handler_call_details, REQUEST_ID_KEY) or uuid.uuid4().hex
        request_id = request_id[:128]

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _CallRecord(self._metrics, method, request_id, request, context)
                with call:
                    response = await behaviour(request, context)
                    call.response_bytes += _message_bytes(response)
                    call.messages += 1
                    return response

            return run

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = _CallRecord(self._metrics, method, request_id, request, context)
                with call:
                    responses = behaviour(request, context)
                    async with contextlib.aclosing(responses):
                        async for response in responses:
                            call.response_bytes += _message_bytes(response)
                            call.messages += 1
                            yield response

            return run

        return _wrap(handler, unary, stream)


class _CallRecord:
    """One call's bookkeeping, from its start to its final status code."""

    def __init__(
        self,
        metrics: Metrics,
        method: str,
        request_id: str,
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.metrics = metrics
        self.method = method
        self.request_id = request_id
        self.request_bytes = _message_bytes(request)
        self.response_bytes = 0
        self.messages = 0
        self.context = context

    def __enter__(self) -> _CallRecord:
        self.token = _request_id.set(self.request_id)
        _refusal_held_s.set(0.0)
        self.start = time.perf_counter()
        self.finished = False
        self.metrics.request_started(self.method)
        self.context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        self.context.add_done_callback(self._rpc_done)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._finish(self._code(exc_type))
        try:
            _request_id.reset(self.token)
        except ValueError:  # a stream closed from another context (a task of the GC's)
            _request_id.set("-")

    def _rpc_done(self, _: object) -> None:
        """The call has ended. A stream cancelled while grpc was writing it (a caller that does
        not read, cancelled by the caller or at the end of a drain) never resumes the
        behaviour; its generators close later, if at all before the process exits: it is
        recorded here."""
        if not self.finished:
            self._finish(self._code(asyncio.CancelledError))

    def _finish(self, code: str) -> None:
        """Count the call and write its access-log line, once."""
        if self.finished:
            return
        self.finished = True
        duration = time.perf_counter() - self.start
        self.metrics.request_finished(self.method, code, duration)
        line: dict[str, object] = {
            "request_id": self.request_id,
            "method": self.method,
            "code": code,
            "duration_ms": round(duration * 1000, 3),
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "response_messages": self.messages,
        }
        held_s = _refusal_held_s.get()
        if held_s:  # of duration_ms, the time a refusal was held back (refusal pacing)
            line["held_ms"] = round(held_s * 1000, 3)
        access_log.info(json.dumps(line))

    def _code(self, exc_type: type[BaseException] | None) -> str:
        code = self.context.code()  # set by abort() or set_code()
        if code is not None:
            return code.name
        if exc_type is None:
            return "OK"
        if issubclass(exc_type, asyncio.CancelledError | GeneratorExit):  # the caller went away
            # The caller's own deadline fires a moment before the server's: a cancel that
            # close to the deadline is the deadline.
            remaining = self.context.time_remaining()
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        return "UNKNOWN"


# -------------------------------------------------------------------------------------------
# Authentication


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method but health and reflection."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def _rejection(self, details: grpc.HandlerCallDetails) -> tuple[str, str] | None:
        """None for a valid token, else what is wrong: (message, ErrorInfo reason)."""
        header = _metadata_value(details, "authorization")
        if header is None:
            return "missing 'authorization: Bearer <token>' metadata", "TOKEN_MISSING"
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token
        ):
            return None
        return "invalid bearer token", "TOKEN_INVALID"

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        rejection = self._rejection(handler_call_details)
        if rejection is None:
            return handler
        message, reason = rejection

        async def abort(context: grpc.aio.ServicerContext) -> None:
            status = rich_status(
                grpc.StatusCode.UNAUTHENTICATED,
                message,
                [error_info(reason)],
                current_request_id(),  # set by the access log around this call
            )
            await _abort_with(context, status)

        def unary(_: UnaryBehaviour) -> UnaryBehaviour:
            async def reject(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await abort(context)

            return reject

        def stream(_: StreamBehaviour) -> StreamBehaviour:
            async def reject(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await abort(context)
                yield  # an async generator, like the behaviour it replaces

            return reject

        # Raw bytes in: a rejected call's request is never parsed.
        return _wrap(handler, unary, stream, request_deserializer=bytes)


# -------------------------------------------------------------------------------------------
# Error mapping


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    """Ends the call with ``error``'s status (INTERNAL, logged, for a non-domain error)."""
    if isinstance(error, errors.ServiceError):
        status = status_for(error, current_request_id())
    else:
        log.error(
            "unhandled error in %s (request id %s)",
            method,
            current_request_id(),
            exc_info=error,
        )
        status = rich_status(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {current_request_id()})",
            [error_info("INTERNAL_ERROR")],
            current_request_id(),
        )
    pushback: tuple[tuple[str, str], ...] = ()
    if isinstance(error, errors.ResourceExhausted):
        # gRPC core's own retries read this trailer, not RetryInfo: send both.
        pushback = ((RETRY_PUSHBACK_KEY, str(round(error.retry_after_s * 1000))),)
    await _abort_with(context, status, pushback)


async def _abort_with(
    context: grpc.aio.ServicerContext,
    status: grpc.Status,
    extra_metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Ends the call with ``status``, its details trailer and the request id."""
    metadata = (
        *status.trailing_metadata,
        (REQUEST_ID_KEY, current_request_id()),
        *extra_metadata,
    )
    await context.abort(status.code, status.details, metadata)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into their status codes and anything else into INTERNAL with the
    request id, logging the traceback here and sending none to the caller. With a ``pacer``
    (refusal pacing), each call counts as open on its connection until it ends, and a
    ``ServerFull`` refusal waits as long as the pacer says before it is sent."""

    def __init__(self, metrics: Metrics, pacer: RefusalPacer | None = None) -> None:
        self._metrics = metrics
        self._pacer = pacer

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        parse = _request_parser(handler.request_deserializer)

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self._track(context)
                try:
                    return await behaviour(parse(request), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    await self._fail(context, err, method)

            return run

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                self._track(context)
                try:
                    responses = behaviour(parse(request), context)
                    async with contextlib.aclosing(responses):
                        async for response in responses:
                            yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    await self._fail(context, err, method)

            return run

        # Raw bytes in, parsed inside the behaviour: a message grpc cannot parse (e.g. invalid
        # UTF-8 in a string field) becomes INVALID_ARGUMENT here instead of grpc's UNKNOWN.
        return _wrap(handler, unary, stream, request_deserializer=bytes)

    def _track(self, context: grpc.aio.ServicerContext) -> None:
        """Counts the call open on its connection until it ends, however it ends."""
        if self._pacer is not None:
            pacer, peer = self._pacer, context.peer()
            pacer.call_opened(peer)
            context.add_done_callback(lambda _: pacer.call_closed(peer))

    async def _fail(self, context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
        if self._pacer is not None and isinstance(error, errors.ServerFull):
            time_left_s = context.time_remaining()
            if time_left_s is not None:
                time_left_s -= DEADLINE_SLACK_S
            held_s = await self._pacer.pace(context.peer(), error.retry_after_s, time_left_s)
            if held_s:
                _refusal_held_s.set(held_s)
                self._metrics.refusal_held(held_s)
        await _abort(context, error, method)


def _request_parser(deserializer: Callable[[bytes], Any] | None) -> Callable[[Any], Any]:
    def parse(request: Any) -> Any:
        if deserializer is None or not isinstance(request, bytes):
            return request
        try:
            return deserializer(request)
        except DecodeError as err:
            raise errors.InvalidArgument(
                "the request message cannot be parsed (malformed protobuf, or invalid UTF-8 "
                "in a string field)",
                reason="MALFORMED_REQUEST",
            ) from err

    return parse


def build_interceptors(config: ServerConfig, metrics: Metrics) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors in order, outermost first. Reads the auth token now."""
    token = config.auth.load_token()
    auth = [BearerTokenInterceptor(token)] if token is not None else []
    pacer = RefusalPacer() if config.batching.pace_refusals else None
    return [AccessLogInterceptor(metrics), *auth, ErrorMappingInterceptor(metrics, pacer)]
