"""A KV cache preallocated for a fixed number of slots, in transformers' static-cache layout.

Every layer holds ``[slots, kv_heads, width, head_dim]`` keys and values from the start and
is only ever written in place, so its address never changes: what CUDA graphs and
torch.compile's "reduce-overhead" mode need. A decode forward of ``b`` rows uses the first
``b`` slots. All rows write the same column at each step (transformers' ``StaticLayer`` keeps
that column as a tensor and advances it inside the forward); a row shorter than the others
is left-padded, and the attention mask hides its padding. The layers are transformers' own
``StaticLayer`` with one change: the batch of a forward may be smaller than the buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, StaticLayer


class SlotLayer(StaticLayer):
    """A ``StaticLayer`` whose buffers hold every slot; a forward of ``b`` rows reads and
    writes the first ``b``."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, length = key_states.shape[0], key_states.shape[-2]
        columns = torch.arange(length, device=self.device) + self.cumulative_length
        self.cumulative_length.add_(length)
        # Written as transformers' StaticLayer writes, on the whole buffer (compilers turn
        # that back into an in-place write; a write through a view may copy the buffer):
        # the slots past this forward's rows are free, and their column is written anew
        # before they are used.
        self.keys.index_copy_(2, columns, _pad_rows(key_states, self.keys.shape[0]))
        self.values.index_copy_(2, columns, _pad_rows(value_states, self.values.shape[0]))
        return self.keys[:rows], self.values[:rows]


class SlotCache(Cache):
    """``slots`` rows of up to ``width`` positions, for every decoder layer."""

    def __init__(
        self,
        text_config: PreTrainedConfig,
        *,
        slots: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        heads, head_dim = _kv_heads(text_config)
        layers = [SlotLayer(max_cache_len=width) for _ in range(text_config.num_hidden_layers)]
        shape = (slots, heads, 0, head_dim)
        for layer in layers:
            layer.lazy_initialization(
                torch.empty(shape, dtype=dtype, device=device),
                torch.empty(shape, dtype=dtype, device=device),
            )
        super().__init__(layers=layers)
        self.slots = slots
        self.width = width

    @staticmethod
    def bytes_per_position(text_config: PreTrainedConfig, dtype: torch.dtype) -> int:
        """Bytes one row's keys and values take per position, over all layers."""
        heads, head_dim = _kv_heads(text_config)
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * text_config.num_hidden_layers * heads * head_dim * element

    def set_column(self, column: int) -> None:
        """The column the next forward writes (in place: the tensor's address stays)."""
        for layer in self.layers:
            layer.cumulative_length.fill_(column)

    def place(self, slots: Sequence[int], source: Cache, start: int) -> None:
        """Copy the rows of ``source`` (a prefill's cache) into ``slots`` at columns
        ``start..start + length``."""
        index = torch.tensor(list(slots), dtype=torch.long, device=self.layers[0].keys.device)
        for ours, theirs in zip(self.layers, source.layers, strict=True):
            length = theirs.keys.shape[2]
            ours.keys[index, :, start : start + length] = theirs.keys
            ours.values[index, :, start : start + length] = theirs.values

    def move(self, source: int, target: int, columns: slice) -> None:
        """Copy one slot's ``columns`` into another slot."""
        for layer in self.layers:
            layer.keys[target, :, columns] = layer.keys[source, :, columns]
            layer.values[target, :, columns] = layer.values[source, :, columns]

    def shift(self, rows: int, columns: slice, by: int) -> None:
        """Move ``columns`` of the first ``rows`` slots ``by`` columns (right if positive)."""
        assert columns.start is not None and columns.stop is not None
        to = slice(columns.start + by, columns.stop + by)
        for layer in self.layers:
            layer.keys[:rows, :, to] = layer.keys[:rows, :, columns].clone()
            layer.values[:rows, :, to] = layer.values[:rows, :, columns].clone()


def _kv_heads(text_config: PreTrainedConfig) -> tuple[int, int]:
    """(key/value heads, head dimension) of a decoder config."""
    heads = text_config.num_key_value_heads or text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or (
        text_config.hidden_size // text_config.num_attention_heads
    )
    return heads, head_dim


def _pad_rows(states: torch.Tensor, rows: int) -> torch.Tensor:
    missing = rows - states.shape[0]
    if not missing:
        return states
    return torch.cat([states, states.new_zeros(missing, *states.shape[1:])])
