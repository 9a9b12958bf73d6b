"""The work behind ``maira-sae-server train-sae`` (``maira_sae.server.training.cli``): load
MAIRA-2, harvest a study folder, train the SAE, write it with its report."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from maira_sae.sae.formats import write_dictionary_learning
from maira_sae.sae.training import (
    MatryoshkaTrainingConfig,
    default_group_sizes,
    train_matryoshka_sae,
)
from maira_sae.server.maira2.checkpoint import load_maira2, resolve_device, resolve_dtype
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.training.harvest import HarvestedTokens, HarvestFilter, harvest_activations
from maira_sae.server.training.study_folder import read_study_folder

ACTIVATIONS_FILE = "activations.pt"
REPORT_FILE = "training_report.json"


def train_sae_on_study_folder(args: argparse.Namespace) -> int:
    """``train-sae`` with its parsed arguments; writes OUT as the command's help describes."""
    if args.threshold_start_step >= args.steps:
        raise SystemExit(
            f"--threshold-start-step {args.threshold_start_step} is not below --steps "
            f"{args.steps}: the inference threshold would never be learned"
        )
    device = resolve_device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    token_filter = _token_filter(args)
    model, processor = load_model_and_processor(args.model, device=device, dtype=args.dtype)
    harvest = _harvest_cached(args, model, processor, token_filter, out / ACTIVATIONS_FILE)
    print(f"{len(harvest)} activations from {harvest.num_studies} studies", file=sys.stderr)
    del model  # the SAE trains on the activations alone
    d_model = harvest.activations.shape[1]
    group_sizes = args.groups or default_group_sizes(args.dict_size or 4 * d_model)
    if args.dict_size and sum(group_sizes) != args.dict_size:
        raise SystemExit(f"--groups sum to {sum(group_sizes)}, not --dict-size {args.dict_size}")
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
        device=str(device),
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=args.checkpoint_every,
        layer=args.layer,
        lm_name=args.model,
        submodule_name=f"model.language_model.layers.{args.layer}",
    )
    sae, report = train_matryoshka_sae(harvest.activations, config, resume=args.resume)
    settings = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.learning_rate,
        "seed": config.seed,
        "harvest_filter": _filter_settings(token_filter),
    }
    write_dictionary_learning(sae, out / "sae", extra_trainer_config=settings)
    summary = {"report": report.to_dict(), "settings": settings, "num_studies": harvest.num_studies}
    (out / REPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    evaluation = report.evaluation
    print(
        f"SAE written to {out / 'sae'}: L0 {evaluation.l0:.1f} (k {config.k}), explained "
        f"variance {evaluation.explained_variance:.3f}, dead {evaluation.dead_fraction:.1%} "
        f"over {evaluation.tokens} tokens"
    )
    return 0


def load_model_and_processor(
    path_or_hub_id: str, *, device: torch.device, dtype: str = "auto"
) -> tuple[Maira2ForConditionalGeneration, Maira2Processor]:
    """MAIRA-2 in eval mode and its processor, as the server loads them."""
    loaded = load_maira2(path_or_hub_id, device=device, dtype=resolve_dtype(dtype))
    return loaded.model, Maira2Processor.for_model(loaded.snapshot_dir, loaded.config)


def _harvest_cached(
    args: argparse.Namespace,
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    token_filter: HarvestFilter,
    path: Path,
) -> HarvestedTokens:
    """The harvest of OUT when ``--resume`` finds one made with the same settings, else a new
    one (saved before training starts, so an interrupted run does not harvest again)."""
    settings = {
        "model": args.model,
        "studies": str(args.studies.resolve()),
        "layer": args.layer,
        "filter": _filter_settings(token_filter),
    }
    if args.resume and path.exists():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("settings") == settings:
            return HarvestedTokens(**cached["tokens"])
        print(f"{path}: made with other settings; harvesting again", file=sys.stderr)
    studies = read_study_folder(args.studies)
    harvest = harvest_activations(
        model,
        processor,
        [item.study for item in studies],
        args.layer,
        reports=[item.findings for item in studies],
        token_filter=token_filter,
        batch_size=args.harvest_batch,
        progress=True,
    )
    torch.save({"settings": settings, "tokens": asdict(harvest)}, path)
    return harvest


def _token_filter(args: argparse.Namespace) -> HarvestFilter:
    base = HarvestFilter()
    kinds = base.kinds - {TokenKind.IMAGE_PATCH} if args.no_image_tokens else base.kinds
    return HarvestFilter(
        kinds=kinds,
        image_patch_stride=args.image_patch_stride,
        drop_boilerplate=args.drop_boilerplate,
    )


def _filter_settings(token_filter: HarvestFilter) -> dict[str, Any]:
    return {
        "kinds": sorted(kind.value for kind in token_filter.kinds),
        "image_patch_stride": token_filter.image_patch_stride,
        "drop_boilerplate": token_filter.drop_boilerplate,
    }
