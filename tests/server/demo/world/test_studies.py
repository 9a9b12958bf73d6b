"""The synthetic world: deterministic, its concepts visible in pixels and named in the text."""

from __future__ import annotations

import numpy as np
import pytest

from maira_sae.server.demo.world.reports import CONCEPTS, concepts_in_text
from maira_sae.server.demo.world.studies import generate_study, world_dataset


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def test_same_seed_same_study_other_seed_other_study():
    first, again, other = generate_study(7), generate_study(7), generate_study(8)
    for name in ("frontal", "lateral", "prior"):
        assert _same(getattr(first, name), getattr(again, name)), name
    assert (first.findings, first.prior_findings, first.concepts) == (
        again.findings,
        again.prior_findings,
        again.concepts,
    )
    assert not np.array_equal(first.frontal, other.frontal)
    assert first.frontal.dtype == np.uint8 and first.frontal.ndim == 2


def test_dataset_prefix_is_the_smaller_dataset_and_seeds_are_independent():
    small, large = world_dataset(3, seed=5), world_dataset(5, seed=5)
    assert all(np.array_equal(a.frontal, b.frontal) for a, b in zip(small, large, strict=False))
    assert not np.array_equal(world_dataset(1, seed=6)[0].frontal, small[0].frontal)


@pytest.mark.slow
def test_the_text_names_exactly_the_concepts_of_the_study_and_its_prior():
    studies = world_dataset(80, seed=11)
    for study in studies:
        assert concepts_in_text(study.findings) == study.concepts, study.findings
        if study.prior_findings is not None:
            assert concepts_in_text(study.prior_findings) == study.prior_concepts
    # The world has all kinds of studies: every concept present and absent, priors, laterals.
    for concept in CONCEPTS:
        assert 0.15 < np.mean([concept in s.concepts for s in studies]) < 0.45, concept
    assert any(s.prior is not None for s in studies) and any(s.lateral is not None for s in studies)


def _first_with_prior(now: set[str], in_prior: str, wanted: bool):
    """The first seed's study with ``now`` as concepts whose prior has (or lacks) ``in_prior``."""
    for seed in range(200):
        study = generate_study(seed, concepts=now, with_prior=True)
        if (in_prior in study.prior_concepts) == wanted:
            return study
    raise AssertionError("no such study in 200 seeds")


def test_change_against_the_prior_is_worded():
    kept = _first_with_prior({"pacemaker"}, "pacemaker", wanted=True)
    assert "unchanged" in kept.findings.lower()
    gone = _first_with_prior(set(), "pleural_effusion", wanted=True)
    assert "resolved" in gone.findings
    assert "pleural_effusion" not in concepts_in_text(gone.findings)
    new = _first_with_prior({"cardiomegaly"}, "cardiomegaly", wanted=False)
    assert "new" in new.findings.lower().split()
    assert generate_study(1, with_prior=False).prior_findings is None


@pytest.mark.parametrize("concept", CONCEPTS)
def test_each_concept_is_drawn_where_its_box_says(concept):
    with_it = generate_study(21, concepts={concept}, with_prior=False)
    without = generate_study(21, concepts=(), with_prior=False)
    left, top, right, bottom = with_it.boxes[concept]
    region = (slice(top, bottom), slice(left, right))
    difference = with_it.frontal[region].astype(int) - without.frontal[region].astype(int)
    assert difference.mean() > 15, difference.mean()  # brighter where the finding is drawn
    assert concept not in without.boxes


def test_a_pacemaker_is_the_brightest_object_on_the_film():
    study = generate_study(4, concepts={"pacemaker", "line_or_tube"})
    left, top, right, bottom = study.boxes["pacemaker"]
    device = study.frontal[top:bottom, left:right]
    assert np.percentile(device, 50) > 230
    assert np.percentile(generate_study(4, concepts=()).frontal, 99.5) < 200


def test_the_parser_reads_negations_and_change_words():
    assert concepts_in_text("No pleural effusion. The heart size is normal.") == set()
    assert concepts_in_text("The left pleural effusion has resolved. New cardiomegaly.") == {
        "cardiomegaly"
    }
    assert concepts_in_text("The endotracheal tube has been removed. No pacemaker.") == set()
    assert concepts_in_text("No lines or tubes.") == set()
    assert concepts_in_text("A new cardiac pacemaker projects over the left chest.") == {
        "pacemaker"
    }


def test_unknown_concepts_are_refused():
    with pytest.raises(ValueError, match="unknown concepts"):
        generate_study(0, concepts={"pneumothorax"})
