"""The synthetic world's shipped feature dashboards: built over its held-out studies (the seed
measure.py holds out), films included (they are cartoons, not patients), from the artifact as
it is served, into the SAE folder's ``dashboard/`` where the server finds it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from maira_sae.sae.dashboard import DEFAULT_FOLDER
from maira_sae.sae.formats import load_sae
from maira_sae.server.demo.layout import MODEL_FOLDER, SAE_FOLDER
from maira_sae.server.demo.world.materialise import ensure_world_demo, record_digests
from maira_sae.server.demo.world.model_spec import SAE_LAYER
from maira_sae.server.demo.world.studies import world_dataset
from maira_sae.server.training.dashboards import (
    DashboardSettings,
    DashboardStudy,
    build_dashboard,
)
from maira_sae.server.training.folder_training import load_model_and_processor

DASHBOARD_STUDIES = 100
DASHBOARD_SEED = 3000  # measure.HELD_OUT_SEED: studies the model and SAE never saw
SETTINGS = DashboardSettings(with_content=True, thumbnail_side=96, save_every=1000)


def study_id(index: int) -> str:
    return f"held-out-{index:03d}"


def write_world_dashboard(artifact: Path) -> Path:
    """Build the dashboard of the artifact's SAE into ``artifact/SAE_FOLDER/dashboard`` and
    record its digests in provenance.json."""
    out = artifact / SAE_FOLDER / DEFAULT_FOLDER
    with tempfile.TemporaryDirectory() as work:
        demo = ensure_world_demo(Path(work) / "demo", artifact=artifact)
        model, processor = load_model_and_processor(
            str(demo / MODEL_FOLDER), device=torch.device("cpu")
        )
        sae = load_sae(demo / SAE_FOLDER)
    studies = [
        DashboardStudy(study_id(i), study.to_study(), study.findings)
        for i, study in enumerate(world_dataset(DASHBOARD_STUDIES, DASHBOARD_SEED))
    ]
    build_dashboard(model, processor, sae, SAE_LAYER, studies, out, SETTINGS, progress=False)
    record_digests(artifact)
    return out
