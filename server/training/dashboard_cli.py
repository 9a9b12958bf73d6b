"""``maira-sae-server build-dashboard``: the feature dashboards of an SAE over a study folder,
written beside the SAE (its ``dashboard/``), where the server finds them.

    maira-sae-server build-dashboard --model microsoft/maira-2 --sae SAE_FOLDER \\
        --studies STUDIES [--out DIR] [--top-k 20] [--thumbnails]

STUDIES has the layout of ``maira_sae.server.training.study_folder`` (read one study at a
time); a study's findings.txt is teacher-forced, so report tokens count too. Run the same
command again to resume an interrupted build. Studies hold patient data: without
``--thumbnails`` the dashboard stores study ids and token positions only; with it, each top
example's heat map and text context and downscaled films (share such a file as you would the
studies). The file format is documented in ``maira_sae.sae.dashboard``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import overload

from maira_sae.server.training.model_loading import add_model_loading_arguments, load_model


def add_build_dashboard_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build-dashboard",
        help="build an SAE's feature dashboards (density, histogram, top examples) offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="MAIRA-2 folder or hub id")
    parser.add_argument("--sae", required=True, type=Path, help="the SAE folder")
    parser.add_argument("--studies", required=True, type=Path, help="folder of study folders")
    parser.add_argument("--out", type=Path, help="default: the SAE folder's dashboard/")
    parser.add_argument("--layer", type=int, help="default: the SAE's own config")
    parser.add_argument("--top-k", type=int, default=20, help="top studies kept per feature")
    parser.add_argument(
        "--thumbnails",
        action="store_true",
        help="also store films, heat maps and text context (patient data: see above)",
    )
    parser.add_argument("--batch", type=int, default=4, help="studies per forward")
    parser.add_argument("--save-every", type=int, default=32, help="studies between saves")
    add_model_loading_arguments(parser)


def run_build_dashboard(args: argparse.Namespace) -> int:
    """Run ``build-dashboard``; torch and the model load only now, not for ``--help``."""
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
    build_dashboard(model, processor, sae, layer, studies, out, settings, study_ids=studies.ids)
    print(f"dashboard written: {out}")
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
