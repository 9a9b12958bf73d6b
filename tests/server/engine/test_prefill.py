"""Chunked prefill (demo checkpoint, float32): a prompt run in chunks of a few tokens generates
exactly what it generates in one forward, steered on the prompt or on the generated tokens,
and the chunks share the vision tower and the blocks below the steering layer. How the engine
interleaves chunks with decode steps is in test_engine_core.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.types import (
    GeneratedToken,
    GenerateRequest,
    GenerationEvent,
    GenerationSettings,
    PositionScope,
    ScopedIntervention,
    Variant,
    VariantFinished,
)
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import load_runtime
from tests.support.servers import demo_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDY = Study(frontal=synthetic_chest_image(), indication="Shortness of breath.")
LAYER = 8


def steered_at_block_8(demo_checkpoint) -> Engine:
    """The demo SAE read and steered at block 8: at its own layer 15, the last block, an edit
    of a prompt position reaches nothing but that position's logits, so only the last prompt
    position would show whether a chunk's steering landed where it should."""
    served = load_runtime(demo_config(demo_checkpoint), Metrics()).engine
    entry = replace(served.sae(""), layer=LAYER)
    return Engine(served.model, served.processor, [entry])


@pytest.fixture(scope="module")
def engine(demo_checkpoint) -> Engine:
    return steered_at_block_8(demo_checkpoint)


def steer(scope: PositionScope) -> Variant:
    intervention = Intervention(SteeringMode.ADD, 30.0, feature=3)
    return Variant((ScopedIntervention(intervention, scope),))


BASELINE = (Variant(),)


def prepared(engine: Engine, variants=BASELINE, tokens: int = 6):
    request = GenerateRequest(
        study=STUDY, variants=tuple(variants), settings=GenerationSettings(max_new_tokens=tokens)
    )
    return engine.prepare_generation(request)


def generate(engine: Engine, variants, chunk: int | None) -> tuple[dict, int]:
    """Tokens and texts per variant, prefilled ``chunk`` tokens at a time (None: in one go),
    and the number of chunks."""
    events: list[GenerationEvent] = []
    runner = engine.generations
    batch = runner.new_batch()
    call = runner.start(0, prepared(engine, variants))
    chunks = 1
    while not runner.prefill_chunk(batch, call, chunk or call.prefill_remaining):
        chunks += 1
    while not call.done:
        for step in runner.decode(batch):
            events += [*step.tokens, *step.finished]
    texts = {e.variant_index: e.text for e in events if isinstance(e, VariantFinished)}
    tokens: dict[int, list[int]] = {index: [] for index in texts}
    for event in events:
        if isinstance(event, GeneratedToken):
            tokens[event.variant_index].append(event.token_id)
    return {index: (tokens[index], text) for index, text in texts.items()}, chunks


@pytest.mark.parametrize(
    "variants",
    [
        pytest.param((Variant(), steer(PositionScope.IMAGE), steer(PositionScope.GENERATED)),
                     id="branched at the steering layer"),
        pytest.param((Variant(), steer(PositionScope.GENERATED)), id="shared whole"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("chunk", [7, 64])
def test_a_prompt_prefilled_in_chunks_generates_what_one_forward_does(engine, variants, chunk):
    whole, one = generate(engine, variants, None)
    chunked, chunks = generate(engine, variants, chunk)
    assert one == 1
    assert chunks == math.ceil(len(prepared(engine).inputs.tokens) / chunk)
    assert chunked == whole
    assert all(whole[index][0] != whole[0][0] for index in range(1, len(variants))), (
        "every steered variant must differ from the baseline, or the test proves nothing"
    )


def test_chunks_run_the_vision_tower_once_and_share_the_blocks_below_the_steering_layer(engine):
    seen: dict[object, set[int]] = {"vision": set(), LAYER - 1: set(), LAYER: set()}

    def record(key):
        def hook(_module, _args, output):
            hidden = output.last_hidden_state if key == "vision" else output
            seen[key].add(hidden.shape[0])
            if key == "vision":
                calls.append(1)

        return hook

    calls: list[int] = []
    model = engine.model
    handles = [model.model.vision_tower.register_forward_hook(record("vision"))]
    blocks = (LAYER - 1, LAYER)
    handles += [model.decoder_layers[b].register_forward_hook(record(b)) for b in blocks]
    steered = prepared(engine, (Variant(), steer(PositionScope.PROMPT)))
    try:
        runner = engine.generations
        batch = runner.new_batch()
        call = runner.start(0, steered)
        while not runner.prefill_chunk(batch, call, 300):
            pass
    finally:
        for handle in handles:
            handle.remove()
    assert (len(calls), seen) == (1, {"vision": {1}, LAYER - 1: {1}, LAYER: {2}})  # fmt: skip
