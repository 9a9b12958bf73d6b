"""``maira-sae-server build-dashboard``: the feature dashboards of an SAE over a study folder,
written beside the SAE (its ``dashboard/``), where the server finds them.

    maira-sae-server build-dashboard --model microsoft/maira-2 --sae SAE_FOLDER \\
        --studies STUDIES [--out DIR] [--top-k 20] [--thumbnails]
    maira-sae-server build-dashboard ... --shard I/N --out PARTS/part-I   # N processes or pods
    maira-sae-server merge-dashboards PARTS/part-* --out SAE_FOLDER/dashboard

STUDIES has the layout of ``maira_sae.server.training.study_folder`` (read one study at a
time); a study's findings.txt is teacher-forced, so report tokens count too. Run the same
command again to resume an interrupted build. Studies hold patient data: without
``--thumbnails`` the dashboard stores study ids and token positions only; with it, each top
example's heat map and text context and downscaled films (share such a file as you would the
studies). The file format is documented in ``maira_sae.sae.dashboard``.

``--shard I/N`` runs part I (from 0) of N contiguous runs of the studies (in name order, in
whole --batch batches) and writes a partial dashboard to --out; ``merge-dashboards`` combines
the N partials into the dashboard one process writes, to the last bit (give every shard the
same options). A shard resumes as a whole build does; the merge refuses incomplete, missing or
foreign partials.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import overload

from maira_sae.server.training.cli import shard_spec
from maira_sae.server.training.model_loading import (
    add_model_loading_arguments,
    add_sae_run_arguments,
    load_model,
)


def add_build_dashboard_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build-dashboard",
        help="build an SAE's feature dashboards (density, histogram, top examples) offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sae_run_arguments(parser)
    parser.add_argument(
        "--out", type=Path, help="default: the SAE folder's dashboard/ (with --shard: required)"
    )
    parser.add_argument("--top-k", type=int, default=20, help="top studies kept per feature")
    parser.add_argument(
        "--thumbnails",
        action="store_true",
        help="also store films, heat maps and text context (patient data: see above)",
    )
    parser.add_argument("--batch", type=int, default=4, help="studies per forward")
    parser.add_argument("--save-every", type=int, default=32, help="studies between saves")
    parser.add_argument(
        "--shard", type=shard_spec, help="I/N: build part I (from 0) of N as a partial dashboard"
    )
    add_model_loading_arguments(parser)


def add_merge_dashboards_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "merge-dashboards",
        help="merge the partial dashboards of build-dashboard --shard I/N into one dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("partials", nargs="+", type=Path, help="the N shards' --out folders")
    parser.add_argument(
        "--out", required=True, type=Path, help="the dashboard folder (e.g. SAE_FOLDER/dashboard)"
    )


def run_build_dashboard(args: argparse.Namespace) -> int:
    """Run ``build-dashboard``; torch and the model load only now, not for ``--help``."""
    if args.shard is not None and args.out is None:
        print("maira-sae-server: build-dashboard --shard needs --out", file=sys.stderr)
        return 2
    from maira_sae.sae.dashboard import DEFAULT_FOLDER
    from maira_sae.sae.formats import load_sae
    from maira_sae.server.maira2.checkpoint import resolve_device
    from maira_sae.server.training.dashboards import DashboardSettings, build_dashboard

    device = resolve_device(args.device)
    model, processor = load_model(args, device)
    sae = load_sae(args.sae, device=device, layer=args.layer)
    layer = sae.metadata.layer
    if layer is None:
        print("maira-sae-server: the SAE's files name no layer; pass --layer", file=sys.stderr)
        return 2
    out = args.out or args.sae / DEFAULT_FOLDER
    settings = DashboardSettings(
        top_k=args.top_k,
        with_content=args.thumbnails,
        batch_size=args.batch,
        save_every=args.save_every,
    )
    studies = FolderStudies(args.studies)
    ids = studies.ids
    build_dashboard(
        model, processor, sae, layer, studies, out, settings, study_ids=ids, shard=args.shard
    )
    print(f"{'partial ' if args.shard else ''}dashboard written: {out}")
    return 0


def run_merge_dashboards(args: argparse.Namespace) -> int:
    """Run ``merge-dashboards``: no model, only the partials' files."""
    from maira_sae.server.training.dashboards import merge_dashboards

    try:
        merge_dashboards(args.partials, args.out)
    except ValueError as error:
        print(f"maira-sae-server merge-dashboards: {error}", file=sys.stderr)
        return 2
    print(f"dashboard written: {args.out}")
    return 0


class FolderStudies(Sequence):
    """The studies of a study folder as a sequence read on access, one study at a time."""

    def __init__(self, folder: Path) -> None:
        from maira_sae.server.training.study_folder import study_folders

        self._paths = study_folders(folder)

    @property
    def ids(self) -> list[str]:
        return [path.name for path in self._paths]

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, index: int) -> object: ...
    @overload
    def __getitem__(self, index: slice) -> list[object]: ...

    def __getitem__(self, index: int | slice) -> object:
        from maira_sae.server.training.dashboards import DashboardStudy
        from maira_sae.server.training.study_folder import read_study

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        read = read_study(self._paths[index])
        return DashboardStudy(read.name, read.study, read.findings)
