"""Decode limits from the settings and the accelerator's free memory (CUDA's memory query is
replaced: this machine has no GPU), and the static cache's size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from maira_sae.server.engine.decode_choices import DecodeSetting
from maira_sae.server.engine.decode_sizing import size_decode
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


def sized(model, path="dynamic", **limits):
    return size_decode(
        BatchLimits(**limits),
        model,  # type: ignore[arg-type]
        setting=DecodeSetting(path),
        max_sequence_tokens=4096,
        rows_per_call=4,
        interventions_per_row=8,
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
