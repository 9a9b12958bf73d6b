"""``maira-sae-server train-sae`` and ``harvest``: harvest a layer of MAIRA-2 over a study folder
into an activation store, train a Matryoshka BatchTopK SAE on it and write a folder the server
loads.

    maira-sae-server harvest --model microsoft/maira-2 --studies STUDIES --out STORE \\
        --shard I/N [--layer 15 --image-patch-stride 2 --drop-boilerplate --shard-tokens 100000]
    maira-sae-server train-sae --model microsoft/maira-2 --studies STUDIES --out OUT \\
        [--store STORE --layer 15 --k 64 --dict-size 16384 --groups 1024,2048,4096,9216 \\
         --steps 20000 --shuffle-buffer-gb 4 --image-patch-stride 2 --drop-boilerplate --resume]

STUDIES holds one subfolder per study (layout: ``maira_sae.server.training.study_folder``); a
study's findings.txt, when present, is teacher-forced so its report tokens are harvested too.
``harvest --shard I/N`` harvests the I-th of N contiguous runs of the studies (in name order)
into STORE, so N processes or pods fill one store; run again, it keeps the shards it finished.
The store's format: ``maira_sae.sae.activation_store``. train-sae's OUT gets:

    activations/            the store train-sae harvests when not given --store (reused when
                            its settings match, refused when not; a rerun finishes an
                            interrupted harvest)
    checkpoints/            resumable trainer state
    sae/                    ae.pt + config.json (dictionary_learning layout)
    training_report.json    L0, explained variance, dead-feature fraction and the settings
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_sae_command(commands: argparse._SubParsersAction) -> None:
    """Register ``train-sae`` on the ``maira-sae-server`` subcommands."""
    parser = documented_command(
        commands,
        "train-sae",
        "train a Matryoshka BatchTopK SAE on MAIRA-2 activations of a study folder",
        __doc__,
    )
    _add_harvest_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--store", type=Path, help="a complete activation store to train on (default: OUT's)"
    )
    parser.add_argument("--k", type=int, default=64, help="mean active features per token")
    parser.add_argument("--dict-size", type=int, help="features; default 4 x d_model")
    parser.add_argument(
        "--groups", type=_sizes, help="Matryoshka group sizes, comma-separated (sum = dict size)"
    )
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, help="default: 2e-4 / sqrt(dict_size / 2^14)")
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument(
        "--threshold-start-step",
        type=int,
        default=1000,
        help="step from which the inference threshold is learned (must be < --steps)",
    )
    parser.add_argument("--dead-after-tokens", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shuffle-buffer-gb",
        type=float,
        default=4.0,
        help="activations held for shuffling (the trainer's memory for data), in GB",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=1000)


def add_harvest_command(commands: argparse._SubParsersAction) -> None:
    """Register ``harvest`` on the ``maira-sae-server`` subcommands."""
    parser = documented_command(
        commands,
        "harvest",
        "harvest MAIRA-2 activations of (a shard of) a study folder into an activation store",
        __doc__,
    )
    _add_harvest_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="the store folder")
    parser.add_argument(
        "--shard", type=shard_spec, default=(0, 1), help="I/N: harvest part I (from 0) of N"
    )


def documented_command(
    commands: argparse._SubParsersAction, name: str, help_text: str, doc: str | None
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows its module's docstring ``doc`` as written."""
    return commands.add_parser(
        name,
        help=help_text,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_harvest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="MAIRA-2 folder or hub id")
    parser.add_argument("--studies", required=True, type=Path, help="folder of study folders")
    parser.add_argument("--layer", type=int, default=15, help="decoder block whose output is read")
    parser.add_argument("--image-patch-stride", type=int, default=1)
    parser.add_argument("--no-image-tokens", action="store_true", help="drop every image patch")
    parser.add_argument("--drop-boilerplate", action="store_true", help="drop fixed prompt text")
    parser.add_argument("--harvest-batch", type=int, default=2, help="studies per forward")
    parser.add_argument(
        "--shard-tokens", type=int, default=100_000, help="tokens per store shard (whole studies)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float32")


def run_train_sae(args: argparse.Namespace) -> int:
    """Run ``train-sae``; torch and the model code load only now, not for ``--help``."""
    from maira_sae.server.training.folder_training import train_sae_on_study_folder

    return train_sae_on_study_folder(args)


def run_harvest(args: argparse.Namespace) -> int:
    """Run ``harvest``; torch and the model code load only now, not for ``--help``."""
    from maira_sae.server.training.folder_training import harvest_study_folder

    return harvest_study_folder(args)


def shard_spec(text: str) -> tuple[int, int]:
    part, _, count = text.partition("/")
    try:
        index, total = int(part), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not 0 <= index < total:
        raise argparse.ArgumentTypeError(f"--shard {text}: I must be in 0..N-1")
    return index, total


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,128,256, got {text!r}") from None
