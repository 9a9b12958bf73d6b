"""A feature's dashboard as one self-contained HTML page, in the manner of Neuronpedia's: label
and interpretation score with where they came from, density overall and by token kind, the
histogram of its non-zero activations, its logit effects, its nearest features by decoder
cosine, and its top and lower-quantile examples.

An image example is drawn as its film with the feature's heat map over it (``pictures``'
overlay, the example's patch outlined); every film of the page shares one colour scale, drawn
once beside them with its units. The film is the dashboard's thumbnail when it has one, else
the ``films`` callback's pixels (``feature_films.StudyFolder`` reads a local study folder),
else the heat map alone. A text example is its token in context, shaded on the same scale.

Everything is inline (SVG charts, PNG data URIs, one stylesheet): the page opens offline and
prints as it shows. Only numpy and Pillow.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from maira_sae.client.imaging.heatmap import HEAT_COLOURS, crop_box, overlay_heatmap
from maira_sae.client.results import (
    Feature,
    FeatureDashboard,
    FeatureExample,
    TokenKind,
    TokenLogit,
)

FilmSource = Callable[[FeatureExample], "np.ndarray | None"]
"""Greyscale pixels of an example's image, or None where it cannot be had."""

FILM_WIDTH = 200  # CSS pixels of one film on the page (drawn at twice that for print)
_KIND_NAMES = {
    TokenKind.IMAGE_PATCH: "image patches",
    TokenKind.PROMPT_TEXT: "prompt text",
    TokenKind.SPECIAL: "special tokens",
    TokenKind.RESPONSE: "report text",
}

_STYLE = """
:root { --ink: #1d1d1f; --muted: #6e6e73; --rule: #d2d2d7; --accent: #b8472a; }
* { box-sizing: border-box; }
body { font: 15px/1.5 "Charter", "Georgia", serif; color: var(--ink); margin: 0; }
main { max-width: 1080px; margin: 0 auto; padding: 36px 40px 60px; }
h1 { font-size: 26px; margin: 0 0 2px; font-weight: 600; }
h2 { font: 600 13px/1.3 system-ui, sans-serif; letter-spacing: .08em; text-transform: uppercase;
     color: var(--muted); border-bottom: 1px solid var(--rule); padding-bottom: 6px;
     margin: 34px 0 14px; }
.sub { color: var(--muted); font: 14px system-ui, sans-serif; margin: 0; }
.note { background: #f5f5f7; border-left: 3px solid var(--accent); padding: 10px 14px;
        font: 14px system-ui, sans-serif; }
.stats { display: grid; grid-template-columns: 300px 1fr; gap: 28px; align-items: start; }
table { border-collapse: collapse; font: 13.5px system-ui, sans-serif; }
td, th { padding: 3px 10px 3px 0; text-align: left; }
th { color: var(--muted); font-weight: 500; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.logits { display: grid; grid-template-columns: 1fr 1fr; gap: 28px; }
.logit td.tok { font: 13px ui-monospace, "SF Mono", Menlo, monospace; white-space: pre; }
.bar { height: 9px; border-radius: 2px; display: inline-block; vertical-align: middle; }
.bar.up { background: #3b7bbf; } .bar.down { background: #c0533a; }
.films { display: flex; flex-wrap: wrap; gap: 16px 14px; align-items: flex-start; }
figure { margin: 0; width: %(film)dpx; }
figure img { width: %(film)dpx; display: block; border-radius: 2px; background: #111; }
figure .missing { width: %(film)dpx; height: %(film)dpx; background: #f0f0f2; color: var(--muted);
                  display: flex; align-items: center; justify-content: center; text-align: center;
                  font: 12px system-ui, sans-serif; padding: 12px; }
figcaption { font: 12px/1.35 system-ui, sans-serif; color: var(--muted); margin-top: 5px; }
figcaption b { color: var(--ink); font-variant-numeric: tabular-nums; }
.scale { display: flex; gap: 10px; align-items: center; margin: 0 0 14px;
         font: 12px system-ui, sans-serif; color: var(--muted); }
.texts { display: grid; gap: 8px; }
.context { font: 13.5px/2 ui-monospace, "SF Mono", Menlo, monospace; white-space: pre-wrap; }
.context .tok { border-radius: 3px; padding: 1px 0; }
.context .example { outline: 1.5px solid var(--ink); outline-offset: 1px; font-weight: 700; }
.context .more { color: var(--muted); }
.context-caption { font: 12px system-ui, sans-serif; color: var(--muted); }
.caption { font: 13px/1.45 system-ui, sans-serif; color: var(--muted); max-width: 760px; }
"""


