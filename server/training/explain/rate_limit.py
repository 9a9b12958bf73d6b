"""Requests and tokens per minute, and how long to wait before a retry.

``MinuteBudget`` bounds a run's requests and tokens per minute with two aiolimiter leaky
buckets (the ``llm`` extra); ``retry_delay`` is the wait before the next attempt: the
endpoint's own ``Retry-After`` when it sent one (seconds, milliseconds or an HTTP date),
else an exponential backoff with full jitter.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

from aiolimiter import AsyncLimiter


class MinuteBudget:
    """At most ``requests_per_minute`` requests and ``tokens_per_minute`` tokens (None: no
    bound); a request asks for its estimated tokens, capped at the minute's whole budget."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        for name, value in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if value is not None and value < 1:
                raise ValueError(f"{name} per minute must be >= 1, got {value}")
        self._tokens_per_minute = tokens_per_minute
        self._requests = None if requests_per_minute is None else AsyncLimiter(requests_per_minute)
        self._tokens = None if tokens_per_minute is None else AsyncLimiter(tokens_per_minute)

    async def acquire(self, tokens: int) -> None:
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None and self._tokens_per_minute is not None:
            await self._tokens.acquire(min(max(tokens, 1), self._tokens_per_minute))


def retry_delay(
    attempt: int,
    headers: Mapping[str, str] | None,
    *,
    base_s: float = 0.5,
    cap_s: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0): the
    endpoint's ``Retry-After`` (capped at ``cap_s``) when ``headers`` carry one, else a
    jittered exponential backoff."""
    asked = _retry_after(headers or {})
    if asked is not None:
        return min(asked, cap_s)
    return (rng or random).uniform(0, min(cap_s, base_s * 2**attempt))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    lowered = {key.lower(): value for key, value in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(float(lowered["retry-after-ms"]) / 1000, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
