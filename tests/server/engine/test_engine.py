"""The engine's steering and batching regressions (issue: known bugs of peer tools), on the
demo checkpoint loaded through the real runtime: KV cache vs recompute, ADD 0 vs baseline, rows
independent of their batch, CLAMP reaching the logits, Encode independent of its batch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.hooks import edit_residuals
from maira_sae.server.engine.steering_plan import ChunkSteerer, SteeringPlan
from maira_sae.server.engine.types import (
    EncodeRequest,
    GeneratedToken,
    GenerateRequest,
    GenerationSettings,
    PositionScope,
    ScopedIntervention,
    TopFeaturesRequest,
    Variant,
    VariantFinished,
)
from maira_sae.server.errors import FailedPrecondition, InvalidArgument, OutOfRange
from maira_sae.server.maira2.study import Study
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import load_runtime
from maira_sae.server.service.warmup import synthetic_chest_image
from tests.support.servers import demo_config

FEATURE = 3


@pytest.fixture(scope="module")
def engine(demo_checkpoint) -> Engine:
    return load_runtime(demo_config(demo_checkpoint), Metrics()).engine


@pytest.fixture(scope="module")
def study() -> Study:
    return Study(frontal=synthetic_chest_image(), indication="Shortness of breath.")


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


def test_encode_of_a_study_is_the_same_alone_and_in_a_batch(engine, study):
    image = synthetic_chest_image()
    other = Study(frontal=np.flipud(image).copy(), lateral=image,
                  indication="A much longer indication " * 5)  # fmt: skip
    request = EncodeRequest(study=study, top_k_per_token=0)
    alone = engine.analyse([engine.prepare_analysis(request)])[0]
    batched = engine.analyse(
        [
            engine.prepare_analysis(EncodeRequest(study=other)),
            engine.prepare_analysis(request),
            engine.prepare_analysis(TopFeaturesRequest(study=other)),
        ]
    )[1]
    assert len(alone.tokens) == len(batched.tokens)
    for a, b in zip(alone.tokens, batched.tokens, strict=True):
        assert a.token == b.token
        assert a.feature_ids == b.feature_ids
        assert np.allclose(a.values, b.values, atol=1e-4)


def test_labelled_only_needs_interpretations(engine, study):
    entry = engine.sae("")
    unlabelled = replace(entry, catalogue=FeatureCatalogue.empty())
    bare = Engine(engine.model, engine.processor, [unlabelled])
    with pytest.raises(FailedPrecondition, match="labelled_only needs interpretations"):
        bare.prepare_analysis(TopFeaturesRequest(study=study, labelled_only=True))
    assert bare.prepare_analysis(TopFeaturesRequest(study=study))  # without the flag: served


@pytest.mark.parametrize(
    ("intervention", "error", "words"),
    [
        (Intervention(SteeringMode.ADD, 1.0, feature=10**6), OutOfRange, ".feature 1000000 is out"),
        (
            Intervention(SteeringMode.ADD, 1.0, direction=torch.tensor([1.0, float("nan")] * 32)),
            InvalidArgument,
            "a raw direction must be finite and non-zero",
        ),
        (
            Intervention(SteeringMode.ADD, 1.0, direction=torch.zeros(64)),
            InvalidArgument,
            "a raw direction must be finite and non-zero",
        ),
        (
            Intervention(SteeringMode.ADD, 1.0, direction=torch.zeros(0)),
            InvalidArgument,
            "a raw direction must have length d_model = 64, got shape (0,)",
        ),
    ],
)
def test_interventions_are_checked_once_against_the_sae(engine, study, intervention, error, words):
    variant = Variant((ScopedIntervention(intervention),))
    request = GenerateRequest(study=study, variants=(Variant(), variant))
    with pytest.raises(error) as info:
        engine.check_generate(request)
    assert str(info.value).startswith("variants[1].interventions[0]")
    assert words in str(info.value)


def test_feature_lookup_range_is_the_saes(engine):
    d_sae = engine.sae("").sae.d_sae
    assert engine.feature("", d_sae - 1).description.feature == d_sae - 1
    with pytest.raises(OutOfRange, match=f"feature {d_sae} is out of range: SAE '.*' has features"):
        engine.feature("", d_sae)
