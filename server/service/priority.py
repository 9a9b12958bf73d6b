"""What a caller tells the server about its call in request metadata: its priority.

``x-maira-sae-priority: batch`` marks batch traffic (the SDK's ``encode_many``, dataset jobs):
it yields to interactive callers in the engine's fair queue and takes its place in the long
lane of admission. ``interactive`` (the default when the key is absent) is a caller waiting
for the answer. Any other value, or the key sent twice, is INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterable

from maira_sae.server.engine.admission_policy import Priority
from maira_sae.server.errors import InvalidArgument
from maira_sae.v1 import maira_sae_pb2 as pb

PRIORITY_KEY = "x-maira-sae-priority"
_KNOWN = ", ".join(priority.value for priority in Priority)


def call_priority(metadata: Iterable[tuple[str, str | bytes]] | None) -> Priority:
    values = [value for key, value in metadata or () if key == PRIORITY_KEY]
    if not values:
        return Priority.INTERACTIVE
    if len(values) > 1:
        raise InvalidArgument(
            f"metadata {PRIORITY_KEY} is sent {len(values)} times; send it once",
            reason="PRIORITY_INVALID",
        )
    value = values[0]
    try:
        return Priority(value)
    except ValueError:
        raise InvalidArgument(
            f"metadata {PRIORITY_KEY} is {str(value)[:40]!r}; known values: {_KNOWN}",
            reason="PRIORITY_INVALID",
        ) from None


def tokens_to_generate(request: pb.GenerateSteeredRequest, default_max_new_tokens: int) -> int:
    """What a GenerateSteered call asks for at most, over its variants (none: one baseline),
    read before the request is converted: which admission lane it takes."""
    max_new_tokens = request.settings.max_new_tokens or default_max_new_tokens
    return max(1, len(request.variants)) * max_new_tokens
