"""Domain errors: what went wrong, in words a caller can act on, and in codes a program can.

The engine, processor and scheduler raise these; one interceptor maps each to its gRPC status
code and its google.rpc error details. Besides its message, every error carries a stable
``reason`` (an UPPER_SNAKE_CASE code, ErrorInfo.reason: the README lists them) and
``metadata`` (ErrorInfo.metadata: names and numbers such as the limit). Errors about one field
of the request carry its proto field path (``field``, e.g. ``variants[0].interventions[1].value``);
NotFound names the missing resource and FailedPrecondition the unmet condition. They never carry
request content (study text or pixels), only names, sizes and limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

ECHO_CHARS = 64  # the most of a caller's value an error message repeats


def echo(value: str, max_chars: int = ECHO_CHARS) -> str:
    """A caller's identifier as an error message may quote it: ``repr``, cut to ``max_chars``
    characters with the full length said, so no input can blow up a status trailer."""
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}... ({len(value)} characters)"


class ServiceError(Exception):
    """Base of every error the service reports to a caller with a precise status.

    ``reason`` is the stable code a program branches on (each class has a generic default;
    raise sites name a precise one); ``metadata`` values are sent as strings."""

    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.metadata = {key: str(value) for key, value in (metadata or {}).items()}


class FieldError(ServiceError):
    """An error about one field of the request: ``field`` is its proto path ("" when no one
    field is to blame, as for a message that cannot be parsed)."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field = field


class InvalidArgument(FieldError):
    """The request is malformed: bad image, NaN, unknown enum, wrong vector length."""

    default_reason = "INVALID_ARGUMENT"


class OutOfRange(FieldError):
    """A number is outside its documented range: a feature index past d_sae, a limit."""

    default_reason = "OUT_OF_RANGE"


class NotFound(ServiceError):
    """A named thing does not exist: an unknown SAE id (``resource_type`` "sae",
    ``resource_name`` the id)."""

    default_reason = "NOT_FOUND"

    def __init__(
        self,
        message: str,
        *,
        resource_type: str = "",
        resource_name: str = "",
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.resource_type = resource_type
        self.resource_name = resource_name


class FailedPrecondition(ServiceError):
    """The server is not in a state to do this: e.g. no interpretations loaded.
    ``precondition`` is the unmet condition's type (e.g. "INTERPRETATIONS") and ``subject``
    what it is about (e.g. "sae/demo-ef4-layer15")."""

    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        precondition: str = "",
        subject: str = "",
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.precondition = precondition
        self.subject = subject


class ResourceExhausted(ServiceError):
    """The server is full; retry after ``retry_after_s`` seconds."""

    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        retry_after_s: float = 0.5,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class ServerFull(ResourceExhausted):
    """The call was turned away before any work was done for it: the server's places or its
    image-decoding memory are taken. Refusal pacing may hold it back from a connection that
    calls again sooner than its refusals' delays allow (``server/service/refusal_pacing.py``)."""


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could be done."""

    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    """The caller went away."""

    default_reason = "CANCELLED"


class Unavailable(ServiceError):
    """The server is starting or draining; try another replica."""

    default_reason = "UNAVAILABLE"


def limit_metadata(limit: str, limit_value: object, value: object) -> dict[str, object]:
    """ErrorInfo metadata of a value past a server limit: the limit (a field of ``Limits`` in
    GetInfo), the limit's value and the request's value."""
    return {"limit": limit, "limitValue": limit_value, "value": value}
