"""Training batches from activations that need not fit in memory: a shuffle buffer ("window")
of bounded size over a row source (a tensor, or an activation store read shard slice by slice).

The stream is an endless sequence of rows, epoch after epoch; batch ``s`` is stream rows
``s * batch_size`` .. ``(s + 1) * batch_size - 1``, so a batch is a pure function of the seed,
the window size and ``s``: a run resumed at step ``s`` sees the batches an uninterrupted run
sees, with no random state to save (``position`` says where step ``s`` reads, for the record).

Each epoch:

- When the window holds every row, it is all rows in order and its permutation is
  ``randperm(N)`` seeded by ``seed * 1_000_003 + epoch``: the full shuffle the trainer has
  always done, so in-memory training keeps its batches.
- Otherwise the rows are cut into chunks of ``window_rows // CHUNKS_PER_WINDOW`` rows, the chunks
  are permuted (seeded by the epoch), consecutive runs of ``CHUNKS_PER_WINDOW`` chunks form the
  windows, and each window's rows are permuted (seeded by the epoch and the window). Only one
  window (plus one chunk while it is read) is in memory at a time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Protocol

import torch

CHUNKS_PER_WINDOW = 16
_WINDOW_SEED_STRIDE = 1 << 32
_CHUNK_ORDER_SALT = 1 << 60


class RowSource(Protocol):
    """Rows [N, d_model] readable by range (``StoreReader`` is one)."""

    d_model: int
    dtype: torch.dtype

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> torch.Tensor: ...


class TensorRows:
    """A tensor [N, d_model] as a row source (reads are views)."""

    def __init__(self, data: torch.Tensor) -> None:
        if data.ndim != 2:
            raise ValueError(f"expected activations [N, d_model], got {tuple(data.shape)}")
        self.data = data
        self.d_model = int(data.shape[1])
        self.dtype = data.dtype

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.data[start:stop]


def as_row_source(activations: torch.Tensor | Iterable[torch.Tensor] | RowSource) -> RowSource:
    """A tensor, chunks of one (concatenated in memory) or a row source."""
    if torch.is_tensor(activations):
        return TensorRows(activations)
    if hasattr(activations, "read"):
        return activations  # type: ignore[return-value]
    return TensorRows(torch.cat(list(activations)))  # type: ignore[arg-type]


def window_rows_for(source: RowSource, buffer_gb: float | None, batch_size: int) -> int:
    """Rows of the shuffle window: all of them without a bound, else what ``buffer_gb`` holds
    in the source's dtype (at least one batch)."""
    if buffer_gb is None:
        return len(source)
    if buffer_gb <= 0:
        raise ValueError(f"the shuffle buffer must be > 0 GB, got {buffer_gb}")
    row_bytes = source.d_model * torch.empty((), dtype=source.dtype).element_size()
    return min(len(source), max(batch_size, int(buffer_gb * 1e9 / row_bytes)))


class ShuffledStream:
    """Batches of ``batch_size`` rows of ``source`` through a window of ``window_rows`` rows
    (see the module docstring for the order)."""

    def __init__(self, source: RowSource, batch_size: int, seed: int, window_rows: int) -> None:
        self.source = source
        self._n = len(source)
        if self._n < 2:
            raise ValueError(f"expected activations [N >= 2, {source.d_model}], got N = {self._n}")
        self._batch_size, self._seed = batch_size, seed
        self.window_rows = min(window_rows, self._n)
        self.chunk_rows = (
            self._n
            if self.window_rows >= self._n
            else max(1, self.window_rows // CHUNKS_PER_WINDOW)
        )
        self._num_chunks = math.ceil(self._n / self.chunk_rows)
        self._chunks_per_window = max(1, self.window_rows // self.chunk_rows)
        self._epoch_layout: tuple[int, list[torch.Tensor], list[int]] | None = None
        self._window: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None

    def batch(self, step: int) -> torch.Tensor:
        """Batch ``step`` in the source's dtype."""
        start = step * self._batch_size
        end, pieces, position = start + self._batch_size, [], start
        while position < end:
            epoch, offset = divmod(position, self._n)
            window, window_start, window_end = self._locate(epoch, offset)
            take = min(window_end - offset, end - position)
            rows, order = self._load(epoch, window)
            local = offset - window_start
            pieces.append(rows[order[local : local + take]])
            position += take
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def position(self, step: int) -> dict[str, int]:
        """Where batch ``step`` starts: epoch, window of the epoch, row within the window."""
        epoch, offset = divmod(step * self._batch_size, self._n)
        window, window_start, _ = self._locate(epoch, offset)
        return {"epoch": epoch, "window": window, "row": offset - window_start}

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows at sorted ``indices``; each chunk's span from its first to its last wanted
        row is read, so a sparse sample reads little and a dense one a chunk at a time."""
        blocks = indices // self.chunk_rows
        pieces = []
        for block in torch.unique_consecutive(blocks).tolist():
            wanted = indices[blocks == block]
            first, last = int(wanted[0]), int(wanted[-1])
            pieces.append(self.source.read(first, last + 1)[wanted - first])
        return torch.cat(pieces)

    def _locate(self, epoch: int, offset: int) -> tuple[int, int, int]:
        _, _, starts = self._layout(epoch)
        window = bisect.bisect_right(starts, offset) - 1
        return window, starts[window], starts[window + 1]

    def _layout(self, epoch: int) -> tuple[int, list[torch.Tensor], list[int]]:
        """The epoch's windows (as chunk numbers) and their first rows."""
        if self._epoch_layout is None or self._epoch_layout[0] != epoch:
            if self._num_chunks == 1:
                chunk_order = torch.zeros(1, dtype=torch.long)
            else:
                generator = torch.Generator().manual_seed(
                    self._epoch_seed(epoch) + _CHUNK_ORDER_SALT
                )
                chunk_order = torch.randperm(self._num_chunks, generator=generator)
            windows = list(chunk_order.split(self._chunks_per_window))
            starts = [0]
            for chunks in windows:
                starts.append(starts[-1] + sum(self._chunk_size(c) for c in chunks.tolist()))
            self._epoch_layout = (epoch, windows, starts)
        return self._epoch_layout

    def _load(self, epoch: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's rows and their permutation; the previous window is dropped first."""
        if self._window is not None and self._window[0] == (epoch, window):
            return self._window[1], self._window[2]
        self._window = None
        _, windows, starts = self._layout(epoch)
        size = starts[window + 1] - starts[window]
        if self._num_chunks == 1:
            rows = self.source.read(0, self._n)
            _check_finite(rows)
        else:
            rows = torch.empty(size, self.source.d_model, dtype=self.source.dtype)
            filled = 0
            for chunk in windows[window].tolist():
                piece = self.source.read(
                    chunk * self.chunk_rows, chunk * self.chunk_rows + self._chunk_size(chunk)
                )
                _check_finite(piece)
                rows[filled : filled + piece.shape[0]] = piece
                filled += piece.shape[0]
        generator = torch.Generator().manual_seed(
            self._epoch_seed(epoch) + window * _WINDOW_SEED_STRIDE
        )
        order = torch.randperm(size, generator=generator)
        self._window = ((epoch, window), rows, order)
        return rows, order

    def _chunk_size(self, chunk: int) -> int:
        return min(self.chunk_rows, self._n - chunk * self.chunk_rows)

    def _epoch_seed(self, epoch: int) -> int:
        return self._seed * 1_000_003 + epoch


def _check_finite(rows: torch.Tensor) -> None:
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("activations have NaN or inf values")
