"""Running out of accelerator memory fails one batch as retryable, never the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from maira_sae.server.errors import ResourceExhausted


@contextmanager
def out_of_memory_is_retryable() -> Iterator[None]:
    """Out-of-memory in a batch fails that batch's requests as RESOURCE_EXHAUSTED."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise ResourceExhausted(
            "the accelerator ran out of memory for this batch; retry",
            reason="DEVICE_OUT_OF_MEMORY",
        ) from error
