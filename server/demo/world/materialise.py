"""The world demo as a small committed artifact, and its materialisation into a full snapshot.

``server/demo/world/artifact/`` holds only what training produced: the model's weights (float16,
MAIRA-2 tensor names, two shards and an index), the SAE folder (dictionary_learning layout),
the interpretation table and ``provenance.json`` (settings, measured scores, torch version,
file digests). Everything else of a MAIRA-2 snapshot (config, tokenizer, chat template,
processor configs) is a pure function of the code and is written when the demo is
materialised, so the repository carries no second copy of it.

``python -m maira_sae.server.demo.world.build`` regenerates the artifact; ``ensure_world_demo``
materialises it into a cache folder with the layout of ``server/demo_checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from maira_sae.sae.formats import write_dictionary_learning
from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER, build_once
from maira_sae.server.demo.snapshot import write_snapshot_files, write_weights
from maira_sae.server.demo.world.model_spec import PREPROCESSING, world_config_dict
from maira_sae.server.maira2.checkpoint import INDEX_FILE
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifact"  # the real folder, not a link
PROVENANCE_FILE = "provenance.json"
LM_NAME = "maira-sae synthetic world demo (trained, not clinical)"


def write_artifact(
    folder: Path,
    model: Maira2ForConditionalGeneration,
    sae: MatryoshkaSAE,
    write_interpretations: Callable[[Path], object],
    provenance: dict[str, Any],
) -> None:
    """Write the artifact files into ``folder`` (replacing what is there); same inputs, same
    bytes. ``write_interpretations`` writes the interpretation table to the path it is given."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / MODEL_FOLDER).mkdir(parents=True)
    write_weights(model, folder / MODEL_FOLDER, dtype=torch.float16)
    write_dictionary_learning(sae, folder / SAE_FOLDER, lm_name=LM_NAME)
    write_interpretations(folder / INTERPRETATIONS_FILE)
    _write_provenance(folder, {**provenance, "torch": torch.__version__})


def record_digests(folder: Path) -> None:
    """Refresh provenance.json's file digests after files were added (the dashboard)."""
    provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    _write_provenance(folder, provenance)


def _write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    record = {**provenance, "files": _digests(folder)}
    (folder / PROVENANCE_FILE).write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def artifact_digest(folder: Path = ARTIFACT_DIR) -> str:
    """One digest of every artifact file, to tell a stale materialisation from a current one."""
    digests = json.dumps(_digests(folder), sort_keys=True).encode()
    return hashlib.sha256(digests).hexdigest()


def ensure_world_demo(folder: Path, *, artifact: Path = ARTIFACT_DIR) -> Path:
    """Materialise the world demo into ``folder`` unless the current artifact is already there:
    ``MODEL_FOLDER`` (a complete MAIRA-2 snapshot), ``SAE_FOLDER`` and ``INTERPRETATIONS_FILE``.

    Built in a staging folder and renamed into place, so concurrent or interrupted starts never
    see half a build; a folder built from another artifact (or the random demo) is replaced.
    """
    if not (artifact / PROVENANCE_FILE).is_file():
        raise FileNotFoundError(
            f"{artifact}: no world demo artifact; run python -m maira_sae.server.demo.world.build"
        )

    def write(staging: Path) -> None:
        write_snapshot_files(staging / MODEL_FOLDER, world_config_dict(), PREPROCESSING)
        for weights in _weight_files(artifact / MODEL_FOLDER):
            shutil.copyfile(weights, staging / MODEL_FOLDER / weights.name)
        shutil.copytree(artifact / SAE_FOLDER, staging / SAE_FOLDER)
        shutil.copyfile(artifact / INTERPRETATIONS_FILE, staging / INTERPRETATIONS_FILE)

    return build_once(folder, artifact_digest(artifact), write)


def _weight_files(model_folder: Path) -> list[Path]:
    return [model_folder / INDEX_FILE, *sorted(model_folder.glob("model-*.safetensors"))]


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != PROVENANCE_FILE
    }
