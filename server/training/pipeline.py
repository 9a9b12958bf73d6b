"""The research pipeline's commands, run on this machine as the Kubernetes jobs run them in pods
(``deploy/k8s/components/research-jobs``): N harvest shards into one store, then training.

    python -m maira_sae.server.training.pipeline --local --shards 3 --parallel 2 \\
        --model MODEL --studies STUDIES --work WORK [--harvest-option=--drop-boilerplate ...] \\
        [-- train-sae options such as --steps 20000 --k 64]

WORK gets ``store/`` (the activation store) and ``sae-run/`` (train-sae's OUT). Each shard is a
``maira-sae-server harvest --shard I/N`` process, the command an Indexed Job's pod I runs, at
most ``--parallel`` at a time; a shard that fails stops the run with its exit status. Run again
after a failure or a kill: finished shards are kept (digest-checked), the rest harvested. The
dashboards and the explainer run after training, as their own commands (see deploy/README.md).
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
    if args.shards < 1 or args.parallel < 1:
        raise SystemExit("--shards and --parallel must be >= 1")
    if not args.local:
        raise SystemExit("only --local runs here; on a cluster apply deploy/k8s (see its README)")
    harvest = [harvest_command(args, shard) for shard in range(args.shards)]
    status = run_shards(harvest, args.parallel)
    if status or args.harvest_only:
        return status
    return subprocess.call(train_command(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maira_sae.server.training.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--local", action="store_true", help="run the steps as local processes")
    parser.add_argument("--shards", type=int, default=1, help="harvest shards (N)")
    parser.add_argument("--parallel", type=int, default=1, help="shards at once")
    parser.add_argument("--model", required=True)
    parser.add_argument("--studies", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--harvest-only", action="store_true", help="stop after the harvest")
    parser.add_argument(
        "--harvest-option",
        dest="harvest_options",
        action="append",
        default=[],
        help="an option for harvest and train-sae alike, e.g. --harvest-option=--drop-boilerplate",
    )
    parser.add_argument("train_options", nargs="*", help="after --: options for train-sae")
    return parser


if __name__ == "__main__":
    sys.exit(main())
