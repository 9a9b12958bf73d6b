"""The research pipeline's commands, run on this machine as the Kubernetes Jobs run them in pods
(``deploy/k8s/components/research-jobs``): harvest shards into one store, training, dashboard
shards and their merge, explain ranges and their merge.

    python -m maira_sae.server.training.pipeline --local --model MODEL --studies STUDIES \\
        --work WORK [--shards 3] [--dashboard-shards 2] [--explain-shards 2] [--parallel 2] \\
        [--until harvest|train|dashboards|explain] [--harvest-option=--drop-boilerplate ...] \\
        [--dashboard-option=--thumbnails ...] [--explain-option=--explainer=llm ...] \\
        [-- train-sae options such as --steps 20000 --k 64]

In order, each step a set of ``maira-sae-server`` processes, the commands the Jobs' pods run:

1. ``harvest --shard I/N`` for I < ``--shards`` into ``WORK/store``;
2. ``train-sae --store WORK/store --out WORK/sae-run`` (the SAE in ``WORK/sae-run/sae``);
3. ``build-dashboard --shard I/M --out WORK/dashboard-parts/part-I`` for I < ``--dashboard-shards``,
   then ``merge-dashboards`` into ``WORK/sae-run/sae/dashboard`` (where the server finds it);
4. ``explain --features A:B --out WORK/explanations/features-A.csv`` for each of
   ``--explain-shards`` ranges of the features, then ``merge-explanations`` of their progress
   files into ``WORK/sae-run/sae/interpretations.csv``.

At most ``--parallel`` shards run at a time; a shard that fails stops the run with its exit
status. Run again after a failure or a kill: finished harvest shards are kept (digest-checked),
finished dashboard shards and explained features are not redone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SERVER_CLI = (sys.executable, "-m", "maira_sae.server.cli")
STORE = "store"
TRAINING_RUN = "sae-run"
DASHBOARD_PARTS = "dashboard-parts"
EXPLANATIONS = "explanations"
INTERPRETATIONS_FILE = "interpretations.csv"
STEPS = ("harvest", "train", "dashboards", "explain")


def sae_folder(work: Path) -> Path:
    """Where train-sae writes the SAE, and the later steps read it."""
    return work / TRAINING_RUN / "sae"


def harvest_command(args: argparse.Namespace, shard: int) -> list[str]:
    """``maira-sae-server harvest`` of shard ``shard`` of ``args.shards``."""
    return [
        *SERVER_CLI,
        "harvest",
        *("--model", args.model, "--studies", str(args.studies)),
        *("--out", str(args.work / STORE), "--shard", f"{shard}/{args.shards}"),
        *args.harvest_options,
    ]


def train_command(args: argparse.Namespace) -> list[str]:
    """``maira-sae-server train-sae`` on the finished store."""
    return [
        *SERVER_CLI,
        "train-sae",
        *("--model", args.model, "--studies", str(args.studies)),
        *("--store", str(args.work / STORE), "--out", str(args.work / TRAINING_RUN)),
        *args.harvest_options,
        *args.train_options,
    ]


def dashboard_part(work: Path, shard: int) -> Path:
    return work / DASHBOARD_PARTS / f"part-{shard}"


def dashboard_command(args: argparse.Namespace, shard: int) -> list[str]:
    """``maira-sae-server build-dashboard`` of shard ``shard`` of ``args.dashboard_shards``."""
    return [
        *SERVER_CLI,
        "build-dashboard",
        *("--model", args.model, "--sae", str(sae_folder(args.work))),
        *("--studies", str(args.studies), "--out", str(dashboard_part(args.work, shard))),
        *("--shard", f"{shard}/{args.dashboard_shards}"),
        *args.dashboard_options,
    ]


def merge_dashboards_command(args: argparse.Namespace) -> list[str]:
    parts = [str(dashboard_part(args.work, shard)) for shard in range(args.dashboard_shards)]
    out = sae_folder(args.work) / "dashboard"
    return [*SERVER_CLI, "merge-dashboards", *parts, "--out", str(out)]


def explanations_file(work: Path, features: range) -> Path:
    return work / EXPLANATIONS / f"features-{features.start}.csv"


def explain_command(args: argparse.Namespace, features: range) -> list[str]:
    """``maira-sae-server explain`` of the features ``features`` (``--features A:B``, B not
    included)."""
    return [
        *SERVER_CLI,
        "explain",
        *("--model", args.model, "--sae", str(sae_folder(args.work))),
        *("--studies", str(args.studies), "--out", str(explanations_file(args.work, features))),
        *("--features", f"{features.start}:{features.stop}"),
        *args.explain_options,
    ]


def merge_explanations_command(args: argparse.Namespace, ranges: Sequence[range]) -> list[str]:
    from maira_sae.server.training.explain.progress import progress_path_for

    progress = [str(progress_path_for(explanations_file(args.work, r))) for r in ranges]
    out = sae_folder(args.work) / INTERPRETATIONS_FILE
    return [*SERVER_CLI, "merge-explanations", "--out", str(out), *progress]


def feature_ranges(num_features: int, shards: int) -> list[range]:
    """``shards`` contiguous, disjoint ranges that cover the features (none empty)."""
    from maira_sae.sae.activation_store import item_range

    ranges = (item_range(shard, shards, num_features) for shard in range(shards))
    return [features for features in ranges if features]


def run_shards(commands: Sequence[list[str]], parallel: int) -> int:
    """Run ``commands`` as processes, at most ``parallel`` at once; the first non-zero exit
    status (the others still finish), else 0."""
    running: list[subprocess.Popen[bytes]] = []
    failed = 0
    for command in commands:
        if len(running) == parallel:
            failed = failed or running.pop(0).wait()
        running.append(subprocess.Popen(command))
    for process in running:
        failed = failed or process.wait()
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    counts = (args.shards, args.dashboard_shards, args.explain_shards, args.parallel)
    if min(counts) < 1:
        raise SystemExit(
            "--shards, --dashboard-shards, --explain-shards and --parallel must be >= 1"
        )
    if not args.local:
        raise SystemExit("only --local runs here; on a cluster apply deploy/k8s (see its README)")
    last = STEPS.index(args.until)
    status = run_shards([harvest_command(args, s) for s in range(args.shards)], args.parallel)
    if status or last == STEPS.index("harvest"):
        return status
    status = subprocess.call(train_command(args))
    if status or last == STEPS.index("train"):
        return status
    dashboards = [dashboard_command(args, s) for s in range(args.dashboard_shards)]
    status = run_shards(dashboards, args.parallel) or subprocess.call(
        merge_dashboards_command(args)
    )
    if status or last == STEPS.index("dashboards"):
        return status
    from maira_sae.sae.formats import load_sae

    ranges = feature_ranges(load_sae(sae_folder(args.work)).d_sae, args.explain_shards)
    explains = [explain_command(args, features) for features in ranges]
    return run_shards(explains, args.parallel) or subprocess.call(
        merge_explanations_command(args, ranges)
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maira_sae.server.training.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--local", action="store_true", help="run the steps as local processes")
    parser.add_argument("--shards", type=int, default=1, help="harvest shards (N)")
    parser.add_argument("--dashboard-shards", type=int, default=1, help="dashboard shards (M)")
    parser.add_argument("--explain-shards", type=int, default=1, help="explain feature ranges")
    parser.add_argument("--parallel", type=int, default=1, help="shards at once")
    parser.add_argument("--model", required=True)
    parser.add_argument("--studies", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--until", choices=STEPS, default=STEPS[-1], help="the last step run")
    for step, example, whose in (
        ("harvest", "--drop-boilerplate", "harvest and train-sae alike"),
        ("dashboard", "--thumbnails", "build-dashboard's"),
        ("explain", "--explainer=llm", "explain's"),
    ):
        parser.add_argument(
            f"--{step}-option",
            dest=f"{step}_options",
            action="append",
            default=[],
            help=f"an option ({whose}), e.g. --{step}-option={example}",
        )
    parser.add_argument("train_options", nargs="*", help="after --: options for train-sae")
    return parser


if __name__ == "__main__":
    sys.exit(main())