# -------------------------------------------------------------------------------------------
# Scales and charts


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 up to at most ``top`` (1, 2 or 5 times a power of ten)."""
    if top <= 0 or not math.isfinite(top):
        return [0.0]
    power = 10 ** math.floor(math.log10(top / count))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda step: abs(top / step - count))
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _heat_css(level: float, alpha: float = 1.0) -> str:
    r, g, b = HEAT_COLOURS[round(min(max(level, 0.0), 1.0) * 255)]
    return f"rgba({r}, {g}, {b}, {alpha:.3f})"


def colour_scale_svg(vmax: float, *, width: int = 240, label: str = "activation") -> str:
    """The heat colour map from 0 to ``vmax`` with ticks, as an inline SVG."""
    stops = "".join(
        f'<stop offset="{i / 8:.3f}" stop-color="{_heat_css(i / 8)}"/>' for i in range(9)
    )
    bar_w, left = width - 20, 8
    ticks = "".join(
        f'<line x1="{left + t / vmax * bar_w:.1f}" y1="14" x2="{left + t / vmax * bar_w:.1f}" '
        f'y2="18" stroke="#6e6e73"/><text x="{left + t / vmax * bar_w:.1f}" y="29" '
        f'text-anchor="middle">{_fmt(t)}</text>'
        for t in nice_ticks(vmax)
    )
    return (
        f'<svg class="colour-scale" width="{width}" height="34" font-size="10" '
        f'font-family="system-ui, sans-serif" fill="#6e6e73" role="img" '
        f'aria-label="colour scale, {label} 0 to {_fmt(vmax)}">'
        f'<defs><linearGradient id="heat">{stops}</linearGradient></defs>'
        f'<rect x="{left}" y="2" width="{bar_w}" height="12" fill="url(#heat)"/>{ticks}</svg>'
    )


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2 and 5 times powers of ten within [low, high]."""
    ticks = []
    for power in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10.0**power for m in (1, 2, 5) if low <= m * 10.0**power <= high]
    return ticks


def _histogram_range(
    edges: Sequence[float], counts: Sequence[int]
) -> tuple[list[float], list[int], bool] | None:
    """The bins from the first to the last non-empty one, with finite edges, and whether the
    edges are geometric (then the axis is logarithmic). None when every bin is empty."""
    filled = [i for i, count in enumerate(counts) if count]
    if not filled:
        return None
    first, last = filled[0], filled[-1]
    kept = list(edges[first : last + 2])
    positive = [e for e in edges if 0 < e < math.inf]
    ratios = [b / a for a, b in itertools.pairwise(positive)]
    geometric = len(ratios) > 2 and max(ratios) / min(ratios) < 1.01 and ratios[0] > 1.05
    if geometric:  # an open first or last bin is drawn one step wide
        kept[0] = kept[0] if kept[0] > 0 else kept[1] / ratios[0]
        kept[-1] = kept[-1] if kept[-1] < math.inf else kept[-2] * ratios[0]
    elif kept[-1] == math.inf:
        kept[-1] = kept[-2] + (kept[-2] - kept[-3] if len(kept) > 2 else 1.0)
    return kept, list(counts[first : last + 1]), geometric


