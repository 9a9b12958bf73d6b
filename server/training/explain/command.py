"""What ``maira-sae-server explain`` and ``merge-explanations`` do once their arguments hold
(``maira_sae.server.training.explain_cli`` checks them and documents the commands)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from maira_sae.sae.interpretation_file import write_interpretation_file
from maira_sae.server.training.explain.examples import (
    ExampleSettings,
    ExampleSource,
    collect_activations,
)
from maira_sae.server.training.explain.offline import ContrastivePhraseExplainer, PhraseJudge
from maira_sae.server.training.explain.progress import (
    ProgressFile,
    merge_progress,
    progress_path_for,
)
from maira_sae.server.training.explain.protocols import (
    DetectionJudge,
    Explainer,
    FeatureExamples,
)
from maira_sae.server.training.explain.runner import RunSettings, explain_features


def explain_command(args: argparse.Namespace, llm: Any) -> dict[str, Any] | None:
    """Load the model and SAE, collect the range's activations, run it, write ``args.out``;
    the summary, or None (after saying why on stderr) when the range does not fit the SAE."""
    from maira_sae.sae.formats import load_sae
    from maira_sae.server.maira2.checkpoint import resolve_device
    from maira_sae.server.training.dashboard_cli import FolderStudies
    from maira_sae.server.training.model_loading import load_model

    device = resolve_device(args.device)
    sae = load_sae(args.sae, device=device, layer=args.layer)
    features = args.features or range(sae.d_sae)
    if features.stop > sae.d_sae:
        print(
            f"maira-sae-server explain: --features {features.start}:{features.stop} goes past "
            f"the SAE's {sae.d_sae} features",
            file=sys.stderr,
        )
        return None
    if sae.metadata.layer is None:
        print(
            "maira-sae-server explain: the SAE's files name no layer; pass --layer", file=sys.stderr
        )
        return None
    model, processor = load_model(args, device)
    activations = collect_activations(
        model,
        processor,
        sae,
        sae.metadata.layer,
        FolderStudies(args.studies),
        features,
        batch_size=args.batch,
        progress=True,
    )
    source = ExampleSource(activations, ExampleSettings(seed=args.seed))
    examples_of = _with_films(source, args) if args.with_images else source.for_feature
    progress = ProgressFile(progress_path_for(args.out))
    summary = asyncio.run(_run(args, llm, features, examples_of, progress))
    records = [o.record for o in merge_progress([progress.path]) if o.record is not None]
    write_interpretation_file(args.out, records)
    return {**summary, "output": str(args.out), "progress": str(progress.path)}


def _with_films(
    source: ExampleSource, args: argparse.Namespace
) -> Callable[[int], FeatureExamples]:
    """Each feature's examples, its films with their heat maps attached from the dashboard."""
    from maira_sae.sae.dashboard import Dashboard
    from maira_sae.server.training.explain.films import with_dashboard_films

    dashboard = Dashboard.load(args.dashboard)

    def examples_of(feature: int) -> FeatureExamples:
        return with_dashboard_films(source.for_feature(feature), dashboard, args.with_images)

    return examples_of


def merge_command(progress_files: Sequence[Path], out: Path) -> dict[str, Any]:
    outcomes = merge_progress(progress_files)
    records = [o.record for o in outcomes if o.record is not None]
    write_interpretation_file(out, records)
    return {
        "features": len(outcomes),
        "explained": len(records),
        "failed": len(outcomes) - len(records),
        "output": str(out),
    }


async def _run(
    args: argparse.Namespace,
    llm: Any,
    features: range,
    examples_of: Callable[[int], FeatureExamples],
    progress: ProgressFile,
) -> dict[str, Any]:
    settings = RunSettings(
        features_in_flight=args.concurrency,
        seed=args.seed,
        control_features=args.control_features,
        retry_failed=args.retry_failed,
    )
    caller = None
    if llm is not None:
        from maira_sae.server.training.explain.llm_client import ChatCaller

        caller = ChatCaller(llm)
    try:
        explainer, judge, fuzzer = _roles(args, caller)
        summary = await explain_features(
            features,
            examples_of,
            explainer,
            judge,
            progress,
            fuzzer=fuzzer,
            settings=settings,
        )
    finally:
        if caller is not None:
            await caller.close()
    model = None if llm is None else llm.model
    return {"explainer": args.explainer, "judge": args.judge, "model": model, **summary.to_dict()}


def _roles(args: argparse.Namespace, caller: Any) -> tuple[Explainer, DetectionJudge, Any]:
    """The explainer, the judge and the fuzzing scorer (None without the LLM judge)."""
    if caller is None:
        return ContrastivePhraseExplainer(), PhraseJudge(), None
    from maira_sae.server.training.explain.llm_roles import (
        LlmDetectionJudge,
        LlmExplainer,
        LlmFuzzingScorer,
    )

    explainer = (
        LlmExplainer(caller, with_images=args.with_images, max_tokens=args.llm_explanation_tokens)
        if args.explainer == "llm"
        else ContrastivePhraseExplainer()
    )
    if args.judge != "llm":
        return explainer, PhraseJudge(), None
    fuzzer = None if args.no_fuzzing else LlmFuzzingScorer(caller, seed=args.seed)
    return explainer, LlmDetectionJudge(caller, seed=args.seed), fuzzer
