"""Domain errors as gRPC statuses: the code of each error class and the google.rpc error
details (ErrorInfo and RequestInfo always, and the detail each class carries) that travel in
``grpc-status-details-bin``, so callers in any language can act on them."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from maira_sae.server import errors

MAX_STATUS_MESSAGE_CHARS = 1024
ERROR_DOMAIN = "maira-sae.v1"  # google.rpc.ErrorInfo.domain of every error this server sends

# Most specific first: a subclass of one of these maps like its base.
STATUS_OF_ERROR: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: errors.ServiceError, request_id: str) -> grpc.Status:
    """The rich status of a domain error, in ``grpc-status-details-bin``: its code and message,
    an ErrorInfo (reason, domain, metadata) and a RequestInfo always; a BadRequest field
    violation for InvalidArgument and OutOfRange, a ResourceInfo for NotFound, a
    PreconditionFailure for FailedPrecondition and a RetryInfo for ResourceExhausted."""
    code = next(
        (status for kind, status in STATUS_OF_ERROR.items() if isinstance(error, kind)),
        grpc.StatusCode.INTERNAL,
    )
    message = _bounded(str(error))
    details: list[Message] = [error_info(error.reason, error.metadata)]
    if isinstance(error, errors.FieldError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=message, reason=error.reason
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    elif isinstance(error, errors.NotFound):
        details.append(
            error_details_pb2.ResourceInfo(
                resource_type=error.resource_type,
                resource_name=error.resource_name,
                description=message,
            )
        )
    elif isinstance(error, errors.FailedPrecondition):
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=error.precondition, subject=error.subject, description=message
        )
        details.append(error_details_pb2.PreconditionFailure(violations=[violation]))
    elif isinstance(error, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(error.retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return rich_status(code, message, details, request_id)


def error_info(reason: str, metadata: dict[str, str] | None = None) -> Message:
    """The ErrorInfo every error carries: the stable reason under this server's domain."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def rich_status(
    code: grpc.StatusCode, message: str, details: list[Message], request_id: str
) -> grpc.Status:
    """``code`` and ``message`` with ``details`` and a RequestInfo as a google.rpc.Status."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in [*details, error_details_pb2.RequestInfo(request_id=request_id)]:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def _bounded(message: str) -> str:
    """A status message short enough for the trailer whatever a caller sent (messages quote
    input through ``errors.echo``; this is the backstop)."""
    if len(message) <= MAX_STATUS_MESSAGE_CHARS:
        return message
    return message[: MAX_STATUS_MESSAGE_CHARS - 30] + f"... ({len(message)} characters)"
