"""Decode limits from the settings and the accelerator's free memory (CUDA's memory query is
replaced: this machine has no GPU), and the static cache's size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from maira_sae.server.engine.decode_choices import DecodeSetting
from maira_sae.server.engine.decode_sizing import RowLimits, size_decode
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.slot_cache import SlotCache

VICUNA = LlamaConfig(
    hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32
)
GIB = 1 << 30


def model_on(device: str) -> SimpleNamespace:
    return SimpleNamespace(
        device=torch.device(device),
        dtype=torch.bfloat16,
        config=SimpleNamespace(text_config=VICUNA),
    )


def row_limits(prompt: int = 4096, new: int = 1024, sequence: int = 4096) -> RowLimits:
    return RowLimits(
        max_prompt_tokens=prompt,
        max_new_tokens=new,
        max_sequence_tokens=sequence,
        rows_per_call=4,
        interventions_per_row=8,
    )


def sized(model, path="dynamic", rows: RowLimits | None = None, **limits):
    return size_decode(
        BatchLimits(**limits),
        model,  # type: ignore[arg-type]
        setting=DecodeSetting(path),
        rows=rows or row_limits(),
        memory_fraction=0.5,
    )


def test_one_vicuna_position_costs_half_a_mebibyte_in_bf16():
    assert SlotCache.bytes_per_position(VICUNA, torch.bfloat16) == 512 * 1024


def test_off_cuda_the_settings_stand():
    sizing = sized(model_on("cpu"), max_kv_positions=1_000_000)
    assert sizing.limits == BatchLimits(max_kv_positions=1_000_000)
    assert sizing.memory_bound_positions is None and sizing.static is None


def test_on_cuda_free_memory_bounds_the_kv_positions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (64 * GIB, 141 * GIB))
    sizing = sized(model_on("cuda"), max_kv_positions=1_000_000)
    # half of 64 GiB at 512 KiB a position
    assert sizing.memory_bound_positions == 65_536
    assert sizing.limits.max_kv_positions == 65_536
    roomy = sized(model_on("cuda"), max_kv_positions=10_000)
    assert roomy.limits.max_kv_positions == 10_000  # the setting is lower: it stands


def test_the_static_cache_takes_as_many_longest_rows_as_fit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (64 * GIB, 141 * GIB))
    sizing = sized(model_on("cuda"), path="static", max_rows=32, max_kv_positions=1_000_000)
    assert sizing.static is not None
    assert (sizing.static.slots, sizing.static.width) == (16, 4096)  # 65,536 / 4096
    assert (sizing.limits.max_rows, sizing.limits.max_kv_positions) == (16, 65_536)
    with pytest.raises(ValueError, match=r"cannot hold one call: .* make 3 rows of 4096"):
        sized(model_on("cpu"), path="static", max_kv_positions=3 * 4096)


def test_a_static_slot_is_as_wide_as_the_longest_generation_row(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (64 * GIB, 141 * GIB))
    rows = row_limits(prompt=2048, new=256, sequence=4096)
    sizing = sized(model_on("cuda"), path="static", rows=rows, max_rows=8)
    assert sizing.static is not None
    assert (sizing.static.slots, sizing.static.width) == (8, 2304)  # not 8 x 4096
    assert sizing.limits.max_kv_positions == 8 * 2304
    assert sizing.warning is None


def test_off_cuda_a_large_static_cache_is_refused_saying_why():
    # 8 rows x 4096 positions x 512 KiB: 16 GiB
    with pytest.raises(ValueError, match=r"16,384 MiB.*CUDA graphs.*'dynamic'.*under 512 MiB"):
        sized(model_on("cpu"), path="static", max_rows=8)


def test_off_cuda_a_small_static_cache_starts_with_a_warning():
    rows = row_limits(prompt=200, new=56)  # 4 rows x 256 positions x 512 KiB: 512 MiB
    sizing = sized(model_on("cpu"), path="static", rows=rows, max_rows=4)
    assert sizing.static is not None and sizing.static.width == 256
    assert sizing.warning is not None
    assert "held while the server is idle" in sizing.warning and "'dynamic'" in sizing.warning
