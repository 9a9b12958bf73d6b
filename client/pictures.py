"""Pictures of features: heat maps over the X-ray, and report tokens shaded by activation.

Heat map geometry: MAIRA-2 sees the centre-cropped square of each image (side ``min(w, h)``,
offsets ``(w - side) // 2`` and ``(h - side) // 2``), and a feature's ``ImageGrid`` covers
that square row-major. The overlay keeps the whole original image, so the PNG has the image's
size: inside the square the grid is upsampled bilinearly to the square's pixels and blended in
with an inferno-like colour map (opacity grows with activation, so silent patches show the
plain film); outside it the film is dimmed, marking what the model never saw.

Every heat map is titled (wrapped, never cut: the score comes first) and has a colour bar in
activation; the panels of one sheet share a colour scale unless asked not to, and the sheet's
caption says which. Only Pillow and numpy: the colour map is a hand-written table and text
uses Pillow's own font.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from maira_sae.client.imaging.heatmap import HEAT_COLOURS, overlay_heatmap
from maira_sae.client.results import (
    EncodeResult,
    FeatureScore,
    ImageGrid,
    TokenActivations,
    TokenKind,
    TopFeaturesResult,
)


@dataclass(frozen=True)
class HeatmapPanel:
    """One picture of a sheet: its title (wrapped, never cut) and, when ``vmax`` is set, a
    colour bar under it reading 0 .. ``vmax`` activation."""

    title: str
    picture: Image.Image
    vmax: float | None = None


_FONT_SIZE = 14
_LINE = _FONT_SIZE + 4  # pixels per line of text
_PAD = 4
_BAR = 10  # height of a colour bar's colours
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font() -> Font:
    """Pillow's own font (scalable where Pillow has FreeType): no font file needed."""
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except ImportError:  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, width: int, font: Font) -> list[str]:
    """``text`` in lines at most ``width`` pixels wide, broken at spaces (inside a word only
    when the word alone is wider). Nothing is dropped."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and font.getlength(word) > width:
            fits = max(
                (n for n in range(1, len(word)) if font.getlength(word[:n]) <= width), default=1
            )
            lines.append(word[:fits])
            word = word[fits:]
        line = word
    if line:
        lines.append(line)
    return lines or [""]


def colour_bar(width: int, vmax: float, font: Font | None = None) -> Image.Image:
    """A strip ``width`` wide: the colour map from 0 to ``vmax``, labelled in activation."""
    font = font or _font()
    strip = Image.new("RGB", (width, _BAR + _LINE + _PAD), "black")
    inner = max(width - 2 * _PAD, 1)
    ramp = HEAT_COLOURS[np.linspace(0, 255, inner).round().astype(np.intp)]
    strip.paste(Image.fromarray(np.repeat(ramp[None], _BAR, axis=0)), (_PAD, 0))
    draw = ImageDraw.Draw(strip)
    top = _BAR + 2
    high = f"{vmax:.3g}"
    unit = "activation"
    draw.text((_PAD, top), "0", fill="white", font=font)
    draw.text((width - _PAD - font.getlength(high), top), high, fill="white", font=font)
    draw.text(((width - font.getlength(unit)) / 2, top), unit, fill="white", font=font)
    return strip


def heatmap_grid(
    panels: Sequence[HeatmapPanel],
    *,
    columns: int = 3,
    tile: int | None = 384,
    caption: str | None = None,
) -> Image.Image:
    """Pictures side by side, each scaled to fit a ``tile`` square (None: one picture at its
    own size) under its wrapped title and over its colour bar; ``caption`` on top."""
    if not panels:
        raise ValueError("no pictures to lay out")
    if tile is None and len(panels) != 1:
        raise ValueError("tile=None lays out one picture at its own size")
    font = _font()
    columns = min(columns, len(panels))
    box = panels[0].picture.size if tile is None else (tile, tile)
    titles = [wrap_text(panel.title, box[0] - 2 * _PAD, font) for panel in panels]
    title_height = max(len(lines) for lines in titles) * _LINE + _PAD
    bar_height = _BAR + _LINE + _PAD if any(panel.vmax for panel in panels) else 0
    cell_height = title_height + box[1] + bar_height
    width = columns * box[0]
    caption_lines = wrap_text(caption, width - 2 * _PAD, font) if caption else []
    caption_height = len(caption_lines) * _LINE + (_PAD if caption_lines else 0)
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (width, caption_height + rows * cell_height), "black")
    draw = ImageDraw.Draw(sheet)
    for n, line in enumerate(caption_lines):
        draw.text((_PAD, _PAD + n * _LINE), line, fill="white", font=font)
    for i, (panel, lines) in enumerate(zip(panels, titles, strict=True)):
        x, y = (i % columns) * box[0], caption_height + (i // columns) * cell_height
        for n, line in enumerate(lines):
            draw.text((x + _PAD, y + _PAD + n * _LINE), line, fill="white", font=font)
        top = y + title_height
        fitted = ImageOps.contain(panel.picture, box)  # small films are enlarged to the tile
        sheet.paste(fitted, (x + (box[0] - fitted.width) // 2, top + (box[1] - fitted.height) // 2))
        if panel.vmax:
            sheet.paste(colour_bar(box[0], panel.vmax, font), (x, top + box[1]))
    return sheet


def feature_title(feature: FeatureScore) -> str:
    """The feature and its score first (a long label never hides the score), then its label."""
    return f"#{feature.feature} score {feature.score:.3g}: {feature.label or 'no label'}"


def features_on_image(
    top: TopFeaturesResult,
    image_index: int,
    features: Iterable[int] | None = None,
    limit: int = 9,
) -> list[tuple[FeatureScore, ImageGrid]]:
    """Up to ``limit`` of the result's features (of those in ``features`` if given) that fire
    on the image, with their grids, in rank order."""
    wanted = set(features) if features is not None else None
    return [
        (f, grid)
        for f in top.features
        if (wanted is None or f.feature in wanted) and (grid := f.grid_for(image_index))
    ][:limit]


def top_features_heatmap(
    pixels: np.ndarray,
    top: TopFeaturesResult,
    *,
    image_index: int = 0,
    features: Iterable[int] | None = None,
    limit: int = 9,
    columns: int = 3,
    shared_scale: bool = True,
) -> Image.Image:
    """Heat maps of the top features that fire on one image (``image_index`` among the study's
    present images), each titled and over a colour bar in activation. One feature: its overlay
    at the image's size; several: a grid whose caption says how it is scaled. With
    ``shared_scale`` (the default) a colour means the same activation in every panel, so the
    panels compare; without, each panel spans its own maximum (faint features show)."""
    panels = heatmap_panels(
        pixels, top, image_index=image_index, features=features, limit=limit,
        shared_scale=shared_scale,
    )  # fmt: skip
    if len(panels) == 1:
        return heatmap_grid(panels, columns=1, tile=None)
    scale = (
        f"one colour scale for every panel, 0 to {panels[0].vmax:.3g} activation"
        if shared_scale
        else "each panel on its own colour scale, 0 to its maximum activation (see its bar)"
    )
    return heatmap_grid(panels, columns=columns, caption=f"Image {image_index}: {scale}")


def heatmap_panels(
    pixels: np.ndarray,
    top: TopFeaturesResult,
    *,
    image_index: int = 0,
    features: Iterable[int] | None = None,
    limit: int = 9,
    shared_scale: bool = True,
) -> list[HeatmapPanel]:
    """The titled overlays ``top_features_heatmap`` lays out, each with the activation its
    colour map tops out at: the largest of all the panels, or with ``shared_scale`` False,
    the panel's own."""
    chosen = features_on_image(top, image_index, features, limit)
    if not chosen:
        raise ValueError(f"none of the selected features fires on image {image_index}")
    grids = [(feature, grid.to_array()) for feature, grid in chosen]
    shared = max(float(values.max()) for _, values in grids)
    panels = []
    for feature, values in grids:
        vmax = shared if shared_scale else float(values.max())
        overlay = overlay_heatmap(pixels, values, vmax=vmax)
        panels.append(HeatmapPanel(feature_title(feature), overlay, vmax))
    return panels


