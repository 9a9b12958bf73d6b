"""The graph-ready decode path (demo checkpoint, float32): preallocated slots, fixed-shape
per-row steering. It generates exactly what today's dynamic path generates, through joins
mid-flight, rows ending, stops and both column shifts; and a compiled step still applies each
call's edit (a hook that stopped firing under capture would leave the baseline's tokens)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.static_decode_batch import StaticDecodeBatch
from maira_sae.server.engine.types import (
    PositionScope,
    ScopedIntervention,
    TokenRange,
    Variant,
)
from maira_sae.server.service.config import BatchingConfig, LimitsConfig
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import StartupError, load_runtime
from tests.server.engine.test_dynamic_decode_batch import (
    LONG,
    SHORT,
    add,
    alone,
    joined_mid_flight,
    one_call_stopped,
    request,
)
from tests.support.servers import demo_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOTS = 6
NEW_TOKENS = 8
SOME_PROMPT_AND_ALL_GENERATED = (TokenRange(0, 40), TokenRange(300, 10_000))


@pytest.fixture(scope="module")
def dynamic(demo_engine) -> Engine:
    return demo_engine


@pytest.fixture(scope="module")
def width(dynamic) -> int:
    """Room for the long prompt and its tokens, and no more: the column reaches the end."""
    prompt = dynamic.prepare_generation(request(LONG, [Variant()], 1)).inputs.input_ids
    return int(prompt.shape[0]) + NEW_TOKENS


def static_engine(demo_checkpoint, width: int, compile_mode: str = "off") -> Engine:
    config = demo_config(
        demo_checkpoint,
        limits=LimitsConfig(max_sequence_tokens=width, max_variants=SLOTS),
        batching=BatchingConfig(
            decode_path="static", decode_compile=compile_mode, max_kv_positions=SLOTS * width
        ),
    )
    return load_runtime(config, Metrics()).engine


@pytest.fixture(scope="module")
def static(demo_checkpoint, width) -> Engine:
    return static_engine(demo_checkpoint, width)


def clamp(feature: int, value: float, scope=PositionScope.ALL, ranges=()) -> ScopedIntervention:
    return ScopedIntervention(
        Intervention(SteeringMode.CLAMP, value, feature=feature), scope=scope, ranges=ranges
    )


def direction(value: float) -> ScopedIntervention:
    generator = torch.Generator().manual_seed(3)
    vector = torch.randn(64, generator=generator)
    return ScopedIntervention(Intervention(SteeringMode.ADD, value, direction=vector))


def test_static_batch_has_fixed_slots_and_the_limits_say_so(static, demo_checkpoint, width):
    batch = static.generations.new_batch()
    assert isinstance(batch, StaticDecodeBatch) and batch.slots == SLOTS
    runtime = load_runtime(
        demo_config(
            demo_checkpoint,
            limits=LimitsConfig(max_sequence_tokens=width, max_variants=SLOTS),
            batching=BatchingConfig(decode_path="static", max_kv_positions=SLOTS * width + 7),
        ),
        Metrics(),
    )
    assert (runtime.decode_limits.max_rows, runtime.decode_limits.max_kv_positions) == (
        SLOTS,
        SLOTS * width,
    )


def test_a_static_cache_that_cannot_hold_one_call_refuses_to_start(demo_checkpoint, width):
    config = demo_config(
        demo_checkpoint,
        limits=LimitsConfig(max_sequence_tokens=width),
        batching=BatchingConfig(decode_path="static", max_kv_positions=SLOTS * width),
    )  # 6 slots, and a call may have 8 variants
    with pytest.raises(StartupError, match="cannot hold one call"):
        load_runtime(config, Metrics())


def test_off_cuda_the_default_static_cache_is_refused_and_a_small_one_warned(
    demo_checkpoint, width, caplog
):
    default = demo_config(demo_checkpoint, batching=BatchingConfig(decode_path="static"))
    with pytest.raises(StartupError, match=r"32 rows x 6144 positions \([\d,]+ MiB\).*'dynamic'"):
        load_runtime(default, Metrics())
    small = demo_config(
        demo_checkpoint,
        limits=LimitsConfig(max_sequence_tokens=width, max_variants=SLOTS),
        batching=BatchingConfig(decode_path="static", max_kv_positions=SLOTS * width),
    )
    with caplog.at_level(logging.WARNING, logger="maira_sae.server.service.runtime"):
        load_runtime(small, Metrics()).engine.close()
    (line,) = [
        json.loads(r.getMessage()) for r in caplog.records if "static_decode" in r.getMessage()
    ]
    assert line["event"] == "static_decode_off_cuda" and "CUDA graphs" in line["warning"]


def test_the_static_path_generates_what_the_dynamic_path_generates(static, dynamic):
    """A short call runs; a long one joins (the rows shift right to its length), rows end at
    different steps (their slots are refilled by the last rows), the long call ends and the
    short one runs on until the column hits the cache's end (the rows shift left)."""
    short = request(
        SHORT,
        [Variant(), add(30.0), Variant((clamp(5, 40.0, PositionScope.GENERATED),))],
        3 * NEW_TOKENS,
    )
    long = request(
        LONG,
        [
            Variant((clamp(9, 0.0, PositionScope.RANGES, ranges=SOME_PROMPT_AND_ALL_GENERATED),)),
            Variant((direction(25.0),)),
        ],
        NEW_TOKENS,
        temperature=0.7,
        seed=11,
    )
    first, second, rows = joined_mid_flight(static, short, long, after_steps=2)
    assert rows == 5
    for recorder, generate in ((first, short), (second, long)):
        reference = alone(dynamic, generate)
        for variant in range(len(generate.variants)):
            assert recorder.tokens(variant) == reference.tokens(variant), variant
        assert recorder.finished() == reference.finished()
    assert len(first.tokens(0)) == 3 * NEW_TOKENS  # ran past the end of the columns


def test_a_stopped_call_frees_its_slots_and_the_others_go_on_unchanged(static, dynamic):
    steady = request(SHORT, [add(25.0), Variant()], 6)
    victim = request(SHORT, [Variant()], 50)  # in slot 0: the steady rows move into it
    kept, _, rows = one_call_stopped(static, steady, victim, victim_first=True)
    assert rows == 2
    reference = alone(dynamic, steady)
    assert [kept.tokens(v) for v in range(2)] == [reference.tokens(v) for v in range(2)]


def test_a_compiled_step_still_applies_each_calls_edit(demo_checkpoint, width, dynamic):
    """The step is traced once (torch.compile, the aot_eager backend on the CPU); later calls
    with other interventions and strengths must still be steered by the captured step."""
    compiled = static_engine(demo_checkpoint, width, compile_mode="aot_eager")
    torch._dynamo.utils.counters.clear()
    baseline = alone(dynamic, request(SHORT, [Variant()], NEW_TOKENS)).tokens(0)
    for variant in (add(30.0), Variant((clamp(5, 40.0),)), add(-30.0, feature=9)):
        generate = request(SHORT, [variant], NEW_TOKENS)
        eager = alone(dynamic, generate).tokens(0)
        assert eager != baseline  # the edit matters, so a silent no-op would show
        assert alone(compiled, generate).tokens(0) == eager
    assert alone(compiled, request(SHORT, [Variant()], NEW_TOKENS)).tokens(0) == baseline
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did capture
