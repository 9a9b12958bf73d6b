"""Regenerate the world demo artifact, bit for bit on the same torch build:

world -> trained model -> layer-15 activations -> SAE -> interpretations -> artifact.

    python -m maira_sae.server.demo.world.build [--output server/demo/world/artifact]

Every step is seeded and single-threaded (``train_model.deterministic``). It takes about 55
minutes on one laptop CPU core (training the 32-block model is most of it); the measured scores
are printed and recorded in provenance.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from maira_sae.sae.interpretation import (
    concept_aurocs,
    label_features,
    study_scores,
    write_interpretations,
)
from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.sae.training import (
    MatryoshkaTrainingConfig,
    default_group_sizes,
    train_matryoshka_sae,
)
from maira_sae.server.demo.world.dashboard import write_world_dashboard
from maira_sae.server.demo.world.materialise import ARTIFACT_DIR, LM_NAME, write_artifact
from maira_sae.server.demo.world.model_spec import SAE_LAYER, TEXT_LAYERS
from maira_sae.server.demo.world.reports import CONCEPTS
from maira_sae.server.demo.world.studies import WorldStudy, world_dataset
from maira_sae.server.demo.world.train_model import (
    TrainingSettings,
    deterministic,
    make_processor,
    train,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.training.harvest import HarvestedTokens, HarvestFilter, harvest_activations

# A feature is labelled with its best concept only when it detects it well; the rest stay
# unlabelled rather than carry a near-chance label.
MIN_LABEL_AUROC = 0.8


@dataclass(frozen=True)
class SaeSettings:
    """The SAE and the studies it is trained and interpreted on (held out from the model's)."""

    studies: int = 400
    data_seed: int = 2000
    expansion: int = 4
    k: int = 16
    steps: int = 3000
    batch_size: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class BuildSettings:
    training: TrainingSettings = field(default_factory=TrainingSettings)
    sae: SaeSettings = field(default_factory=SaeSettings)


def build(settings: BuildSettings, output: Path, work_dir: Path) -> dict[str, Any]:
    """Run every step and write the artifact into ``output``; returns the provenance."""
    started = time.perf_counter()
    processor = make_processor(work_dir / "snapshot-files")
    trained = train(settings.training, processor)
    studies = world_dataset(settings.sae.studies, settings.sae.data_seed)
    with deterministic(settings.sae.seed, settings.training.threads):
        tokens = harvest_world(trained.model, processor, studies)
        sae = _train_sae(tokens, trained.model.hidden_size, settings.sae)
        labels = label_features(
            concept_aurocs(
                study_scores(sae.encode(tokens.activations), tokens.study_index, len(studies)),
                {concept: [concept in s.concepts for s in studies] for concept in CONCEPTS},
            ),
            min_auroc=MIN_LABEL_AUROC,
        )
    provenance = {
        "settings": dataclasses.asdict(settings),
        "text_layers": TEXT_LAYERS,
        "model_concept_f1": trained.scores.micro_f1 if trained.scores else None,
        "model_concept_f1_per_concept": (
            {concept: trained.scores.f1(concept) for concept in CONCEPTS}
            if trained.scores
            else None
        ),
        "final_training_loss": sum(trained.losses[-25:]) / len(trained.losses[-25:]),
        "labelled_features": len(labels),
        "best_auroc_per_concept": {
            concept: max((label.auroc for label in labels if label.concept == concept), default=0)
            for concept in CONCEPTS
        },
    }
    write_artifact(
        output,
        trained.model,
        sae,
        lambda path: write_interpretations(path, labels, created=date.today().isoformat()),
        provenance,
    )
    write_world_dashboard(output)
    print(f"artifact written to {output} in {time.perf_counter() - started:.0f} s")
    return provenance


def harvest_world(
    model: Maira2ForConditionalGeneration, processor: Maira2Processor, studies: list[WorldStudy]
) -> HarvestedTokens:
    """Layer-15 activations of every image patch, the study's own prompt words and the
    teacher-forced findings (the fixed prompt boilerplate is left out, as in the paper)."""
    return harvest_activations(
        model,
        processor,
        [study.to_study() for study in studies],
        SAE_LAYER,
        reports=[study.findings for study in studies],
        token_filter=HarvestFilter(drop_boilerplate=True),
        batch_size=8,
    )


def _train_sae(tokens: HarvestedTokens, d_model: int, settings: SaeSettings) -> MatryoshkaSAE:
    config = MatryoshkaTrainingConfig(
        d_model=d_model,
        group_sizes=default_group_sizes(settings.expansion * d_model),
        k=settings.k,
        steps=settings.steps,
        batch_size=settings.batch_size,
        warmup_steps=settings.steps // 20,
        decay_start=settings.steps * 4 // 5,
        dead_after_tokens=settings.batch_size * 200,
        threshold_start_step=settings.steps // 5,
        seed=settings.seed,
        eval_tokens=20_000,
        layer=SAE_LAYER,
        lm_name=LM_NAME,
    )
    sae, report = train_matryoshka_sae(tokens.activations, config, progress=False)
    print(f"SAE: {report.to_dict()['evaluation']}")
    return sae


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ARTIFACT_DIR)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work_dir:
        build(BuildSettings(), args.output, Path(work_dir))


if __name__ == "__main__":
    main()
