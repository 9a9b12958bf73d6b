"""Waiting on a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> float:
    """Poll until ``condition()`` holds; returns the seconds it took, fails after the timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(interval_s)
    return time.monotonic() - start
