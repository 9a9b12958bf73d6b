"""How much generation runs at once: the batching settings, bounded by the device's memory.

On CUDA the KV positions that may be cached at once are also bounded by the memory left free
once the model is loaded: ``memory_fraction`` of it, divided by what one position of one row
costs over all layers (keys and values). Work beyond the bound waits in the queue. The static
decode path allocates its cache up front, sized by the limits: a slot is as wide as the
longest row a call may have (the largest prompt and the most new tokens, within the sequence
limit), and there are as many slots as decode rows, within the bound.

Off CUDA the static path buys nothing (its fixed shapes are for CUDA graphs) and costs twice:
the cache is held while idle, and every step attends over a slot's whole width, however short
the rows. There it is refused when its cache would exceed ``STATIC_OFF_CUDA_MAX_BYTES`` (a
size for trying the path, not for serving), and otherwise started with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from maira_sae.server.engine.decode_choices import DecodeSetting
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.slot_cache import SlotCache
from maira_sae.server.engine.static_decode_batch import StaticDecodeSettings
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration

STATIC_OFF_CUDA_MAX_BYTES = 512 << 20
MIB = 1 << 20


@dataclass(frozen=True)
class RowLimits:
    """What bounds one generation row: the request limits (``limits.*``), resolved."""

    max_prompt_tokens: int
    max_new_tokens: int
    max_sequence_tokens: int
    rows_per_call: int  # limits.max_variants
    interventions_per_row: int  # limits.max_interventions_per_variant

    @property
    def positions(self) -> int:
        """The longest a generation row can grow: its prompt and every new token."""
        return min(self.max_sequence_tokens, self.max_prompt_tokens + self.max_new_tokens)


@dataclass(frozen=True)
class DecodeSizing:
    """The limits the scheduler runs with, and the static batch's size when that path is on."""

    limits: BatchLimits
    static: StaticDecodeSettings | None
    memory_bound_positions: int | None  # what free accelerator memory holds; None off CUDA
    warning: str | None = None  # what the operator should know about this sizing


def size_decode(
    requested: BatchLimits,
    model: Maira2ForConditionalGeneration,
    *,
    setting: DecodeSetting,
    rows: RowLimits,
    memory_fraction: float,
) -> DecodeSizing:
    """The effective limits; ``ValueError`` when the static cache cannot hold one call of
    ``rows.rows_per_call`` rows (its variants), or is too large off CUDA."""
    bound = _memory_bound(model, memory_fraction)
    limits = requested
    if bound is not None and bound < limits.max_kv_positions:
        limits = replace(limits, max_kv_positions=bound)
    if not setting.static:
        return DecodeSizing(limits, None, bound)
    width = rows.positions
    slots = min(limits.max_rows, limits.max_kv_positions // width)
    if slots < rows.rows_per_call:
        raise ValueError(
            f"the static decode cache cannot hold one call: {limits.max_kv_positions} KV "
            f"positions (batching.max_kv_positions, or what the free memory holds) make "
            f"{slots} rows of {width} (limits.max_prompt_tokens + max_new_tokens, within "
            f"max_sequence_tokens), and a call may have {rows.rows_per_call} "
            "(limits.max_variants); lower those or raise batching.max_decode_rows / "
            "max_kv_positions"
        )
    limits = replace(limits, max_rows=slots, max_kv_positions=slots * width)
    static = StaticDecodeSettings(
        slots=slots,
        width=width,
        capacity=rows.interventions_per_row,
        compile_mode=setting.compile_mode,
    )
    warning = None
    if model.device.type != "cuda":
        warning = _off_cuda(model, static)
    return DecodeSizing(limits, static, bound, warning)


def _off_cuda(model: Maira2ForConditionalGeneration, static: StaticDecodeSettings) -> str:
    """The warning for a static cache off CUDA; ``ValueError`` when it is too large."""
    per_position = SlotCache.bytes_per_position(model.config.text_config, model.dtype)
    cache_bytes = static.slots * static.width * per_position
    why = (
        f"batching.decode_path = 'static' on {model.device.type}: its KV cache of "
        f"{static.slots} rows x {static.width} positions ({cache_bytes / MIB:,.0f} MiB) is "
        f"held while the server is idle, and every decode step attends over all "
        f"{static.width} positions however short the rows (about 5x slower per step than "
        "'dynamic' at the default limits); its fixed shapes pay off only with CUDA graphs"
    )
    if cache_bytes > STATIC_OFF_CUDA_MAX_BYTES:
        raise ValueError(
            f"{why}. Use decode_path = 'dynamic' here, or, to try the static path, size its "
            f"cache under {STATIC_OFF_CUDA_MAX_BYTES // MIB} MiB with batching.max_decode_rows,"
            " limits.max_prompt_tokens and limits.max_new_tokens"
        )
    return f"{why}; use decode_path = 'dynamic' to serve"


def _memory_bound(model: Maira2ForConditionalGeneration, fraction: float) -> int | None:
    device = model.device
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    per_position = SlotCache.bytes_per_position(model.config.text_config, model.dtype)
    return int(free * fraction) // per_position
