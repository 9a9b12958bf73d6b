"""Harvest part I of N of a study folder into an activation store
(``maira_sae.sae.activation_store``): the work behind ``maira-sae-server harvest`` and the
harvest step of ``train-sae``.

Part I harvests the studies ``item_range(I, N, S)`` of the S study subfolders in name order, so
N processes or pods fill one store without talking to each other, and the store's rows are in
the order one process harvesting everything would write them. A study's row columns are its
index in the whole folder, the token's position, its kind (index into ``KIND_CODES``) and id.
A rerun of a part keeps the shards it finished (digest-checked) and harvests from the next study.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maira_sae.sae.activation_store import StoreManifest, StoreWriter, open_store
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.training.harvest import HarvestFilter, iter_harvest, token_columns
from maira_sae.server.training.study_folder import read_study, study_folders

TOKEN_COLUMNS = ("study_index", "position", "kinds", "token_ids")


@dataclass(frozen=True)
class HarvestPlan:
    """What a store holds: which model, layer and tokens of which studies, split how."""

    model: str
    studies: Path
    layer: int
    token_filter: HarvestFilter
    part: int = 0
    num_parts: int = 1
    shard_tokens: int = 100_000
    batch_size: int = 2

    def settings(self, study_names: list[str]) -> dict[str, Any]:
        """The store's settings: parts must agree on them. The studies are named by a digest of
        their folder names, not by a path that differs between machines."""
        names = "\n".join(study_names).encode("utf-8")
        return {
            "model": self.model,
            "layer": self.layer,
            "harvest_filter": filter_settings(self.token_filter),
            "studies": {
                "count": len(study_names),
                "names_sha256": hashlib.sha256(names).hexdigest(),
            },
        }


def harvest_into_store(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    plan: HarvestPlan,
    store: Path,
) -> StoreManifest:
    """Harvest ``plan``'s part into ``store`` (skipping the shards a previous run finished);
    returns the part's manifest."""
    writer = open_part(plan, store, d_model=model.hidden_size, dtype=_model_dtype(model))
    if writer.complete:
        print(f"{store}: part {plan.part}/{plan.num_parts} is complete", file=sys.stderr)
        return writer.finish()
    folders = study_folders(plan.studies)
    if writer.skipped_shards:
        print(
            f"{store}: kept {writer.skipped_shards} completed shard(s) of part "
            f"{plan.part}/{plan.num_parts}; going on from study {writer.resume_item}",
            file=sys.stderr,
        )
    todo = range(writer.resume_item, writer.manifest.end_item)
    pairs = ((study.study, study.findings) for study in (read_study(folders[i]) for i in todo))
    harvested = iter_harvest(
        model,
        processor,
        pairs,
        plan.layer,
        token_filter=plan.token_filter,
        batch_size=plan.batch_size,
    )
    for index, study in zip(todo, harvested, strict=True):
        writer.add_item(study.activations, token_columns(index, study.tokens))
        print(f"harvested study {index + 1} of {todo.stop} (part {plan.part})", file=sys.stderr)
    return writer.finish()


def store_is_current(plan: HarvestPlan, store: Path) -> bool:
    """Whether ``store`` is complete and holds ``plan``'s harvest (so it needs no model)."""
    try:
        manifest = open_store(store)
    except (ValueError, OSError):
        return False
    names = [folder.name for folder in study_folders(plan.studies)]
    return manifest.settings == plan.settings(names)


def open_part(plan: HarvestPlan, store: Path, *, d_model: int, dtype: Any) -> StoreWriter:
    names = [folder.name for folder in study_folders(plan.studies)]
    return StoreWriter(
        store,
        part=plan.part,
        num_parts=plan.num_parts,
        num_items=len(names),
        settings=plan.settings(names),
        d_model=d_model,
        dtype=dtype,
        columns=TOKEN_COLUMNS,
        shard_rows=plan.shard_tokens,
    )


def token_filter_of(
    *, no_image_tokens: bool, image_patch_stride: int, drop_boilerplate: bool
) -> HarvestFilter:
    base = HarvestFilter()
    kinds = base.kinds - {TokenKind.IMAGE_PATCH} if no_image_tokens else base.kinds
    return HarvestFilter(
        kinds=kinds, image_patch_stride=image_patch_stride, drop_boilerplate=drop_boilerplate
    )


def filter_settings(token_filter: HarvestFilter) -> dict[str, Any]:
    return {
        "kinds": sorted(kind.value for kind in token_filter.kinds),
        "image_patch_stride": token_filter.image_patch_stride,
        "drop_boilerplate": token_filter.drop_boilerplate,
    }


def _model_dtype(model: Maira2ForConditionalGeneration) -> Any:
    return next(model.parameters()).dtype
