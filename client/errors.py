"""One exception type per family of gRPC status codes, carrying the server's error details.

Every error a call raises is a ``MairaSaeError`` with ``code`` (the ``grpc.StatusCode``),
``message`` (the server's words), ``request_id`` (the server's ``x-request-id``, for its logs)
and what the server's google.rpc.Status details say: ``reason`` and ``metadata`` (ErrorInfo:
a stable code to branch on, with e.g. the limit), ``field_violations`` (BadRequest: the proto
field path of what is wrong), ``resource`` (ResourceInfo, for NOT_FOUND),
``precondition_violations`` (PreconditionFailure) and ``retry_after_s`` (RetryInfo). The
README lists the reasons. Errors raised by gRPC itself (no server reached, a deadline passed
on this side) have no details: ``reason`` is None there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

M = TypeVar("M", bound=Message)

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REQUEST_ID_KEY = "x-request-id"


@dataclass(frozen=True)
class FieldViolation:
    """One wrong field of the request (google.rpc.BadRequest.FieldViolation)."""

    field: str  # its proto path, e.g. "variants[0].interventions[1].value"
    description: str
    reason: str = ""


@dataclass(frozen=True)
class ResourceInfo:
    """The resource a NOT_FOUND names (google.rpc.ResourceInfo), e.g. type "sae"."""

    resource_type: str
    resource_name: str
    description: str = ""


@dataclass(frozen=True)
class PreconditionViolation:
    """An unmet condition (google.rpc.PreconditionFailure.Violation)."""

    type: str  # e.g. "INTERPRETATIONS"
    subject: str  # e.g. "sae/demo-ef4-layer15"
    description: str = ""


@dataclass(frozen=True)
class ErrorDetails:
    """What a google.rpc.Status's details say, each part empty when the server sent none."""

    reason: str | None = None
    domain: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    resource: ResourceInfo | None = None
    precondition_violations: tuple[PreconditionViolation, ...] = ()
    retry_after_s: float | None = None


class MairaSaeError(Exception):
    """A call failed; subclasses group the status codes a caller reacts to alike."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        details: ErrorDetails | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        details = details or ErrorDetails(retry_after_s=retry_after_s)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details
        self.retry_after_s = details.retry_after_s
        self.reason = details.reason
        self.metadata = details.metadata
        self.field_violations = details.field_violations
        self.resource = details.resource
        self.precondition_violations = details.precondition_violations

    @property
    def field(self) -> str | None:
        """The proto path of the first wrong field (INVALID_ARGUMENT, OUT_OF_RANGE), if any."""
        return self.field_violations[0].field if self.field_violations else None


class InvalidRequestError(MairaSaeError):
    """INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION: fix the request, do not retry."""


class InvalidArgumentError(InvalidRequestError):
    """INVALID_ARGUMENT: malformed input; ``field_violations`` say where."""


class OutOfRangeError(InvalidRequestError):
    """OUT_OF_RANGE: a number past its range or a server limit; ``field_violations`` say
    where, ``metadata`` the limit ("limit", "limitValue", "value")."""


class FailedPreconditionError(InvalidRequestError):
    """FAILED_PRECONDITION: the server cannot do this as it is set up (e.g. an SAE without
    interpretations); ``precondition_violations`` say which condition."""


class NotFoundError(MairaSaeError):
    """NOT_FOUND: e.g. an unknown SAE id; ``resource`` names it."""


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
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
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
    details = ErrorDetails()
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == _REQUEST_ID_KEY:
            request_id = value.decode() if isinstance(value, bytes) else value
        elif key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            details = error_details(status_pb2.Status.FromString(value))
    family = _FAMILY.get(code, ServerError)
    return family(code, message, request_id=request_id, details=details)


def error_from_rpc(error: grpc.RpcError) -> MairaSaeError:
    """The exception for a ``grpc.RpcError`` raised by a sync or an asyncio call."""
    call: grpc.Call = error  # type: ignore[assignment]  # every RpcError a call raises is one
    return error_from_status(call.code(), call.details() or "", call.trailing_metadata())


def error_details(status: status_pb2.Status) -> ErrorDetails:
    """The details of a google.rpc.Status this SDK knows; others are skipped."""
    info = _unpack(status, error_details_pb2.ErrorInfo)
    bad_request = _unpack(status, error_details_pb2.BadRequest)
    resource = _unpack(status, error_details_pb2.ResourceInfo)
    precondition = _unpack(status, error_details_pb2.PreconditionFailure)
    retry = _unpack(status, error_details_pb2.RetryInfo)
    return ErrorDetails(
        reason=info.reason if info else None,
        domain=info.domain if info else None,
        metadata=dict(info.metadata) if info else {},
        field_violations=tuple(
            FieldViolation(v.field, v.description, v.reason)
            for v in (bad_request.field_violations if bad_request else ())
        ),
        resource=ResourceInfo(resource.resource_type, resource.resource_name, resource.description)
        if resource
        else None,
        precondition_violations=tuple(
            PreconditionViolation(v.type, v.subject, v.description)
            for v in (precondition.violations if precondition else ())
        ),
        retry_after_s=retry.retry_delay.ToNanoseconds() / 1e9 if retry else None,
    )


def _unpack(status: status_pb2.Status, kind: type[M]) -> M | None:
    """The first detail of type ``kind``, or None."""
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None
