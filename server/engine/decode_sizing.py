"""How much generation runs at once: the batching settings, bounded by the device's memory.

On CUDA the KV positions that may be cached at once are also bounded by the memory left free
once the model is loaded: ``memory_fraction`` of it, divided by what one position of one row
costs over all layers (keys and values). Work beyond the bound waits in the queue. The static
decode path allocates its cache up front: as many slots as the bound holds rows of the
longest sequence a call may have.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from maira_sae.server.engine.decode_choices import DecodeSetting
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.slot_cache import SlotCache
from maira_sae.server.engine.static_decode_batch import StaticDecodeSettings
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration


@dataclass(frozen=True)
class DecodeSizing:
    """The limits the scheduler runs with, and the static batch's size when that path is on."""

    limits: BatchLimits
    static: StaticDecodeSettings | None
    memory_bound_positions: int | None  # what free accelerator memory holds; None off CUDA


def size_decode(
    requested: BatchLimits,
    model: Maira2ForConditionalGeneration,
    *,
    setting: DecodeSetting,
    max_sequence_tokens: int,
    rows_per_call: int,
    interventions_per_row: int,
    memory_fraction: float,
) -> DecodeSizing:
    """The effective limits; ``ValueError`` when the static cache cannot hold one call of
    ``rows_per_call`` rows (its variants)."""
    bound = _memory_bound(model, memory_fraction)
    limits = requested
    if bound is not None and bound < limits.max_kv_positions:
        limits = replace(limits, max_kv_positions=bound)
    if not setting.static:
        return DecodeSizing(limits, None, bound)
    slots = min(limits.max_rows, limits.max_kv_positions // max_sequence_tokens)
    if slots < rows_per_call:
        raise ValueError(
            f"the static decode cache cannot hold one call: {limits.max_kv_positions} KV "
            f"positions (batching.max_kv_positions, or what the free memory holds) make "
            f"{slots} rows of {max_sequence_tokens} (limits.max_sequence_tokens), and a call "
            f"may have {rows_per_call} (limits.max_variants); lower those or raise "
            "batching.max_decode_rows / max_kv_positions"
        )
    limits = replace(limits, max_rows=slots, max_kv_positions=slots * max_sequence_tokens)
    static = StaticDecodeSettings(
        slots=slots,
        width=max_sequence_tokens,
        capacity=interventions_per_row,
        compile_mode=setting.compile_mode,
    )
    return DecodeSizing(limits, static, bound)


def _memory_bound(model: Maira2ForConditionalGeneration, fraction: float) -> int | None:
    device = model.device
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    per_position = SlotCache.bytes_per_position(model.config.text_config, model.dtype)
    return int(free * fraction) // per_position