def histogram_svg(
    edges: Sequence[float], counts: Sequence[int], *, width: int = 620, height: int = 190
) -> str:
    """Bars of the non-zero activations' histogram, trimmed to the non-empty bins, with
    activation (logarithmic for geometric bins) and token-count axes."""
    shown = _histogram_range(edges, counts) if len(edges) == len(counts) + 1 else None
    if shown is None:
        return '<p class="sub">No non-zero activations.</p>'
    kept, kept_counts, log_axis = shown
    left, right, top, bottom = 52, 12, 10, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    scale = math.log10 if log_axis else float
    low, high = scale(kept[0]), scale(kept[-1])
    span = (high - low) or 1.0
    peak = max(kept_counts)

    def x(value: float) -> float:
        return left + (scale(value) - low) / span * plot_w

    def y(count: float) -> float:
        return top + plot_h - count / peak * plot_h

    bars = "".join(
        f'<rect class="bin" x="{x(kept[i]):.1f}" y="{y(c):.1f}" '
        f'width="{max(x(kept[i + 1]) - x(kept[i]) - 0.8, 0.6):.1f}" '
        f'height="{top + plot_h - y(c):.1f}" fill="{_heat_css(0.2 + 0.7 * i / len(kept_counts))}" '
        f'data-count="{c}"><title>[{_fmt(kept[i])}, {_fmt(kept[i + 1])}): {c}</title></rect>'
        for i, c in enumerate(kept_counts)
    )
    ticks = _log_ticks(kept[0], kept[-1]) if log_axis else nice_ticks(kept[-1])
    if len(ticks) < 3:  # less than a decade shown: label the bin edges themselves
        ticks = kept[:: max(1, len(kept) // 6)]
    x_ticks = "".join(
        f'<line x1="{x(t):.1f}" y1="{top + plot_h}" x2="{x(t):.1f}" y2="{top + plot_h + 4}" '
        f'stroke="#6e6e73"/><text x="{x(t):.1f}" y="{top + plot_h + 16}" '
        f'text-anchor="middle">{_fmt(t)}</text>'
        for t in ticks
        if kept[0] <= t <= kept[-1]
    )
    y_ticks = "".join(
        f'<line x1="{left - 4}" y1="{y(t):.1f}" x2="{left + plot_w}" y2="{y(t):.1f}" '
        f'stroke="#ececf0"/><text x="{left - 7}" y="{y(t) + 3:.1f}" '
        f'text-anchor="end">{t:g}</text>'
        for t in nice_ticks(peak)
    )
    axis = "activation (log scale)" if log_axis else "activation"
    return (
        f'<svg class="histogram" width="{width}" height="{height}" font-size="10.5" '
        f'font-family="system-ui, sans-serif" fill="#6e6e73" role="img" '
        f'aria-label="histogram of non-zero activations">{y_ticks}{bars}'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="#6e6e73"/>{x_ticks}'
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">{axis}</text>'
        f'<text transform="translate(12 {top + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">tokens</text></svg>'
    )


# -------------------------------------------------------------------------------------------
# Sections


def _stats(dashboard: FeatureDashboard) -> str:
    rows = [
        f'<tr><th>all tokens</th><td class="num" data-density="all">'
        f"{_percent(dashboard.density)}</td></tr>"
    ]
    rows += [
        f"<tr><th>{_KIND_NAMES.get(d.kind, d.kind.value)}</th>"
        f'<td class="num" data-density="{d.kind.value}">{_percent(d.density)}</td></tr>'
        for d in dashboard.density_by_kind
    ]
    fired = sum(dashboard.histogram_counts)
    return (
        '<section class="stats-section"><h2>Density and activations</h2><div class="stats">'
        f'<div><table class="density"><tr><th colspan="2">fires on</th></tr>{"".join(rows)}'
        f'</table><p class="caption">Over {dashboard.num_tokens:,} tokens of '
        f"{dashboard.num_studies:,} studies.</p></div>"
        f'<figure class="chart" style="width:auto">'
        f"{histogram_svg(dashboard.histogram_edges, dashboard.histogram_counts)}"
        f"<figcaption>Histogram of the feature's {fired:,} non-zero activations.</figcaption>"
        "</figure></div></section>"
    )


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _logit_table(title: str, tokens: Sequence[TokenLogit], direction: str) -> str:
    if not tokens:
        return f'<div><table class="logit"><tr><th>{title}</th></tr></table></div>'
    scale = max(abs(t.logit) for t in tokens) or 1.0
    rows = "".join(
        f'<tr><td class="tok">{html.escape(repr(t.text)[1:-1])}</td>'
        f'<td class="num">{t.logit:+.3g}</td><td><span class="bar {direction}" '
        f'style="width:{abs(t.logit) / scale * 120:.0f}px"></span></td></tr>'
        for t in tokens
    )
    return (
        f'<div><table class="logit {direction}"><tr><th colspan="3">{title}</th></tr>'
        f"{rows}</table></div>"
    )


def _nearest(feature: Feature) -> str:
    if not feature.nearest_features:
        return ""
    rows = "".join(
        f'<tr><td class="num">{n.feature}</td><td class="num">{n.cosine:+.3f}</td>'
        f"<td>{html.escape(n.label or '')}</td></tr>"
        for n in feature.nearest_features
    )
    return (
        '<section class="nearest"><h2>Nearest features</h2><table>'
        "<tr><th>feature</th><th>cosine</th><th>label</th></tr>"
        f"{rows}</table>"
        '<p class="caption">The features whose decoder rows point most nearly the same way '
        "(cosine of the two rows).</p></section>"
    )


def _logits(feature: Feature) -> str:
    if not (feature.promoted_tokens or feature.suppressed_tokens):
        return ""
    return (
        '<section class="logit-effects"><h2>Logit effects</h2><div class="logits">'
        f"{_logit_table('promoted', feature.promoted_tokens, 'up')}"
        f"{_logit_table('suppressed', feature.suppressed_tokens, 'down')}</div>"
        '<p class="caption">The decoder direction through the model\'s final norm and LM head: '
        "the change of each token's logit per unit of the direction.</p></section>"
    )


def _png_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _film_pixels(example: FeatureExample, films: FilmSource | None) -> np.ndarray | None:
    if example.thumbnail_png:
        return np.asarray(Image.open(io.BytesIO(example.thumbnail_png)).convert("L"))
    return films(example) if films is not None else None


def _outline_patch(picture: Image.Image, example: FeatureExample, rows: int, cols: int) -> None:
    """A thin white box around the example's patch, inside the centre crop the grid covers."""
    if example.grid_row is None or example.grid_col is None:
        return
    left, top, side = crop_box(picture.width, picture.height)
    cell_w, cell_h = side / cols, side / rows
    x0, y0 = left + example.grid_col * cell_w, top + example.grid_row * cell_h
    width = max(1, round(picture.width / 220))
    ImageDraw.Draw(picture).rectangle(
        (x0 - width, y0 - width, x0 + cell_w + width, y0 + cell_h + width),
        outline="white",
        width=width,
    )


def film_picture(
    example: FeatureExample,
    vmax: float,
    films: FilmSource | None = None,
    grid_shape: tuple[int, int] | None = None,
) -> Image.Image | None:
    """The example's film with the heat map over it (or the heat map alone, on black), drawn
    ``2 * FILM_WIDTH`` wide; None without a heat map or a film. Without a heat map the
    example's patch is still outlined when ``grid_shape`` (rows, cols) is known."""
    pixels = _film_pixels(example, films)
    grid = example.heatmap.to_array() if example.heatmap is not None else None
    if grid is None and pixels is None:
        return None
    if grid is None:  # a film but no heat map: the film, the patch outlined
        assert pixels is not None
        grid = np.zeros((1, 1), dtype=np.float32)
    if pixels is None:
        pixels = np.zeros((grid.shape[0] * 8, grid.shape[1] * 8), dtype=np.uint8) + 1
        pixels[0, 0] = 0  # a flat dark film: the overlay normalises pixels to 0..255
    picture = overlay_heatmap(pixels, grid, vmax=vmax)
    scale = 2 * FILM_WIDTH / picture.width
    picture = picture.resize(
        (2 * FILM_WIDTH, max(1, round(picture.height * scale))), Image.Resampling.LANCZOS
    )
    shape = (example.heatmap.rows, example.heatmap.cols) if example.heatmap else grid_shape
    if shape is not None:
        _outline_patch(picture, example, *shape)
    return picture


def _where(example: FeatureExample) -> str:
    if example.kind is TokenKind.IMAGE_PATCH:
        return f"image {example.image_index}, patch ({example.grid_row}, {example.grid_col})"
    return f"{_KIND_NAMES.get(example.kind, example.kind.value)}, token {example.position}"


def _caption(example: FeatureExample) -> str:
    quantile = f" · q{example.quantile:.2f}" if example.quantile is not None else ""
    return (
        f"<figcaption><b>{example.value:.3g}</b>{quantile} · {html.escape(example.study_id)}"
        f"<br>{_where(example)}</figcaption>"
    )


def _film_figure(
    example: FeatureExample, vmax: float, films: FilmSource | None, grid: tuple[int, int] | None
) -> str:
    picture = film_picture(example, vmax, films, grid)
    data = f'data-study="{html.escape(example.study_id)}" data-value="{example.value:.6g}"'
    if picture is None:
        body = (
            '<div class="missing">film not in the dashboard; name a local study folder '
            "(--studies) to draw it</div>"
        )
    else:
        alt = f"heat map over the film of {example.study_id}"
        body = f'<img src="{_png_uri(picture)}" alt="{html.escape(alt)}">'
    return f'<figure class="film" {data}>{body}{_caption(example)}</figure>'


def _context(example: FeatureExample, vmax: float) -> str:
    spans = []
    for token in example.context:
        level = token.value / vmax if vmax > 0 else 0.0
        style = f' style="background:{_heat_css(level, 0.2 + 0.7 * level)}"' if token.value else ""
        classes = "tok example" if token.is_example else "tok"
        spans.append(
            f'<span class="{classes}" title="{token.value:.4g}"{style}>'
            f"{html.escape(token.text)}</span>"
        )
    ellipsis = '<span class="more">…</span>'
    text = (
        f"{ellipsis}{''.join(spans)}{ellipsis}"
        if spans
        else '<span class="tok example">(no context stored)</span>'
    )
    return (
        f'<div class="text-example" data-study="{html.escape(example.study_id)}" '
        f'data-value="{example.value:.6g}"><div class="context">{text}</div>'
        f'<div class="context-caption"><b>{example.value:.3g}</b> · '
        f"{html.escape(example.study_id)} · {_where(example)}</div></div>"
    )


def examples_vmax(examples: Sequence[FeatureExample]) -> float:
    """The shared top of the colour scale: the largest activation any example shows."""
    values = [e.value for e in examples]
    values += [max(e.heatmap.values, default=0.0) for e in examples if e.heatmap is not None]
    values += [t.value for e in examples for t in e.context]
    return max(values, default=0.0) or 1.0


def _examples(
    title: str,
    examples: Sequence[FeatureExample],
    vmax: float,
    films: FilmSource | None,
    grid_shape: tuple[int, int] | None,
) -> str:
    if not examples:
        return ""
    images = [e for e in examples if e.kind is TokenKind.IMAGE_PATCH]
    texts = [e for e in examples if e.kind is not TokenKind.IMAGE_PATCH]
    parts = [f'<section class="examples" data-examples="{len(examples)}"><h2>{title}</h2>']
    parts.append(
        f'<div class="scale">{colour_scale_svg(vmax)}<span>activation (0 to {_fmt(vmax)}, '
        "one scale for every film and text on this page)</span></div>"
    )
    if images:
        figures = "".join(_film_figure(e, vmax, films, grid_shape) for e in images)
        caption = _films_caption(images, grid_shape)
        parts.append(f'<div class="films">{figures}</div><p class="caption">{caption}</p>')
    if texts:
        parts.append('<div class="texts">' + "".join(_context(e, vmax) for e in texts) + "</div>")
    parts.append("</section>")
    return "".join(parts)


# -------------------------------------------------------------------------------------------
# The page


def _films_caption(images: Sequence[FeatureExample], grid: tuple[int, int] | None) -> str:
    cells = f"{grid[0]} × {grid[1]} " if grid else ""
    if any(e.heatmap is not None for e in images):
        drawn = (
            f"Each film with the feature's activation over its {cells}patch grid (the centre "
            "square the model sees; outside it the film is dimmed). Opacity and colour grow "
            "with the activation; "
        )
    else:
        drawn = "The dashboard stores no heat maps for these examples: the films alone; "
    return (
        f"{drawn}the white box marks the example's patch. Captions: activation · study · "
        "image and patch (row, column)."
    )


def _grid_shape(dashboard: FeatureDashboard) -> tuple[int, int] | None:
    examples = (*dashboard.top_examples, *dashboard.quantile_examples)
    grid = next((e.heatmap for e in examples if e.heatmap is not None), None)
    return (grid.rows, grid.cols) if grid is not None else None


def feature_page_html(
    feature: Feature,
    *,
    sae_id: str = "",
    films: FilmSource | None = None,
    grid_shape: tuple[int, int] | None = None,
) -> str:
    """The feature's dashboard page (see the module's docstring). ``films`` gives the pixels
    of an example's image where the dashboard stores no thumbnail; ``grid_shape`` (the model's
    patch grid, rows and columns) places an example's patch where no heat map shows it (by
    default the shape of the page's heat maps)."""
    label = feature.label or "no label"
    score = (
        f"interpretation score {feature.interpretation_score:.3f}"
        if feature.interpretation_score is not None
        else "no interpretation score"
    )
    source = (
        f'<p class="sub provenance">Explanation: {html.escape(feature.provenance.summary())}</p>'
        if feature.provenance is not None
        else ""
    )
    header = (
        f'<header><h1>Feature {feature.feature}: {html.escape(label)}</h1><p class="sub">'
        f"{'SAE ' + html.escape(sae_id) + ' · ' if sae_id else ''}{score} · "
        f"decoder norm {feature.decoder_norm:.3g}</p>{source}</header>"
    )
    dashboard = feature.dashboard
    if dashboard is None:
        note = html.escape(feature.dashboard_note or "This SAE has no dashboard.")
        body = f'<p class="note no-dashboard">{note}</p>{_logits(feature)}{_nearest(feature)}'
    else:
        vmax = examples_vmax([*dashboard.top_examples, *dashboard.quantile_examples])
        grid = grid_shape or _grid_shape(dashboard)
        body = (
            _stats(dashboard)
            + _logits(feature)
            + _nearest(feature)
            + _examples("Top activations", dashboard.top_examples, vmax, films, grid)
            + _examples("Lower quantiles", dashboard.quantile_examples, vmax, films, grid)
        )
    title = html.escape(f"Feature {feature.feature}: {label}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE % {'film': FILM_WIDTH}}</style></head>"
        f'<body><main data-feature="{feature.feature}">{header}{body}</main></body></html>\n'
    )
