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
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from maira_sae.client import feature_films, feature_page, pictures
from maira_sae.client.cli_arguments import (
    TEXT_KINDS,
    build_parser,
    connect,
    study_from_args,
    task_from_args,
    token_filter_from_args,
)
from maira_sae.client.errors import MairaSaeError
from maira_sae.client.imaging.decode import ImageDecodeError
from maira_sae.client.requests import (
    GenerationSettings,
    TokenFilter,
    Variant,
)
from maira_sae.client.results import TokenEvent, TokenKind, TopFeaturesResult
from maira_sae.client.study import Study
from maira_sae.client.sync import Client
from maira_sae.client.text_output import ColumnPrinter, print_json, table, visible

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
    limits = info.limits
    print(
        f"limits    images {limits.max_images} x {limits.max_image_bytes} bytes / "
        f"{limits.max_image_pixels} pixels, text {limits.max_text_chars} chars, new tokens "
        f"{limits.max_new_tokens} (default {limits.default_max_new_tokens}), variants "
        f"{limits.max_variants} x {limits.max_interventions_per_variant} interventions, top k "
        f"{limits.max_top_k}, |strength| {limits.max_abs_strength:g}, batch "
        f"{limits.max_batch_size}, queue {limits.queue_size}",
        file=out,
    )
    admission = info.admission
    if admission.long_call_tokens:
        print(
            f"admission fair by cost; long calls over {admission.long_call_tokens} tokens hold "
            f"{admission.long_call_places} of {limits.queue_size} places, "
            f"{admission.short_call_rows} decode rows kept for short calls; "
            f"{admission.priority_metadata_key}: batch weighs {admission.batch_weight:g}; "
            f"a call without a deadline ends after {admission.max_call_seconds:g} s"
            + ("; refusals paced per connection" if admission.refusals_paced else ""),
            file=out,
        )
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
        args.feature,
        sae_id=args.sae,
        include_decoder_row=args.decoder_row,
        num_logits=args.logits,
        num_nearest=args.nearest,
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
    print(f"feature   {feature.feature}", file=out)
    print(f"label     {feature.label or '(none)'}", file=out)
    print(f"score     {_optional_score(feature.interpretation_score)}", file=out)
    if feature.provenance is not None:
        print(f"source    {feature.provenance.summary()}", file=out)
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
    if feature.nearest_features:
        print("\nnearest features by decoder cosine", file=out)
        table(
            ("cosine", "feature", "label"),
            [(f"{n.cosine:+.3f}", n.feature, n.label or "") for n in feature.nearest_features],
            out,
        )
    return None


def _search(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if (args.query is None) == (args.by_activation is None):
        raise argparse.ArgumentTypeError(
            "search needs a QUERY or --by-activation TEXT (one of the two)"
        )
    if args.by_activation is not None:
        result = client.search_by_activation(args.by_activation, limit=args.limit, sae_id=args.sae)
    else:
        result = client.search_features(args.query, limit=args.limit, sae_id=args.sae)
    if args.json:
        return print_json(result.to_dict(), out)
    if args.by_activation is not None:
        print("tokens  " + " ".join(repr(token) for token in result.activation_tokens), file=out)
        table(
            ("activation", "feature", "token", "label"),
            [
                (f"{m.score:.3f}", m.feature.feature, repr(m.token_text), m.feature.label or "")
                for m in result.matches
            ],
            out,
        )
    else:
        table(
            ("match", "relevance", "feature", "label", "label score"),
            [
                (
                    m.kind or "",
                    f"{m.score:.3f}",
                    m.feature.feature,
                    m.feature.label or "",
                    _optional_score(m.feature.interpretation_score),
                )
                for m in result.matches
            ],
            out,
        )
    if result.note:
        print(f"\n{result.note}", file=out)
    for suggestion in result.suggestions:
        print(f"  {suggestion}", file=out)
    return None


def _encode(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = client.encode(
        study_from_args(args),
        response=args.response,
        task=task_from_args(args),
        sae_id=args.sae,
        token_filter=token_filter_from_args(args),
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
    study = study_from_args(args)
    options: dict[str, Any] = {
        "response": args.response,
        "task": task_from_args(args),
        "sae_id": args.sae,
    }
    result = client.top_features(
        study,
        k=args.k,
        aggregation=args.aggregation,
        token_filter=token_filter_from_args(args),
        labelled_only=args.labelled_only,
        **options,
    )
    if args.picture_features:
        _check_features(client, result.sae_id, args.picture_features)
    if args.heatmap:
        _write_heatmap(client, study, result, args)
    if args.html:
        kinds = TEXT_KINDS | {TokenKind.IMAGE_PATCH} if args.html_images else TEXT_KINDS
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
    roles = [role for role, _ in study.images()]
    table(
        ("rank", "feature", "score", "tokens", "fires on", "label"),
        [
            (
                rank,
                f.feature,
                f"{f.score:.4g}",
                len(f.token_positions),
                ",".join(roles[g.image_index] for g in f.image_grids)
                or ("text only" if f.token_positions else "-"),
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


def _write_heatmap(
    client: Client, study: Study, result: TopFeaturesResult, args: argparse.Namespace
) -> None:
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
    # decoded here as the server decoded it: its DICOM settings, not this client's defaults
    pixels = study.images()[image_index][1].pixels(dicom=client.info().dicom.options())
    picture = pictures.top_features_heatmap(
        pixels,
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
        study_from_args(args),
        variants,
        task=task_from_args(args),
        settings=settings,
        sae_id=args.sae,
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
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        with connect(args) as client:
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


def _optional_score(score: float | None) -> str:
    return "-" if score is None else f"{score:.3f}"
