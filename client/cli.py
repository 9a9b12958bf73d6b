"""``maira-sae``: the SDK from the command line.

    maira-sae --target HOST:PORT info
    maira-sae --target HOST:PORT top --frontal f.png --indication "Cough." --heatmap out.png
    maira-sae --target HOST:PORT generate --frontal f.dcm --steer 123:add:8 --steer 77:clamp:0

``--json`` prints machine output (one JSON document; for ``generate`` one JSON line per
event); otherwise tables. The bearer token comes from ``--token-file`` or ``MAIRA_SAE_TOKEN``
(never a flag value, which ``ps`` would show); the target may come from ``MAIRA_SAE_TARGET``.
Exit status: 0 success, 1 the call failed, 2 bad arguments or input files.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from maira_sae.client import feature_films, feature_page, pictures
from maira_sae.client.connection import RetryPolicy, TlsFiles, read_token_file
from maira_sae.client.errors import MairaSaeError
from maira_sae.client.images import ImageDecodeError, MediaType, sniff_media_type
from maira_sae.client.requests import (
    Aggregation,
    GenerationSettings,
    PositionScope,
    SteeringMode,
    Task,
    TaskKind,
    TokenFilter,
    TokenRange,
    Variant,
)
from maira_sae.client.results import TokenEvent, TokenKind, TopFeaturesResult
from maira_sae.client.study import Study, StudyImage
from maira_sae.client.sync import Client
from maira_sae.client.text_output import ColumnPrinter, print_json, table, visible

DEFAULT_TARGET = "localhost:50051"
_TEXT_KINDS = frozenset({TokenKind.PROMPT_TEXT, TokenKind.RESPONSE, TokenKind.SPECIAL})
_KIND_NAMES = ", ".join(kind.value for kind in TokenKind)
_MODE_NAMES = ", ".join(mode.value for mode in SteeringMode)
_SCOPE_NAMES = ", ".join(s.value for s in PositionScope if s is not PositionScope.RANGES)


# -------------------------------------------------------------------------------------------
# Arguments


def _parser() -> argparse.ArgumentParser:
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
    feature.add_argument("--decoder-row", action="store_true", help="with --json: the row too")
    feature.add_argument("--html", type=Path, help="write the feature's dashboard page")
    feature.add_argument(
        "--studies", type=Path, help="with --html: a local study folder to draw the films from"
    )

    search = commands.add_parser("search", parents=[json_flag], help="search feature labels")
    search.add_argument("query")
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
            "the frame (from 0) to take from the DICOM images, each of which must have it; a"
            " multi-frame DICOM is refused without it"
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


def _connect(args: argparse.Namespace) -> Client:
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


def _study(args: argparse.Namespace) -> Study:
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
    """``--frame`` applies to the DICOM files among the images (PNG and JPEG have one)."""
    if frame is not None:
        with path.open("rb") as file:
            is_dicom = sniff_media_type(file.read(132)) is MediaType.DICOM
        if is_dicom:
            return StudyImage.from_file(path, frame=frame)
    return StudyImage.from_file(path)


def _token_filter(args: argparse.Namespace) -> TokenFilter:
    return TokenFilter(
        kinds=args.kinds or frozenset(),
        image_indices=frozenset(args.image_indices or ()),
        ranges=tuple(args.ranges or ()),
    )


def _task(args: argparse.Namespace) -> Task:
    return Task(kind=args.task, phrase=args.phrase)


# -------------------------------------------------------------------------------------------
# Output


# -------------------------------------------------------------------------------------------
# Commands


def _info(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    info = client.info()
    if args.json:
        return print_json(info.to_dict(), out)
    m = info.model
    print(f"model     {m.name}{' (demo)' if m.demo else ''}  {m.dtype} on {m.device}", file=out)
    print(f"layers    {m.num_layers}, d_model {m.hidden_size}", file=out)
    print(
        f"images    {m.image_tokens_per_image} tokens ({m.patch_grid_rows}x{m.patch_grid_cols})",
        file=out,
    )
    print(f"versions  maira-sae {info.versions.maira_sae}, torch {info.versions.torch}", file=out)
    print(f"dicom     {info.dicom.description}", file=out)
    print(f"default   {info.default_sae_id or '(none reported)'}\n", file=out)
    table(
        ("sae", "layer", "d_sae", "groups", "labels", "format"),
        [
            (s.id, s.layer, s.d_sae, len(s.group_sizes), s.num_interpretations, s.source_format)
            for s in info.saes
        ],
        out,
    )
    return None


def _feature(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    feature = client.feature(
        args.feature, sae_id=args.sae, include_decoder_row=args.decoder_row, num_logits=args.logits
    )
    if args.html:
        films = feature_films.StudyFolder(args.studies) if args.studies else None
        if films is not None:
            feature = feature_films.with_heatmaps(client, feature, films, sae_id=args.sae)
        page = feature_page.feature_page_html(
            feature,
            sae_id=args.sae or client.info().default_sae_id,
            films=films.films if films else None,
        )
        args.html.write_text(page, encoding="utf-8")
    if args.json:
        return print_json(feature.to_dict(), out)
    score = feature.interpretation_score
    print(f"feature   {feature.feature}", file=out)
    print(f"label     {feature.label or '(none)'}", file=out)
    print(f"score     {'-' if score is None else f'{score:.3f}'}", file=out)
    print(f"norm      {feature.decoder_norm:.4f}", file=out)
    dashboard = feature.dashboard
    if dashboard is None:
        print(f"dashboard {feature.dashboard_note or '(none)'}", file=out)
    else:
        kinds = ", ".join(f"{d.kind.value} {d.density:.3%}" for d in dashboard.density_by_kind)
        print(f"density   {dashboard.density:.3%} ({kinds})", file=out)
        print(f"examples  {len(dashboard.top_examples)} top, ", end="", file=out)
        print(f"{len(dashboard.quantile_examples)} from lower quantiles", file=out)
    effects = (("promotes", feature.promoted_tokens), ("lowers", feature.suppressed_tokens))
    for name, tokens in effects:
        if tokens:
            print(f"{name:<9} " + "  ".join(f"{t.text!r} {t.logit:+.3g}" for t in tokens), file=out)
    return None


def _search(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = client.search_features(args.query, limit=args.limit, sae_id=args.sae)
    if args.json:
        return print_json(result.to_dict(), out)
    table(
        ("score", "feature", "label"),
        [(f"{m.score:.3f}", m.feature.feature, m.feature.label or "") for m in result.matches],
        out,
    )
    if result.note:
        print(f"\n{result.note}", file=out)
    for suggestion in result.suggestions:
        print(f"  {suggestion}", file=out)
    return None


def _encode(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = client.encode(
        _study(args),
        response=args.response,
        task=_task(args),
        sae_id=args.sae,
        token_filter=_token_filter(args),
        top_k_per_token=args.top_k_per_token,
        matryoshka_level=args.matryoshka_level,
    )
    if args.json:
        return print_json(result.to_dict(), out)
    q = result.quality
    print(
        f"{result.sae_id} (layer {result.layer}): {len(result.tokens)} of {result.total_tokens} "
        f"tokens; mse {q.mse:.4g}, explained variance {q.explained_variance:.3f}, "
        f"cosine {q.cosine:.3f}\n",
        file=out,
    )
    rows = []
    for item in result.tokens:
        t = item.token
        where = (
            f"{t.image_role.value if t.image_role else ''}[{t.grid_row},{t.grid_col}]"
            if t.kind is TokenKind.IMAGE_PATCH
            else visible(t.text)
        )
        pairs = zip(item.feature_ids[:5], item.values[:5], strict=True)
        top = " ".join(f"{f}:{v:.2f}" for f, v in pairs)
        rows.append((t.position, t.kind.value, where, top))
    table(("pos", "kind", "token", "top features"), rows, out)
    return None


def _top(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    study = _study(args)
    options: dict[str, Any] = {"response": args.response, "task": _task(args), "sae_id": args.sae}
    result = client.top_features(
        study,
        k=args.k,
        aggregation=args.aggregation,
        token_filter=_token_filter(args),
        labelled_only=args.labelled_only,
        **options,
    )
    if args.picture_features:
        _check_features(client, result.sae_id, args.picture_features)
    if args.heatmap:
        _write_heatmap(study, result, args)
    if args.html:
        kinds = _TEXT_KINDS | {TokenKind.IMAGE_PATCH} if args.html_images else _TEXT_KINDS
        encoded = client.encode(study, token_filter=TokenFilter(kinds=kinds), **options)
        chosen = _picture_features(result, args.picture_features, args.pictures)
        if len(chosen) < args.pictures and not args.picture_features:
            print(
                f"maira-sae: --html shows {len(chosen)} of the {args.pictures} features asked "
                f"for: the result has {len(result.features)}",
                file=sys.stderr,
            )
        args.html.write_text(pictures.tokens_html(encoded, chosen), encoding="utf-8")
    if args.json:
        return print_json(result.to_dict(), out)
    table(
        ("rank", "feature", "score", "tokens", "images", "label"),
        [
            (
                rank,
                f.feature,
                f"{f.score:.4g}",
                len(f.token_positions),
                ",".join(str(g.image_index) for g in f.image_grids) or "-",
                f.label or "",
            )
            for rank, f in enumerate(result.features, start=1)
        ],
        out,
    )
    return None


def _check_features(client: Client, sae_id: str, features: Sequence[int]) -> None:
    d_sae = client.info().sae(sae_id).d_sae
    for feature in features:
        if feature >= d_sae:
            raise argparse.ArgumentTypeError(
                f"--feature {feature}: SAE {sae_id} has {d_sae} features (0..{d_sae - 1})"
            )


def _write_heatmap(study: Study, result: TopFeaturesResult, args: argparse.Namespace) -> None:
    image_index = (args.image_indices or [0])[0]
    drawn = pictures.features_on_image(result, image_index, args.picture_features, args.pictures)
    wanted = len(args.picture_features) if args.picture_features else args.pictures
    if len(drawn) < wanted:
        print(
            f"maira-sae: --heatmap draws {len(drawn)} of the {wanted} pictures asked for: "
            f"of the {len(result.features)} features found, {len(drawn)} of those selected "
            f"fire on image {image_index}",
            file=sys.stderr,
        )
    picture = pictures.top_features_heatmap(
        study.images()[image_index][1].pixels(),
        result,
        image_index=image_index,
        features=args.picture_features,
        limit=args.pictures,
        shared_scale=not args.per_panel_scale,
    )
    pictures.save_png(picture, args.heatmap)


def _picture_features(
    result: TopFeaturesResult, wanted: Sequence[int] | None, limit: int
) -> list[tuple[int, str | None]]:
    labels = {f.feature: f.label for f in result.features}
    chosen = list(wanted) if wanted else [f.feature for f in result.features][:limit]
    return [(feature, labels.get(feature)) for feature in chosen]


def _generate(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    variants = [] if args.no_baseline else [Variant(name="baseline")]
    variants += args.steer
    if not variants:
        raise argparse.ArgumentTypeError("--no-baseline needs at least one --steer")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    stream = client.generate_steered(
        _study(args), variants, task=_task(args), settings=settings, sae_id=args.sae
    )
    with stream:
        if args.json:
            for event in stream:
                kind = "token" if isinstance(event, TokenEvent) else "finished"
                print_json({"type": kind, **event.to_dict()}, out)
                out.flush()
            return None
        ColumnPrinter([v.name for v in variants], out).run(stream)
    return None


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace, TextIO], None]] = {
    "info": _info,
    "feature": _feature,
    "search": _search,
    "encode": _encode,
    "top": _top,
    "generate": _generate,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        with _connect(args) as client:
            _COMMANDS[args.command](client, args, out)
    except MairaSaeError as error:
        request = f" (request id {error.request_id})" if error.request_id else ""
        print(f"maira-sae: {error}{request}", file=sys.stderr)
        return 1
    except (ImageDecodeError, argparse.ArgumentTypeError, ValueError, OSError) as error:
        print(f"maira-sae: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
