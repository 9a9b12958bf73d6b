"""encode_many: ordered results equal to single calls, bounded concurrency, the first failure
stops the rest, retries as single calls have them, and the progress line without tqdm."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from dataclasses import replace

import pytest

from maira_sae.client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    ServerBusyError,
    Study,
    StudyImage,
    TokenFilter,
    TokenKind,
)
from maira_sae.client.batch import LineProgress, map_in_tasks, map_in_threads, progress_bar

TOP_K = 4  # features per token: keeps 50 studies' replies small


@pytest.fixture(scope="module")
def world_studies() -> list[Study]:
    """50 different synthetic world films, each the frontal image of a study with the same
    indication, so every study has the same number of tokens.

    Same length on purpose: batched with longer studies, a shorter study's activations move by
    about 1e-7 on CPU (padding changes the float reductions; see the report of issue 16), and
    "equal to single calls" is meant exactly here."""
    from maira_sae.server.demo.world.studies import world_dataset

    return [Study.of(s.frontal, indication="Follow-up.") for s in world_dataset(50, seed=16)]


def test_encode_many_equals_single_calls_in_order(client, world_studies):
    args = {"top_k_per_token": TOP_K, "token_filter": TokenFilter(kinds=frozenset(TokenKind))}
    many = client.encode_many(world_studies, concurrency=8, progress=False, **args)
    singles = [client.encode(study, **args) for study in world_studies]
    assert len(many) == 50
    assert many == singles  # every token, feature id and float, in the studies' order
    # the films differ, so equality is not the same reply fifty times over
    assert len({r.tokens for r in many}) == 50


def test_async_encode_many_equals_sync(demo_server, client, world_studies):
    studies = world_studies[:12]

    async def main():
        async with AsyncClient(demo_server.target) as aclient:
            return await aclient.encode_many(
                studies, concurrency=5, progress=False, top_k_per_token=TOP_K
            )

    assert asyncio.run(main()) == client.encode_many(
        studies, concurrency=1, progress=False, top_k_per_token=TOP_K
    )


def test_a_failed_study_raises_its_error_and_stops_the_rest(client, world_studies, monkeypatch):
    broken = replace(world_studies[2], frontal=StudyImage(data=b"not an image"))
    studies = [*world_studies[:2], broken, *world_studies[3:40]]
    calls = []
    encode = client.encode
    monkeypatch.setattr(
        client, "encode", lambda study, **args: calls.append(1) or encode(study, **args)
    )
    with pytest.raises(InvalidRequestError, match="frontal"):
        client.encode_many(studies, concurrency=2, progress=False, top_k_per_token=TOP_K)
    assert len(calls) < 10  # of 40: the queued rest never started


@pytest.fixture(scope="module")
def two_place_server(demo_checkpoint):
    from maira_sae.server.service.config import BatchingConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(demo_checkpoint, batching=BatchingConfig(queue_size=2))
    with running_server(config) as server:
        yield server


def test_calls_really_overlap_and_fail_as_single_calls_do(two_place_server, world_studies):
    """Six callers against two places: without retries some call is refused at once, and
    encode_many raises the SDK's error for it (each call is a plain ``encode``: with retries
    on, it retries exactly as a single call does). Its calls are batch-marked: the place for
    long and batch calls (one of the two) is what they find taken."""
    with (
        Client(two_place_server.target, retry=None) as no_retries,
        pytest.raises(ServerBusyError, match=r"places for long and batch calls are taken \(1 of 2"),
    ):
        no_retries.encode_many(world_studies[:12], concurrency=6, progress=False, top_k_per_token=1)


# -------------------------------------------------------------------------------------------
# The runners on their own


class _InFlight:
    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_threads_keep_order_and_bound_concurrency(concurrency):
    flight = _InFlight()

    def call(item: int) -> int:
        flight.enter()
        time.sleep(0.01 * (item % 5))  # finish out of order
        flight.leave()
        return item * item

    assert map_in_threads(call, range(30), concurrency=concurrency, progress=False) == [
        i * i for i in range(30)
    ]
    # never past the bound; how many threads overlap beyond one depends on the machine's load
    assert flight.most <= concurrency and (flight.most > 1) == (concurrency > 1)


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_tasks_keep_order_and_bound_concurrency(concurrency):
    flight = _InFlight()

    async def call(item: int) -> int:
        flight.enter()
        await asyncio.sleep(0.002 * (item % 5))
        flight.leave()
        return item * item

    results = asyncio.run(map_in_tasks(call, range(30), concurrency=concurrency, progress=False))
    assert results == [i * i for i in range(30)]
    assert flight.most == min(concurrency, 30)


def test_tasks_cancel_the_rest_on_a_failure():
    started: list[int] = []

    async def call(item: int) -> int:
        started.append(item)
        if item == 3:
            raise ValueError("three")
        await asyncio.sleep(0.01)
        return item

    with pytest.raises(ValueError, match="three"):
        asyncio.run(map_in_tasks(call, range(100), concurrency=2, progress=False))
    assert len(started) < 10


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency"):
        map_in_threads(str, [1], concurrency=0)


def test_line_progress_prints_about_ten_lines_to_a_log():
    out = io.StringIO()
    progress = LineProgress(50, "encode", out)
    for _ in range(50):
        progress.update()
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "encode: 50/50"
    assert len(lines) == 10


def test_without_tqdm_the_bar_is_a_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert isinstance(progress_bar(5, "encode", enabled=True), LineProgress)


def test_progress_goes_to_stderr(capsys):
    map_in_threads(str, range(4), concurrency=2, progress=True, what="encode")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4/4" in captured.err


def test_encode_many_marks_its_calls_as_batch_and_single_calls_stay_interactive(
    demo_server, client, world_studies
):
    def admitted(priority: str, lane: str) -> float:
        registry = demo_server.server.metrics.registry
        labels = {"priority": priority, "lane": lane}
        return registry.get_sample_value("maira_sae_admitted_calls_total", labels) or 0.0

    batch, interactive = admitted("batch", "long"), admitted("interactive", "short")
    client.encode_many(world_studies[:3], concurrency=2, progress=False, top_k_per_token=1)
    assert admitted("batch", "long") == batch + 3
    client.encode(world_studies[0], top_k_per_token=1)
    assert admitted("interactive", "short") == interactive + 1
    assert admitted("batch", "long") == batch + 3
