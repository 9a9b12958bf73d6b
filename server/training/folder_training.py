"""The work behind ``maira-sae-server train-sae`` and ``harvest``
(``maira_sae.server.training.cli``): load MAIRA-2, harvest a study folder into an activation
store, train the SAE from the store, write it with its report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from maira_sae.sae.activation_store import StoreReader
from maira_sae.sae.formats import write_dictionary_learning
from maira_sae.sae.training import (
    MatryoshkaTrainingConfig,
    default_group_sizes,
    train_matryoshka_sae,
)
from maira_sae.server.maira2.checkpoint import load_maira2, resolve_device, resolve_dtype
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.training.store_harvest import (
    HarvestPlan,
    harvest_into_store,
    store_is_current,
    token_filter_of,
)

STORE_FOLDER = "activations"
REPORT_FILE = "training_report.json"


def harvest_study_folder(args: argparse.Namespace) -> int:
    """``harvest`` with its parsed arguments: part ``--shard`` of the studies into ``--out``."""
    part, num_parts = args.shard
    plan = _harvest_plan(args, part=part, num_parts=num_parts)
    model, processor = load_model_and_processor(
        args.model, device=resolve_device(args.device), dtype=args.dtype
    )
    manifest = harvest_into_store(model, processor, plan, args.out)
    print(
        f"part {part}/{num_parts}: {manifest.rows} tokens of studies "
        f"{manifest.first_item}..{manifest.end_item - 1} in {len(manifest.shards)} shard(s)"
    )
    return 0


def train_sae_on_study_folder(args: argparse.Namespace) -> int:
    """``train-sae`` with its parsed arguments (``cli.train_sae_argument_problem`` has checked
    them); writes OUT as the command's help describes."""
    device = resolve_device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = args.store or out / STORE_FOLDER
    if args.store is None and not store_is_current(_harvest_plan(args), store):
        model, processor = load_model_and_processor(args.model, device=device, dtype=args.dtype)
        try:
            harvest_into_store(model, processor, _harvest_plan(args), store)
        except ValueError as error:  # a store of other settings: never overwritten silently
            raise SystemExit(f"{error} (or remove {store} to harvest again)") from None
        del model  # the SAE trains on the activations alone
    activations = StoreReader(store)
    num_studies = activations.manifest.num_items
    print(f"{len(activations)} activations from {num_studies} studies", file=sys.stderr)
    d_model = activations.d_model
    group_sizes = args.groups or default_group_sizes(args.dict_size or 4 * d_model)
    config = MatryoshkaTrainingConfig(
        d_model=d_model,
        group_sizes=group_sizes,
        k=args.k,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        threshold_start_step=args.threshold_start_step,
        dead_after_tokens=args.dead_after_tokens,
        seed=args.seed,
        shuffle_buffer_gb=args.shuffle_buffer_gb,
        device=str(device),
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=args.checkpoint_every,
        layer=args.layer,
        lm_name=args.model,
        submodule_name=f"model.language_model.layers.{args.layer}",
    )
    sae, report = train_matryoshka_sae(activations, config, resume=args.resume)
    settings = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.learning_rate,
        "seed": config.seed,
        "shuffle_buffer_gb": config.shuffle_buffer_gb,
        "store": str(store),
        "harvest_filter": activations.manifest.settings.get("harvest_filter"),
    }
    write_dictionary_learning(sae, out / "sae", extra_trainer_config=settings)
    summary = {"report": report.to_dict(), "settings": settings, "num_studies": num_studies}
    (out / REPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    evaluation = report.evaluation
    print(
        f"SAE written to {out / 'sae'}: L0 {evaluation.l0:.1f} (k {config.k}), explained "
        f"variance {evaluation.explained_variance:.3f}, dead {evaluation.dead_fraction:.1%} "
        f"under the threshold over {evaluation.tokens} tokens ({report.train_dead_fraction:.1%} "
        f"unselected by batch top-k in the last {report.train_dead_window_tokens} training "
        "tokens)"
    )
    return 0


def load_model_and_processor(
    path_or_hub_id: str, *, device: torch.device, dtype: str = "auto"
) -> tuple[Maira2ForConditionalGeneration, Maira2Processor]:
    """MAIRA-2 in eval mode and its processor, as the server loads them."""
    loaded = load_maira2(path_or_hub_id, device=device, dtype=resolve_dtype(dtype))
    return loaded.model, Maira2Processor.for_model(loaded.snapshot_dir, loaded.config)


def _harvest_plan(args: argparse.Namespace, *, part: int = 0, num_parts: int = 1) -> HarvestPlan:
    return HarvestPlan(
        model=args.model,
        studies=args.studies,
        layer=args.layer,
        token_filter=token_filter_of(
            no_image_tokens=args.no_image_tokens,
            image_patch_stride=args.image_patch_stride,
            drop_boilerplate=args.drop_boilerplate,
        ),
        part=part,
        num_parts=num_parts,
        shard_tokens=args.shard_tokens,
        batch_size=args.harvest_batch,
    )
