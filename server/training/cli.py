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
    training_report.json    L0, explained variance, the dead-feature fractions (of training's
                            batch top-k, and of the threshold as served: each defined
                            beside it) and the settings
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default where it has one (not for
    flags, nor where the help says what an unset option means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False
        if unset or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_train_sae_command(commands: argparse._SubParsersAction) -> None:
    """Register ``train-sae`` on the ``maira-sae-server`` subcommands."""
    parser = commands.add_parser(
        "train-sae",
        help="train a Matryoshka BatchTopK SAE on MAIRA-2 activations of a study folder",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    _add_harvest_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--store", type=Path, help="a complete activation store to train on (default: OUT's)"
    )
    parser.add_argument("--k", type=_positive, default=64, help="mean active features per token")
    parser.add_argument("--dict-size", type=_positive, help="features (default: 4 x d_model)")
    parser.add_argument(
        "--groups",
        type=_sizes,
        help="Matryoshka group sizes, comma-separated, summing to the dict size (default: 1/16,"
        " 1/8, 1/4 and the remaining 9/16 of it)",
    )
    parser.add_argument("--steps", type=_positive, default=20_000, help="optimiser steps")
    parser.add_argument("--batch-size", type=_positive, default=4096, help="tokens per step")
    parser.add_argument(
        "--lr", type=_positive_float, help="learning rate (default: 2e-4 / sqrt(dict_size / 2^14))"
    )
    parser.add_argument(
        "--warmup-steps", type=_non_negative, default=1000, help="linear learning-rate warm-up"
    )
    parser.add_argument(
        "--threshold-start-step",
        type=_non_negative,
        default=1000,
        help="step from which the inference threshold is learned (must be < --steps)",
    )
    parser.add_argument(
        "--dead-after-tokens",
        type=_positive,
        default=10_000_000,
        help="tokens without firing after which a feature counts as dead (the auxiliary loss "
        "revives those; training_report.json's train_dead_fraction)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling")
    parser.add_argument(
        "--shuffle-buffer-gb",
        type=_positive_float,
        default=4.0,
        help="activations held for shuffling (the trainer's memory for data), in GB",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    parser.add_argument(
        "--checkpoint-every", type=_positive, default=1000, help="steps between checkpoints"
    )


def add_harvest_command(commands: argparse._SubParsersAction) -> None:
    """Register ``harvest`` on the ``maira-sae-server`` subcommands."""
    parser = commands.add_parser(
        "harvest",
        help="harvest MAIRA-2 activations of (a shard of) a study folder into an activation store",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    _add_harvest_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="the store folder")
    parser.add_argument(
        "--shard", type=_shard, default="0/1", help="I/N: harvest part I (from 0) of N"
    )


def _add_harvest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="MAIRA-2 folder or hub id")
    parser.add_argument("--studies", required=True, type=Path, help="folder of study folders")
    parser.add_argument(
        "--layer", type=_non_negative, default=15, help="decoder block whose output is read"
    )
    parser.add_argument(
        "--image-patch-stride",
        type=_positive,
        default=1,
        help="keep every Nth row and column of each image's patch grid",
    )
    parser.add_argument("--no-image-tokens", action="store_true", help="drop every image patch")
    parser.add_argument("--drop-boilerplate", action="store_true", help="drop fixed prompt text")
    parser.add_argument("--harvest-batch", type=_positive, default=2, help="studies per forward")
    parser.add_argument(
        "--shard-tokens",
        type=_positive,
        default=100_000,
        help="tokens per store shard (whole studies)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", default="auto", choices=_DTYPES, help="model dtype (auto: bfloat16 on CUDA)"
    )


_DTYPES = ("auto", "bfloat16", "float16", "float32")


def run_train_sae(args: argparse.Namespace) -> int:
    """Run ``train-sae``: its arguments are checked first, then torch and the model code load
    (not for ``--help``)."""
    problem = train_sae_argument_problem(args) or _device_problem(args.device)
    if problem:
        print(f"maira-sae-server train-sae: error: {problem}", file=sys.stderr)
        return 2
    from maira_sae.server.training.folder_training import train_sae_on_study_folder

    return train_sae_on_study_folder(args)


def run_harvest(args: argparse.Namespace) -> int:
    """Run ``harvest``: the study folder and device are checked first, then torch and the model
    code load (not for ``--help``)."""
    problem = _studies_problem(args.studies) or _device_problem(args.device)
    if problem:
        print(f"maira-sae-server harvest: error: {problem}", file=sys.stderr)
        return 2
    from maira_sae.server.training.folder_training import harvest_study_folder

    return harvest_study_folder(args)


def train_sae_argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``train-sae``'s arguments taken together, before anything loads; the
    dictionary's size is known here only when ``--dict-size`` or ``--groups`` gives it."""
    if args.threshold_start_step >= args.steps:
        return (
            f"--threshold-start-step {args.threshold_start_step} is not below --steps "
            f"{args.steps}: the inference threshold would never be learned"
        )
    if args.groups and args.dict_size and sum(args.groups) != args.dict_size:
        return f"--groups sum to {sum(args.groups)}, not --dict-size {args.dict_size}"
    dict_size = args.dict_size or (sum(args.groups) if args.groups else None)
    if dict_size is not None and args.k > dict_size:
        return f"--k {args.k} is over the dictionary's {dict_size} features"
    if args.store is not None:
        from maira_sae.sae.activation_store import MANIFEST_FILE

        if not (args.store / MANIFEST_FILE).is_file():
            return f"--store {args.store} is not an activation store (no {MANIFEST_FILE})"
        return None
    return _studies_problem(args.studies)


def _studies_problem(studies: Path) -> str | None:
    if not studies.is_dir():
        return f"--studies {studies} is not a folder (one subfolder per study)"
    return None


def _device_problem(name: str) -> str | None:
    import torch

    try:
        device = torch.device("cpu" if name == "auto" else name)
    except RuntimeError as error:
        return f"--device {name!r}: {error}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: CUDA is not available here"
    return None


def _shard(text: str) -> tuple[int, int]:
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
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,128,256, got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"group sizes must be >= 1, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    return _integer(text, minimum=1)


def _non_negative(text: str) -> int:
    return _integer(text, minimum=0)


def _integer(text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value
