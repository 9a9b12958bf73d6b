"""Prometheus metrics of one server, in a registry of its own.

A private ``CollectorRegistry`` (not the process-global one) lets tests build several servers in
one process. The interceptors record calls; the scheduler reports through the methods of its
``SchedulerObserver`` (same names), start-up through ``model_loaded`` and ``sae_loaded``.
Labels are low-cardinality only: method names, status codes, SAE ids.
"""

from __future__ import annotations

import math
import threading
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "maira_sae"

# Seconds, from a cached unary call (ms) to a long steered generation (minutes).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
BUSY_RATIO_WINDOW_S = 30.0


class BusyRatio:
    """The share of recent time spent busy, as an exponentially weighted mean with time
    constant ``window_s``: it falls towards 0 while the engine idles, with no sampling
    thread (read at scrape time). Steps are added from the engine thread."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._value = 0.0
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def _decayed(self, now: float) -> float:
        return self._value * math.exp(-(now - self._at) / self._window_s)

    def add(self, busy_s: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._value = self._decayed(now) + busy_s / self._window_s
            self._at = now

    def value(self) -> float:
        with self._lock:
            return min(1.0, self._decayed(time.monotonic()))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            f"{PREFIX}_requests", "Finished RPCs.", ["method", "code"], registry=r
        )
        self._request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "RPC duration, from the call's arrival to its last message.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._inflight = Gauge(
            f"{PREFIX}_inflight_requests", "RPCs being handled now.", ["method"], registry=r
        )
        self._admitted_requests = Gauge(
            f"{PREFIX}_admitted_requests",
            "Requests holding a place in the queue: being prepared, queued or running.",
            registry=r,
        )
        self._admitted_calls = Counter(
            f"{PREFIX}_admitted_calls",
            "Calls admitted, by the priority their caller marked and the lane they took.",
            ["priority", "lane"],
            registry=r,
        )
        self._queued_cost = Gauge(
            f"{PREFIX}_queued_cost_tokens",
            "Engine work admitted and not done yet, in tokens: prompts not yet run and tokens"
            " that running and waiting generations may still generate (the autoscaler's input).",
            registry=r,
        )
        self._refusals_held = Counter(
            f"{PREFIX}_refusals_held",
            "Refusals (RESOURCE_EXHAUSTED before any work) held back by refusal pacing: not a"
            " retry that waited its RetryInfo delay, and past its connection's rate of one"
            " refusal per delay per open call.",
            registry=r,
        )
        self._refusal_hold = Counter(
            f"{PREFIX}_refusal_hold_seconds",
            "Seconds refusals were held back, in all (refusal pacing).",
            registry=r,
        )
        self._busy_ratio = BusyRatio(BUSY_RATIO_WINDOW_S)
        Gauge(
            f"{PREFIX}_engine_busy_ratio",
            f"Share of the last ~{BUSY_RATIO_WINDOW_S:g} s the engine thread spent running"
            " steps (exponentially weighted; 1: saturated).",
            registry=r,
        ).set_function(self._busy_ratio.value)
        self._queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a request waited in the queue before its batch started.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            f"{PREFIX}_batch_size", "Rows per engine batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self._time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "From a GenerateSteered call's arrival to its first streamed token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._generated_tokens = Counter(
            f"{PREFIX}_generated_tokens", "Tokens generated, over all variants.", registry=r
        )
        self._engine_busy = Counter(
            f"{PREFIX}_engine_busy_seconds",
            "Seconds the engine thread spent running batches; rate() of it is the busy ratio.",
            registry=r,
        )
        self._active_rows = Gauge(
            f"{PREFIX}_active_rows",
            "Generation rows (variants of running calls) in the decode batch.",
            registry=r,
        )
        self._kv_positions = Gauge(
            f"{PREFIX}_kv_positions_in_use",
            "KV-cache positions held by the decode batch (rows x cached positions).",
            registry=r,
        )
        self._waiting_prefill_tokens = Gauge(
            f"{PREFIX}_waiting_prefill_tokens",
            "Prompt tokens of admitted generations waiting for their prefill.",
            registry=r,
        )
        self._step_duration = Histogram(
            f"{PREFIX}_decode_step_seconds",
            "Time of one decode step of the whole batch.",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r,
        )
        self._tokens_per_step = Histogram(
            f"{PREFIX}_tokens_per_step",
            "Rows decoded by one step (the tokens it produced, at most).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self._model_load = Gauge(
            f"{PREFIX}_model_load_seconds", "Time the model took to load.", registry=r
        )
        self._sae_load = Gauge(
            f"{PREFIX}_sae_load_seconds", "Time each SAE took to load.", ["sae_id"], registry=r
        )
        self._http_server: WSGIServer | None = None

    # Calls (interceptors)

    def request_started(self, method: str) -> None:
        self._inflight.labels(method=method).inc()

    def request_finished(self, method: str, code: str, duration_s: float) -> None:
        self._inflight.labels(method=method).dec()
        self._requests.labels(method=method, code=code).inc()
        self._request_duration.labels(method=method).observe(duration_s)

    def refusal_held(self, seconds: float) -> None:
        self._refusals_held.inc()
        self._refusal_hold.inc(seconds)

    # Scheduler and engine: the scheduler's SchedulerObserver methods, by name.

    def admitted_requests(self, count: int) -> None:
        self._admitted_requests.set(count)

    def call_admitted(self, priority: str, lane: str) -> None:
        self._admitted_calls.labels(priority=priority, lane=lane).inc()

    def queued_cost(self, tokens: int) -> None:
        self._queued_cost.set(tokens)

    def batch_started(self, size: int, waits_s: list[float]) -> None:
        """One engine batch of ``size`` rows; ``waits_s``: how long each of its requests queued."""
        self._batch_size.observe(size)
        for wait in waits_s:
            self._queue_wait.observe(wait)

    def busy(self, seconds: float) -> None:
        self._engine_busy.inc(seconds)
        self._busy_ratio.add(seconds)

    def first_token(self, seconds: float) -> None:
        self._time_to_first_token.observe(seconds)

    def tokens_generated(self, count: int) -> None:
        self._generated_tokens.inc(count)

    def decode_step(self, rows: int, kv_positions: int, seconds: float) -> None:
        self._step_duration.observe(seconds)
        self._tokens_per_step.observe(rows)

    def decode_batch(self, rows: int, kv_positions: int, waiting_prefill_tokens: int) -> None:
        self._active_rows.set(rows)
        self._kv_positions.set(kv_positions)
        self._waiting_prefill_tokens.set(waiting_prefill_tokens)

    # Start-up

    def model_loaded(self, seconds: float) -> None:
        self._model_load.set(seconds)

    def sae_loaded(self, sae_id: str, seconds: float) -> None:
        self._sae_load.labels(sae_id=sae_id).set(seconds)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serves /metrics over HTTP in a daemon thread; returns the bound port (0 picks one)."""
        self._http_server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http_server.server_port

    def stop(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
