"""The ``maira-sae`` command line's arguments: the parser, the parsers of single values, and
the SDK objects (client, study, filter, task) the parsed arguments describe."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from maira_sae.client.connection import RetryPolicy, TlsFiles, read_token_file
from maira_sae.client.imaging.decode import MediaType
from maira_sae.client.requests import (
    Aggregation,
    PositionScope,
    SteeringMode,
    Task,
    TaskKind,
    TokenFilter,
    TokenRange,
    Variant,
)
from maira_sae.client.results import TokenKind
from maira_sae.client.study import Study, StudyImage
from maira_sae.client.sync import Client

DEFAULT_TARGET = "localhost:50051"
TEXT_KINDS = frozenset({TokenKind.PROMPT_TEXT, TokenKind.RESPONSE, TokenKind.SPECIAL})
_KIND_NAMES = ", ".join(kind.value for kind in TokenKind)
_MODE_NAMES = ", ".join(mode.value for mode in SteeringMode)
_SCOPE_NAMES = ", ".join(s.value for s in PositionScope if s is not PositionScope.RANGES)


# -------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maira-sae", description="Call a maira-sae server: SAE features of MAIRA-2."
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("MAIRA_SAE_TARGET", DEFAULT_TARGET),
        help="HOST:PORT or dns:///NAME:PORT (env MAIRA_SAE_TARGET; default %(default)s)",
    )
    parser.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate (PEM); implies TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (PEM), for mTLS")
    parser.add_argument("--tls-key", type=Path, help="client private key (PEM), for mTLS")
    parser.add_argument("--tls-server-name", help="name to check the server certificate for")
    parser.add_argument(
        "--token-file", type=Path, help="bearer token file (else env MAIRA_SAE_TOKEN)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline per call, s")
    parser.add_argument("--no-retry", action="store_true", help="fail on the first error")
    parser.add_argument("--json", action="store_true", help="machine output")
    commands = parser.add_subparsers(dest="command", required=True)
    # --json is also accepted after the command; SUPPRESS keeps the main parser's value.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    commands.add_parser("info", parents=[json_flag], help="model, SAEs, limits, versions")

    feature = commands.add_parser(
        "feature", parents=[json_flag], help="one feature: label, density, logit effects, page"
    )
    feature.add_argument("feature", type=_feature_number, help="feature number, 0..d_sae-1")
    feature.add_argument("--sae", default="", help="SAE id (default: the server's)")
    feature.add_argument("--logits", type=int, default=10, help="promoted/suppressed tokens")
    feature.add_argument(
        "--nearest", type=int, default=10, help="nearest features by decoder cosine"
    )
    feature.add_argument("--decoder-row", action="store_true", help="with --json: the row too")
    feature.add_argument("--html", type=Path, help="write the feature's dashboard page")
    feature.add_argument(
        "--studies", type=Path, help="with --html: a local study folder to draw the films from"
    )

    search = commands.add_parser(
        "search",
        parents=[json_flag],
        help="search feature labels, or (--by-activation) the features that fire on a text",
    )
    search.add_argument("query", nargs="?", help="words to look for in the labels")
    search.add_argument(
        "--by-activation",
        metavar="TEXT",
        help="instead of a query: run TEXT through the model, list the features firing most",
    )
    search.add_argument("--limit", type=int, default=0, help="matches (0: 20)")
    search.add_argument("--sae", default="", help="SAE id (default: the server's)")

    study = _study_arguments()
    tokens = _token_filter_arguments()
    encode = commands.add_parser(
        "encode", parents=[json_flag, study, tokens], help="per-token SAE features"
    )
    encode.add_argument("--response", help="report text to teacher-force")
    encode.add_argument("--top-k-per-token", type=int, default=0, help="0: all active")
    encode.add_argument("--matryoshka-level", type=int, default=0, help="0: all groups")

    top = commands.add_parser(
        "top", parents=[json_flag, study, tokens], help="top features, heat maps, shaded text"
    )
    top.add_argument("--response", help="report text to teacher-force")
    top.add_argument("--k", type=int, default=0, help="features (0: 20)")
    top.add_argument(
        "--aggregation", type=Aggregation, default=Aggregation.MAX, choices=list(Aggregation)
    )
    top.add_argument("--labelled-only", action="store_true", help="rank only the labelled features")
    top.add_argument(
        "--heatmap",
        type=Path,
        help="write heat maps over the image (PNG): the first --image-index, else image 0",
    )
    top.add_argument(
        "--per-panel-scale",
        action="store_true",
        help="scale each heat map to its own maximum (default: one scale for the sheet)",
    )
    top.add_argument("--html", type=Path, help="write the tokens shaded by activation")
    top.add_argument(
        "--html-images", action="store_true", help="with --html: each image's patches as a grid"
    )
    top.add_argument(
        "--feature",
        type=_feature_number,
        action="append",
        dest="picture_features",
        help="draw only this feature (repeatable); default: the top ones",
    )
    top.add_argument(
        "--pictures", type=_picture_count, default=6, help="features to draw (default 6)"
    )

    generate = commands.add_parser(
        "generate", parents=[json_flag, study], help="stream steered reports"
    )
    generate.add_argument(
        "--steer",
        type=_variant,
        action="append",
        default=[],
        metavar="SPEC[,SPEC...]",
        help=(
            "one variant per flag: FEATURE:MODE[:VALUE][@SCOPE], comma-joined for several; "
            f"modes: {_MODE_NAMES}; scopes: {_SCOPE_NAMES} (default all)"
        ),
    )
    generate.add_argument("--no-baseline", action="store_true", help="omit the baseline")
    generate.add_argument("--max-new-tokens", type=int, default=0, help="0: server default")
    generate.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    generate.add_argument("--top-p", type=float, default=0.0, help="0: no nucleus cut")
    generate.add_argument("--seed", type=int, default=0)
    return parser


def _study_arguments() -> argparse.ArgumentParser:
    study = argparse.ArgumentParser(add_help=False)
    images = study.add_argument_group("study")
    images.add_argument("--frontal", type=Path, required=True, help="PNG, JPEG or DICOM")
    images.add_argument("--lateral", type=Path)
    images.add_argument("--prior", type=Path, help="the prior frontal image")
    for section in ("indication", "technique", "comparison", "prior-report"):
        images.add_argument(f"--{section}", help=f"the {section.replace('-', ' ')} section")
    images.add_argument("--task", type=TaskKind, default=TaskKind.FINDINGS, choices=list(TaskKind))
    images.add_argument("--phrase", default="", help="the phrase for phrase_grounding")
    images.add_argument("--sae", default="", help="SAE id (default: the server's)")
    images.add_argument(
        "--frame",
        type=_feature_number,
        help=(
            "the frame (from 0) of the DICOM images to use, sent with them for the server to"
            " decode (each must have it); the server refuses a multi-frame DICOM without it"
        ),
    )
    return study


def _token_filter_arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    tokens = parser.add_argument_group("token filter (every condition given must hold)")
    tokens.add_argument(
        "--kinds", type=_kinds, help=f"comma-separated token kinds to keep: {_KIND_NAMES}"
    )
    tokens.add_argument(
        "--image-index",
        type=_feature_number,
        action="append",
        dest="image_indices",
        metavar="N",
        help="keep image patches of image N only (0: frontal; repeatable); text tokens stay",
    )
    tokens.add_argument(
        "--range",
        type=_token_range,
        action="append",
        dest="ranges",
        metavar="START:END",
        help="keep tokens at positions START..END-1 only (repeatable: any of the ranges)",
    )
    return parser


def _kinds(text: str) -> frozenset[TokenKind]:
    try:
        return frozenset(TokenKind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; kinds are {_KIND_NAMES}") from exc


def _feature_number(text: str) -> int:
    """A non-negative integer (a feature, an image index, a frame)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; numbers here start at 0")
    return value


