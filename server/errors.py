"""Domain errors: what went wrong, in words a caller can act on.

The engine, processor and scheduler raise these; one interceptor maps each to its gRPC status
code. They never carry request content (study text or pixels), only names, sizes and limits.
"""

from __future__ import annotations

ECHO_CHARS = 64  # the most of a caller's value an error message repeats


def echo(value: str, max_chars: int = ECHO_CHARS) -> str:
    """A caller's identifier as an error message may quote it: ``repr``, cut to ``max_chars``
    characters with the full length said, so no input can blow up a status trailer."""
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}... ({len(value)} characters)"


class ServiceError(Exception):
    """Base of every error the service reports to a caller with a precise status."""


class InvalidArgument(ServiceError):
    """The request is malformed: bad image, NaN, unknown enum, wrong vector length."""


class NotFound(ServiceError):
    """A named thing does not exist: an unknown SAE id."""


class OutOfRange(ServiceError):
    """A number is outside its documented range: a feature index past d_sae, a limit."""


class FailedPrecondition(ServiceError):
    """The server is not in a state to do this: e.g. no interpretations loaded."""


class ResourceExhausted(ServiceError):
    """The server is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could be done."""


class Cancelled(ServiceError):
    """The caller went away."""


class Unavailable(ServiceError):
    """The server is starting or draining; try another replica."""
