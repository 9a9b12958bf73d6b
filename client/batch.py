"""Many calls at once with results in input order: the machinery of ``encode_many``.

``Client`` runs its calls on a pool of ``concurrency`` threads (its channel is thread-safe),
``AsyncClient`` on ``concurrency`` tasks of its event loop; either way at most that many calls
are in flight, each one an ordinary call with its retries, deadline and error types. The first
call that fails stops the rest (queued ones never start, running ones finish or are
cancelled) and its error is raised.

Progress goes to stderr: a tqdm bar when tqdm is installed (the ``arrays`` extra brings it),
else a plain counter line, so the base client needs nothing more. It shows counts only, never
anything of a study.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Protocol, TextIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CONCURRENCY = 4


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """``what: done/total`` on stderr: rewritten in place on a terminal, else one line per
    tenth of the way (a log file gets about ten lines, not one per call)."""

    def __init__(self, total: int, what: str, out: TextIO | None = None) -> None:
        self.total, self.what, self.done = total, what, 0
        self.out = out or sys.stderr
        self.in_place = self.out.isatty()
        self._step = max(1, -(-total // 10))

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.in_place:
            print(f"\r{self._text()}", end="", file=self.out, flush=True)
        elif self.done % self._step == 0 or self.done == self.total:
            print(self._text(), file=self.out, flush=True)

    def close(self) -> None:
        if self.in_place:
            print(file=self.out, flush=True)

    def _text(self) -> str:
        return f"{self.what}: {self.done}/{self.total}"


def progress_bar(total: int, what: str, enabled: bool) -> Progress:
    if not enabled or total == 0:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return LineProgress(total, what)
    return tqdm(total=total, desc=what, unit="study", file=sys.stderr)


def _checked(concurrency: int) -> int:
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    return concurrency


def map_in_threads(
    call: Callable[[T], R],
    items: Iterable[T],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = True,
    what: str = "calls",
) -> list[R]:
    """``[call(item) for item in items]``, at most ``concurrency`` at once on threads."""
    _checked(concurrency)
    pending = list(items)
    bar = progress_bar(len(pending), what, progress)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="maira-sae-many")
    try:
        futures = [pool.submit(call, item) for item in pending]
        for future in as_completed(futures):
            future.result()  # the first failure raises here; `finally` drops the queued rest
            bar.update()
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


async def map_in_tasks(
    call: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = True,
    what: str = "calls",
) -> list[R]:
    """``[await call(item) for item in items]``, at most ``concurrency`` at once: that many
    worker tasks take the items in turn."""
    _checked(concurrency)
    pending = list(items)
    bar = progress_bar(len(pending), what, progress)
    results: list[R | None] = [None] * len(pending)
    indices = iter(range(len(pending)))  # shared: each index is taken by one worker

    async def worker() -> None:
        for index in indices:
            results[index] = await call(pending[index])
            bar.update()

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(pending)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        bar.close()
    return results  # type: ignore[return-value]  # every slot is filled once gather returns
