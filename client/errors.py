"""One exception type per family of gRPC status codes, carrying the server's message.

Every error a call raises is a ``MairaSaeError`` with ``code`` (the ``grpc.StatusCode``),
``message`` (the server's words), ``request_id`` (the server's ``x-request-id``, for its logs)
and ``retry_after_s`` (from a google.rpc.RetryInfo detail, when the server sent one).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REQUEST_ID_KEY = "x-request-id"


class MairaSaeError(Exception):
    """A call failed; subclasses group the status codes a caller reacts to alike."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s


class InvalidRequestError(MairaSaeError):
    """INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION: fix the request, do not retry."""


class NotFoundError(MairaSaeError):
    """NOT_FOUND: e.g. an unknown SAE id."""


class AuthenticationError(MairaSaeError):
    """UNAUTHENTICATED, PERMISSION_DENIED: a missing or wrong bearer token."""


class ServerBusyError(MairaSaeError):
    """RESOURCE_EXHAUSTED: the server's queue was full after every retry."""


class UnavailableError(MairaSaeError):
    """UNAVAILABLE: no server reachable, or it is starting or draining."""


class DeadlineExceededError(MairaSaeError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


class CallCancelledError(MairaSaeError):
    """CANCELLED: the call was cancelled (by this client or on the server's side)."""


class ServerError(MairaSaeError):
    """INTERNAL, UNKNOWN, UNIMPLEMENTED and the rest: a server fault; quote request_id."""


class MissingExtraError(ImportError):
    """A part of the SDK that needs an optional extra was used without it installed."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs {module}, which is not installed: pip install 'maira-sae[{extra}]'"
        )
        self.extra = extra
        self.name = module


_FAMILY: dict[grpc.StatusCode, type[MairaSaeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServerBusyError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
}


def error_from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: object
) -> MairaSaeError:
    """The exception for a failed call, from its code, details and trailing metadata (any
    iterable of (key, value) pairs, sync or asyncio flavour)."""
    request_id = None
    retry_after_s = None
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == _REQUEST_ID_KEY:
            request_id = value.decode() if isinstance(value, bytes) else value
        elif key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            retry_after_s = _retry_delay(value)
    family = _FAMILY.get(code, ServerError)
    return family(code, message, request_id=request_id, retry_after_s=retry_after_s)


def error_from_rpc(error: grpc.RpcError) -> MairaSaeError:
    """The exception for a ``grpc.RpcError`` raised by a sync or an asyncio call."""
    call: grpc.Call = error  # type: ignore[assignment]  # every RpcError a call raises is one
    return error_from_status(call.code(), call.details() or "", call.trailing_metadata())


def _retry_delay(details_bin: bytes) -> float | None:
    status = status_pb2.Status.FromString(details_bin)
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None
