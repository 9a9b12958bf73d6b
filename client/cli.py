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

from maira_sae.client import pictures
from maira_sae.client.connection import RetryPolicy, TlsFiles, read_token_file
from maira_sae.client.errors import MairaSaeError
from maira_sae.client.images import ImageDecodeError
from maira_sae.client.requests import (
    Aggregation,
    GenerationSettings,
    Task,
    TaskKind,
    TokenFilter,
    Variant,
)
from maira_sae.client.results import TokenEvent, TokenKind, TopFeaturesResult
from maira_sae.client.study import Study
from maira_sae.client.sync import Client
from maira_sae.client.text_output import ColumnPrinter, print_json, table, visible

DEFAULT_TARGET = "localhost:50051"
_TEXT_KINDS = frozenset({TokenKind.PROMPT_TEXT, TokenKind.RESPONSE, TokenKind.SPECIAL})


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

    feature = commands.add_parser("feature", parents=[json_flag], help="one feature's label")
    feature.add_argument("feature", type=int)
    feature.add_argument("--sae", default="", help="SAE id (default: the server's)")

    search = commands.add_parser("search", parents=[json_flag], help="search feature labels")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=0, help="matches (0: 20)")
    search.add_argument("--sae", default="", help="SAE id (default: the server's)")

    study = _study_arguments()
    encode = commands.add_parser(
        "encode", parents=[json_flag, study], help="per-token SAE features"
    )
    encode.add_argument("--response", help="report text to teacher-force")
    encode.add_argument("--top-k-per-token", type=int, default=0, help="0: all active")
    encode.add_argument("--kinds", type=_kinds, help="comma-separated token kinds to keep")
    encode.add_argument("--matryoshka-level", type=int, default=0, help="0: all groups")

    top = commands.add_parser(
        "top", parents=[json_flag, study], help="top features, heat maps, shaded text"
    )
    top.add_argument("--response", help="report text to teacher-force")
    top.add_argument("--k", type=int, default=0, help="features (0: 20)")
    top.add_argument(
        "--aggregation", type=Aggregation, default=Aggregation.MAX, choices=list(Aggregation)
    )
    top.add_argument("--kinds", type=_kinds, help="comma-separated token kinds to score")
    top.add_argument("--labelled-only", action="store_true", help="rank only the labelled features")
    top.add_argument("--heatmap", type=Path, help="write heat maps over the image (PNG)")
    top.add_argument("--html", type=Path, help="write the tokens shaded by activation")
    top.add_argument("--image-index", type=int, default=0, help="image for --heatmap")
    top.add_argument(
        "--feature",
        type=int,
        action="append",
        dest="picture_features",
        help="draw only this feature (repeatable); default: the top ones",
    )
    top.add_argument("--pictures", type=int, default=6, help="features to draw (default 6)")

    generate = commands.add_parser(
        "generate", parents=[json_flag, study], help="stream steered reports"
    )
    generate.add_argument(
        "--steer",
        type=_variant,
        action="append",
        default=[],
        metavar="SPEC[,SPEC...]",
        help="one variant per flag: FEATURE:MODE[:VALUE][@SCOPE], comma-joined for several",
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
    return study


def _kinds(text: str) -> frozenset[TokenKind]:
    try:
        return frozenset(TokenKind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        names = ", ".join(kind.value for kind in TokenKind)
        raise argparse.ArgumentTypeError(f"{exc}; kinds are {names}") from exc


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
    return Study.from_files(
        args.frontal,
        args.lateral,
        args.prior,
        indication=args.indication,
        technique=args.technique,
        comparison=args.comparison,
        prior_report=args.prior_report,
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
    print(f"default   {info.default_sae_id}\n", file=out)
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
    feature = client.feature(args.feature, sae_id=args.sae)
    if args.json:
        return print_json(feature.to_dict(), out)
    score = feature.interpretation_score
    print(f"feature   {feature.feature}", file=out)
    print(f"label     {feature.label or '(none)'}", file=out)
    print(f"score     {'-' if score is None else f'{score:.3f}'}", file=out)
    print(f"norm      {feature.decoder_norm:.4f}", file=out)
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
    return None


def _encode(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = client.encode(
        _study(args),
        response=args.response,
        task=_task(args),
        sae_id=args.sae,
        token_filter=TokenFilter(kinds=args.kinds or frozenset()),
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
        token_filter=TokenFilter(kinds=args.kinds or frozenset()),
        labelled_only=args.labelled_only,
        **options,
    )
    if args.heatmap:
        pixels = study.images()[args.image_index][1].pixels()
        picture = pictures.top_features_heatmap(
            pixels,
            result,
            image_index=args.image_index,
            features=args.picture_features,
            limit=args.pictures,
        )
        pictures.save_png(picture, args.heatmap)
    if args.html:
        encoded = client.encode(study, token_filter=TokenFilter(kinds=_TEXT_KINDS), **options)
        chosen = _picture_features(result, args.picture_features, args.pictures)
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