def _picture_count(text: str) -> int:
    count = _feature_number(text)
    if count == 0:
        raise argparse.ArgumentTypeError("draw at least one picture")
    return count


def _token_range(text: str) -> TokenRange:
    start, sep, end = text.partition(":")
    try:
        token_range = TokenRange(int(start), int(end))
    except ValueError:
        raise argparse.ArgumentTypeError(f"range {text!r} is not START:END") from None
    if not sep or not 0 <= token_range.start < token_range.end:
        raise argparse.ArgumentTypeError(f"range {text!r} needs 0 <= START < END")
    return token_range


def _variant(text: str) -> Variant:
    try:
        return Variant.of(text, *text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def connect(args: argparse.Namespace) -> Client:
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = TlsFiles(
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            server_name=args.tls_server_name,
        )
    token = read_token_file(args.token_file) if args.token_file else None
    return Client(
        args.target,
        tls=tls,
        token=token or os.environ.get("MAIRA_SAE_TOKEN") or None,
        timeout_s=args.timeout,
        retry=None if args.no_retry else RetryPolicy(),
    )


def study_from_args(args: argparse.Namespace) -> Study:
    """The study of the arguments; --image-index values are checked against its images."""
    images = [
        _study_image(path, args.frame) if path is not None else None
        for path in (args.frontal, args.lateral, args.prior)
    ]
    study = Study.of(
        *images,
        indication=args.indication,
        technique=args.technique,
        comparison=args.comparison,
        prior_report=args.prior_report,
    )
    present = [role for role, _ in study.images()]
    for index in getattr(args, "image_indices", None) or ():
        if index >= len(present):
            listed = ", ".join(f"{i}: {role}" for i, role in enumerate(present))
            raise argparse.ArgumentTypeError(
                f"--image-index {index}: the study has {len(present)} image(s) ({listed})"
            )
    return study


def _study_image(path: Path, frame: int | None) -> StudyImage:
    """``--frame`` applies to the DICOM files among the images (PNG and JPEG have one); the
    file is sent as it is, for the server to judge."""
    image = StudyImage.from_file(path)
    if frame is not None and image.media_type is MediaType.DICOM:
        return dataclasses.replace(image, frame=frame)
    return image


def token_filter_from_args(args: argparse.Namespace) -> TokenFilter:
    return TokenFilter(
        kinds=args.kinds or frozenset(),
        image_indices=frozenset(args.image_indices or ()),
        ranges=tuple(args.ranges or ()),
    )


def task_from_args(args: argparse.Namespace) -> Task:
    return Task(kind=args.task, phrase=args.phrase)
