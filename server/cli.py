"""``maira-sae-server``: serve MAIRA-2 with its SAEs, or write the demo checkpoint.

    maira-sae-server serve --config server.toml
    maira-sae-server serve --demo                  # the synthetic world demo (tiny, trained)
    maira-sae-server make-demo DIR [--random]
    maira-sae-server make-demo --studies STUDIES   # the world's held-out studies as a folder
    maira-sae-server train-sae --model PATH --studies FOLDER --out DIR
    maira-sae-server build-dashboard --model PATH --sae SAE --studies FOLDER [--thumbnails]
    maira-sae-server explain --model PATH --sae SAE --studies FOLDER --out FILE [--explainer llm]
    maira-sae-server merge-explanations --out FILE PROGRESS...   # ranges run apart, as one
    maira-sae-server check-snapshot PATH_OR_HUB_ID [--json]   # will it load? (no tensor data read)

Settings come from defaults < config file < MAIRA_SAE_* environment variables < flags
(``maira-sae-server serve --help`` lists them all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from maira_sae.server.service.config import ConfigError, ModelConfig, SaeSpec, ServerConfig
from maira_sae.server.service.config_sources import add_arguments, config_from_sources
from maira_sae.server.service.logs import configure_logging
from maira_sae.server.training.cli import (
    add_harvest_command,
    add_train_sae_command,
    run_harvest,
    run_train_sae,
)
from maira_sae.server.training.dashboard_cli import add_build_dashboard_command, run_build_dashboard
from maira_sae.server.training.explain_cli import (
    add_explain_commands,
    run_explain,
    run_merge_explanations,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maira-sae-server", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument(
        "--demo",
        dest="model.demo",
        action="store_true",
        default=argparse.SUPPRESS,
        help="serve the synthetic world demo (a tiny trained MAIRA-2-shaped model and its SAE;"
        " not clinical), materialised once into a cache folder",
    )
    add_arguments(serve)
    make_demo = commands.add_parser(
        "make-demo",
        help="write the demo checkpoint (model, SAE, interpretations) into DIR, and/or the"
        " world's held-out studies as a study folder",
    )
    make_demo.add_argument("directory", type=Path, nargs="?")
    make_demo.add_argument(
        "--studies",
        type=Path,
        metavar="STUDIES",
        help="write the world's held-out studies (films, findings, sections) into this new"
        " folder, in the layout train-sae, build-dashboard and explain read",
    )
    make_demo.add_argument(
        "--num-studies", type=int, default=100, help="how many held-out studies (--studies)"
    )
    make_demo.add_argument(
        "--random",
        action="store_true",
        help="the random-weight checkpoint at the real image size (1369 tokens per image) instead",
    )
    make_demo.add_argument("--seed", type=int, default=0, help="of the random checkpoint")
    add_train_sae_command(commands)
    add_harvest_command(commands)
    add_build_dashboard_command(commands)
    add_explain_commands(commands)
    check = commands.add_parser(
        "check-snapshot",
        help="say whether the server will load a MAIRA-2 snapshot, reading only its config,"
        " index and tokenizer files (a hub id downloads only those)",
    )
    check.add_argument("snapshot", help="a local folder or a hub id such as microsoft/maira-2")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def _check_snapshot(snapshot: str, *, as_json: bool) -> int:
    from maira_sae.server.maira2.config import CheckpointError
    from maira_sae.server.maira2.preflight import check_snapshot, format_report

    try:
        report = check_snapshot(snapshot)
    except CheckpointError as error:
        print(f"maira-sae-server: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    return 0 if report.will_load else 1


def _make_demo_command(args: argparse.Namespace) -> int:
    if args.directory is None and args.studies is None:
        print("maira-sae-server: make-demo needs DIR, --studies STUDIES or both", file=sys.stderr)
        return 2
    if args.studies is not None:
        code = _export_studies(args.studies, args.num_studies)
        if code:
            return code
    if args.directory is None:
        return 0
    return _make_demo(args.directory, random=args.random, seed=args.seed)


def _export_studies(folder: Path, count: int) -> int:
    from maira_sae.server.demo.world.study_export import write_held_out_studies

    if count < 1:
        print(f"maira-sae-server: --num-studies must be >= 1, got {count}", file=sys.stderr)
        return 2
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        print(f"maira-sae-server: {folder} is not an empty folder; give a new one", file=sys.stderr)
        return 2
    written = write_held_out_studies(folder, count)
    print(f"{len(written)} held-out world studies written: {folder}")
    return 0


def _make_demo(directory: Path, *, random: bool, seed: int) -> int:
    from maira_sae.server.demo.layout import BUILD_MARKER, MODEL_FOLDER, SAE_FOLDER
    from maira_sae.server.demo.random_checkpoint import write_demo_checkpoint
    from maira_sae.server.demo.world.materialise import ensure_world_demo

    rebuild = not random and (directory / BUILD_MARKER).exists()  # a world demo built before
    if directory.is_dir() and any(directory.iterdir()) and not rebuild:
        print(f"maira-sae-server: {directory} is not empty; give a new folder", file=sys.stderr)
        return 2
    if random:
        write_demo_checkpoint(directory, seed=seed)
    else:
        ensure_world_demo(directory)
    model, sae = directory / MODEL_FOLDER, directory / SAE_FOLDER
    print(f"demo checkpoint written: model {model}, SAE {sae}")
    return 0


DEMO_SAE_ID = "demo-ef4-layer15"


def with_demo(config: ServerConfig) -> ServerConfig:
    """``serve --demo``: the synthetic world demo (a tiny trained MAIRA-2-shaped model and its
    SAE) materialised once into ``model.demo_dir``, atomically, so concurrent or interrupted
    starts never see half a build; the config then loads its model and its SAE, first (so the
    default unless ``default_sae_id`` says otherwise), beside any SAEs configured (one
    configured under the demo SAE's id replaces it). Any other config is returned as it is."""
    if not config.model.demo:
        return config
    from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
    from maira_sae.server.demo.world.materialise import ensure_world_demo

    demo = ensure_world_demo(demo_folder(config.model))
    demo_sae = SaeSpec(
        id=DEMO_SAE_ID, path=demo / SAE_FOLDER, interpretations_path=demo / INTERPRETATIONS_FILE
    )
    configured = {spec.id for spec in config.saes}
    saes = (demo_sae, *config.saes) if demo_sae.id not in configured else config.saes
    return replace(config, model=replace(config.model, path=str(demo / MODEL_FOLDER)), saes=saes)


def demo_folder(model: ModelConfig) -> Path:
    if model.demo_dir:
        return Path(model.demo_dir).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "maira-sae" / "demo-checkpoint"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train-sae":
        return run_train_sae(args)
    if args.command == "harvest":
        return run_harvest(args)
    if args.command == "build-dashboard":
        return run_build_dashboard(args)
    if args.command == "explain":
        return run_explain(args)
    if args.command == "merge-explanations":
        return run_merge_explanations(args)
    if args.command == "make-demo":
        return _make_demo_command(args)
    if args.command == "check-snapshot":
        return _check_snapshot(args.snapshot, as_json=args.json)
    try:
        config = config_from_sources(args, os.environ)
    except ConfigError as error:
        print(f"maira-sae-server: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(config.serving.log_level)
    from maira_sae.server.service.app import serve

    return asyncio.run(serve(with_demo(config)))


if __name__ == "__main__":
    sys.exit(main())
