"""The engine's steering and batching regressions (issue: known bugs of peer tools), through
its offline ``generate`` on the demo checkpoint loaded through the real runtime: KV cache vs
recompute, ADD 0 vs baseline, rows independent of their batch, the shared prefill, CLAMP
reaching the logits."""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.hooks import edit_residuals
from maira_sae.server.engine.steering_plan import ChunkSteerer, SteeringPlan
from maira_sae.server.engine.types import (
    GeneratedToken,
    GenerateRequest,
    GenerationSettings,
    PositionScope,
    ScopedIntervention,
    Variant,
    VariantFinished,
)
from maira_sae.server.maira2.study import Study

FEATURE = 3


@pytest.fixture(scope="module")
def engine(demo_engine) -> Engine:
    return demo_engine


def steer(mode: SteeringMode, value: float, scope: PositionScope = PositionScope.ALL) -> Variant:
    intervention = Intervention(mode, value, feature=FEATURE)
    return Variant((ScopedIntervention(intervention, scope),))


def run(engine: Engine, study: Study, variants, **settings) -> dict[int, list]:
    """Token ids and final results per variant."""
    request = GenerateRequest(
        study=study,
        settings=GenerationSettings(**{"max_new_tokens": 5, **settings}),
        variants=tuple(variants),
    )
    events: list = []
    engine.generate(engine.prepare_generation(request), events.append, lambda: False)
    tokens = {i: [e.token_id for e in events if isinstance(e, GeneratedToken) and
                  e.variant_index == i] for i in range(len(variants))}  # fmt: skip
    finished = {e.variant_index: e for e in events if isinstance(e, VariantFinished)}
    return {i: [tokens[i], finished[i]] for i in range(len(variants))}


def test_steered_generation_with_kv_cache_equals_recompute_without_cache(engine, study):
    variant = steer(SteeringMode.ADD, 25.0)
    cached_tokens, finished = run(engine, study, [variant])[0]
    assert finished.num_tokens == len(cached_tokens) == 5

    inputs = engine.prepare_generation(GenerateRequest(study=study)).inputs
    plan = SteeringPlan([variant], inputs.tokens)
    steerer = ChunkSteerer(plan, engine.sae("").sae)
    model = engine.model
    ids = inputs.input_ids.tolist()
    recomputed = []
    with torch.inference_mode(), edit_residuals(model.decoder_layers, {15: steerer}):
        for _ in range(5):
            steerer.set_chunk(0)  # the whole sequence every time: no cache
            logits = model(
                input_ids=torch.tensor([ids]),
                pixel_values=inputs.pixel_values,
                use_cache=False,
                logits_to_keep=1,
            ).logits
            next_id = int(logits[0, -1].argmax())
            recomputed.append(next_id)
            ids.append(next_id)
    assert recomputed == cached_tokens


def test_add_with_strength_zero_is_exactly_the_baseline(engine, study):
    results = run(engine, study, [Variant(), steer(SteeringMode.ADD, 0.0)])
    assert results[0][0] == results[1][0]
    assert results[0][1].text == results[1][1].text


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_rows_in_one_batch_equal_the_same_rows_run_alone(engine, study, temperature):
    variants = [Variant(), steer(SteeringMode.ADD, 30.0), steer(SteeringMode.CLAMP, 20.0)]
    together = run(engine, study, variants, temperature=temperature, seed=11)
    for index, variant in enumerate(variants):
        alone = run(engine, study, [variant], temperature=temperature, seed=11)[0]
        assert together[index][0] == alone[0], f"variant {index} depends on its batch"
    if temperature == 0.0:
        assert together[0][0] != together[1][0], "a strong ADD must change the greedy tokens"


@pytest.mark.parametrize("scope", [PositionScope.GENERATED, PositionScope.PROMPT])
def test_shared_prefill_rows_equal_the_same_rows_run_alone(engine, study, scope):
    """GENERATED: the whole prefill is shared; PROMPT: shared below the steering layer."""
    variants = [
        Variant(),
        steer(SteeringMode.ADD, 30.0, scope),
        steer(SteeringMode.CLAMP, 0, scope),
    ]
    together = run(engine, study, variants)
    for index, variant in enumerate(variants):
        assert together[index][0] == run(engine, study, [variant])[0][0], f"variant {index}"
    assert together[0][0] != together[1][0], "the steered row must differ from the baseline"


@pytest.mark.parametrize(
    ("scope", "rows_per_block"),
    [(PositionScope.GENERATED, {0: 1, 15: 1}), (PositionScope.ALL, {0: 1, 14: 1, 15: 3})],
)
def test_the_prompt_runs_once_per_call_up_to_where_the_variants_differ(
    engine, study, scope, rows_per_block
):
    """Prefill rows seen by the vision tower and by decoder blocks, for a call of 3 variants."""
    seen: dict[object, int] = {}

    def record(key):
        def hook(_module, args, output):
            hidden = args[0] if key == "vision" else output
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            if hidden.shape[1] > 1:  # the prefill (decode steps have one position)
                seen[key] = hidden.shape[0]

        return hook

    model = engine.model
    handles = [model.model.vision_tower.register_forward_hook(record("vision"))]
    handles += [  # rows of each block's output
        model.decoder_layers[block].register_forward_hook(record(block)) for block in rows_per_block
    ]
    try:
        run(engine, study, [Variant(), steer(SteeringMode.ADD, 30.0, scope), Variant()])
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"vision": 1, **rows_per_block}


def test_a_clamp_reaches_the_next_token_logits(engine, study):
    inputs = engine.prepare_generation(GenerateRequest(study=study)).inputs
    model, sae = engine.model, engine.sae("").sae

    def next_logits(variant: Variant | None) -> torch.Tensor:
        edits = {}
        if variant is not None:
            edits = {15: ChunkSteerer(SteeringPlan([variant], inputs.tokens), sae)}
        with torch.inference_mode(), edit_residuals(model.decoder_layers, edits):
            return model(
                input_ids=inputs.input_ids[None],
                pixel_values=inputs.pixel_values,
                logits_to_keep=1,
            ).logits[0, -1]

    baseline = next_logits(None)
    clamped = next_logits(steer(SteeringMode.CLAMP, 30.0))
    assert (clamped - baseline).abs().max() > 1e-2
    only_generated = next_logits(steer(SteeringMode.CLAMP, 30.0, PositionScope.GENERATED))
    assert torch.equal(only_generated, baseline), "a generated-only scope must spare the prompt"