def save_png(picture: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    picture.save(path, format="PNG")
    return path


# -------------------------------------------------------------------------------------------
# Text


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
.tokens {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }}
.tok.fired {{ border-radius: 3px; }}
.tok.special {{ color: #999; }}
.legend {{ color: #555; }}
.note {{ color: #8a4b00; font-style: italic; }}
figure.patches {{ display: inline-block; vertical-align: top; margin: 0.3em 0.6em 0.3em 0;
  font-family: system-ui, sans-serif; white-space: normal; line-height: 1.2; }}
figure.patches figcaption {{ color: #666; font-size: 0.8em; max-width: 16em; }}
.grid {{ display: inline-grid; gap: 0; background: #eee; border: 1px solid #ccc; }}
</style></head><body>
<h1>{title}</h1>
{sections}
</body></html>
"""

_SHADE = "255, 115, 0"  # orange, with opacity by activation
_GRID_PIXELS = 160  # about how wide an image's patch grid is drawn


def _shade(value: float, scale: float) -> str:
    return f"background: rgba({_SHADE}, {0.15 + 0.85 * min(value / scale, 1.0):.3f})"


def _patch_grid(patches: Sequence[TokenActivations], feature: int) -> str:
    """One image's patch tokens as a small grid (one cell per patch, by grid row and column),
    fired cells shaded on the image's own scale, which the caption gives."""
    values = [item.activation(feature) for item in patches]
    rows = 1 + max(item.token.grid_row or 0 for item in patches)
    cols = 1 + max(item.token.grid_col or 0 for item in patches)
    scale = max(values) or 1.0
    cell = max(3, min(20, _GRID_PIXELS // cols))  # px: 37 x 37 patches -> 4 px each
    cells = []
    for item, value in zip(patches, values, strict=True):
        row, col = (item.token.grid_row or 0) + 1, (item.token.grid_col or 0) + 1
        style = f"grid-area: {row} / {col}"
        fired = ""
        if value > 0:
            style += f"; {_shade(value, scale)}"
            fired = f' class="fired" data-value="{value:.6g}" title="{value:.4g}"'
        cells.append(f'<span{fired} style="{style}"></span>')
    token = patches[0].token
    role = token.image_role.value if token.image_role else "image"
    caption = (
        f"{role} image {token.image_index}: {len(patches)} patches, max {max(values):.3g}"
        f"; shading up to {scale:.3g}"
    )
    return (
        f'<figure class="patches" data-image="{token.image_index}">'
        f'<div class="grid" style="grid-template-columns: repeat({cols}, {cell}px); '
        f'grid-template-rows: repeat({rows}, {cell}px)">{"".join(cells)}</div>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _no_text_note(encoded: EncodeResult, text_values: Sequence[float]) -> str:
    """A visible note for a feature that fires on no text token, so its section does not read
    as a page that failed to shade."""
    if any(value > 0 for value in text_values):
        return ""
    has_patches = any(item.token.kind is TokenKind.IMAGE_PATCH for item in encoded.tokens)
    where = (
        "its image patches are drawn below"
        if has_patches
        else "where it fires on the images is in the heat map (the CLI's --html-images draws "
        "the patches here)"
    )
    return f'<p class="note">It fires on no text token of this study: {where}.</p>'


def _token_spans(tokens: Sequence[TokenActivations], feature: int, scale: float) -> str:
    """Text tokens as spans, fired ones shaded; each image's patches as a small grid."""
    parts: list[str] = []
    run: list[TokenActivations] = []

    def flush_images() -> None:
        if run:
            parts.append(_patch_grid(run, feature))
            run.clear()

    for item in tokens:
        if item.token.kind is TokenKind.IMAGE_PATCH:
            if run and run[-1].token.image_index != item.token.image_index:
                flush_images()
            run.append(item)
            continue
        flush_images()
        value = item.activation(feature)
        classes = ["tok"]
        if item.token.kind is TokenKind.SPECIAL:
            classes.append("special")
        attributes = f'data-position="{item.token.position}"'
        if value > 0:
            classes.append("fired")
            attributes += f' data-value="{value:.6g}" title="{value:.4g}" '
            attributes += f'style="{_shade(value, scale)}"'
        parts.append(
            f'<span class="{" ".join(classes)}" {attributes}>{html.escape(item.token.text)}</span>'
        )
    flush_images()
    return "".join(parts)


def tokens_html(
    encoded: EncodeResult,
    features: Sequence[tuple[int, str | None]],
    *,
    title: str = "maira-sae feature activations",
) -> str:
    """An HTML page: for each (feature, label), the study's tokens in order, those where the
    feature fired shaded by its activation (scaled to the feature's maximum over the text).
    Image patch tokens, when the encode asked for them, show as a small grid per image, each
    shaded on its own scale (its caption gives it)."""
    sections = []
    for feature, label in features:
        text_values = [
            item.activation(feature)
            for item in encoded.tokens
            if item.token.kind is not TokenKind.IMAGE_PATCH
        ]
        scale = max(text_values, default=0.0) or 1.0
        heading = f"Feature {feature}: {label}" if label else f"Feature {feature} (no label)"
        sections.append(
            f'<section data-feature="{feature}"><h2>{html.escape(heading)}</h2>'
            f'<p class="legend">SAE {html.escape(encoded.sae_id)}, layer {encoded.layer}; '
            f"shading up to {scale:.4g}</p>{_no_text_note(encoded, text_values)}"
            f'<div class="tokens">{_token_spans(encoded.tokens, feature, scale)}</div></section>'
        )
    return _PAGE.format(title=html.escape(title), sections="\n".join(sections))
