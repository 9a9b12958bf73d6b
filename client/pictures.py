"""Pictures of features: heat maps over the X-ray, and report tokens shaded by activation.

Heat map geometry: MAIRA-2 sees the centre-cropped square of each image (side ``min(w, h)``,
offsets ``(w - side) // 2`` and ``(h - side) // 2``), and a feature's ``ImageGrid`` covers
that square row-major. The overlay keeps the whole original image, so the PNG has the image's
size: inside the square the grid is upsampled bilinearly to the square's pixels and blended in
with an inferno-like colour map (opacity grows with activation, so silent patches show the
plain film); outside it the film is dimmed, marking what the model never saw.

Only Pillow and numpy: the colour map is a hand-written table and titles use Pillow's font.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from maira_sae.client.results import (
    EncodeResult,
    FeatureScore,
    TokenActivations,
    TokenKind,
    TopFeaturesResult,
)

# The saturated middle of matplotlib's inferno (purple, red, orange, gold), sampled at seven
# points and interpolated. Its near-black and pale-yellow ends are left out: they vanish on
# dark lung fields and on bright bone respectively.
_COLOUR_POINTS = np.array(
    [
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (250, 175, 25),
        (249, 201, 50),
    ],
    dtype=np.float64,
)
_STOPS = np.linspace(0.0, 1.0, len(_COLOUR_POINTS))
HEAT_COLOURS = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), _STOPS, _COLOUR_POINTS[:, c]) for c in range(3)],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)
"""A 256 x 3 uint8 lookup table from the weakest (0) to the strongest (255) activation."""

OUTSIDE_CROP_DIM = 0.45  # brightness kept outside the square the model saw


def crop_box(width: int, height: int) -> tuple[int, int, int]:
    """The centre-cropped square the model sees: (left, top, side)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def _film(pixels: np.ndarray) -> np.ndarray:
    """Greyscale pixels of any depth as float 0..255, min-max normalised like MAIRA-2's input."""
    values = np.asarray(pixels, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected greyscale pixels [H, W], got shape {values.shape}")
    low, high = values.min(), values.max()
    return (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)


def overlay_heatmap(
    pixels: np.ndarray,
    grid: np.ndarray,
    *,
    vmax: float | None = None,
    opacity: float = 0.8,
) -> Image.Image:
    """An RGB picture of the image's size with ``grid`` (rows x cols, e.g. 37 x 37) over its
    centre crop. Activations are scaled by ``vmax`` (default: the grid's maximum), so pass
    one shared ``vmax`` to compare several features on one scale."""
    film = _film(pixels)
    height, width = film.shape
    left, top, side = crop_box(width, height)
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"expected a 2-D activation grid, got shape {grid.shape}")
    scale = vmax if vmax is not None else float(grid.max())
    heat = np.asarray(Image.fromarray(grid).resize((side, side), Image.Resampling.BILINEAR))
    level = np.clip(heat / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(heat)
    alpha = (opacity * level)[:, :, None]
    colour = HEAT_COLOURS[np.round(level * 255).astype(np.intp)].astype(np.float64)

    rgb = np.repeat(film[:, :, None] * OUTSIDE_CROP_DIM, 3, axis=2)
    square = np.repeat(film[top : top + side, left : left + side, None], 3, axis=2)
    rgb[top : top + side, left : left + side] = square * (1 - alpha) + colour * alpha
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def heatmap_grid(
    panels: Sequence[tuple[str, Image.Image]], *, columns: int = 3, tile: int = 384
) -> Image.Image:
    """Several pictures side by side, each scaled to fit a ``tile`` square under its title."""
    if not panels:
        raise ValueError("no pictures to lay out")
    title_height = 18
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + title_height)), "black")
    draw = ImageDraw.Draw(sheet)
    for i, (title, picture) in enumerate(panels):
        x, y = (i % columns) * tile, (i // columns) * (tile + title_height)
        fitted = ImageOps.contain(picture, (tile, tile))  # small films are enlarged to the tile
        sheet.paste(fitted, (x + (tile - fitted.width) // 2, y + title_height))
        draw.text((x + 4, y + 3), _fit(title, tile // 7), fill="white")
    return sheet


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def feature_title(feature: FeatureScore) -> str:
    label = feature.label or "no label"
    return f"#{feature.feature} {label} ({feature.score:.3g})"


def top_features_heatmap(
    pixels: np.ndarray,
    top: TopFeaturesResult,
    *,
    image_index: int = 0,
    features: Iterable[int] | None = None,
    limit: int = 9,
    columns: int = 3,
) -> Image.Image:
    """Heat maps of the top features that fire on one image (``image_index`` among the study's
    present images). One feature: its overlay at the image's size; several: a titled grid."""
    wanted = set(features) if features is not None else None
    chosen = [
        (f, grid)
        for f in top.features
        if (wanted is None or f.feature in wanted) and (grid := f.grid_for(image_index))
    ][:limit]
    if not chosen:
        raise ValueError(f"none of the selected features fires on image {image_index}")
    overlays = [(feature_title(f), overlay_heatmap(pixels, g.to_array())) for f, g in chosen]
    if len(overlays) == 1:
        return overlays[0][1]
    return heatmap_grid(overlays, columns=columns)


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
.image {{ color: #666; font-style: italic; }}
.legend {{ color: #555; }}
</style></head><body>
<h1>{title}</h1>
{sections}
</body></html>
"""

_SHADE = "255, 115, 0"  # orange, with opacity by activation


def _shade(value: float, scale: float) -> str:
    return f"background: rgba({_SHADE}, {0.15 + 0.85 * min(value / scale, 1.0):.3f})"


def _token_spans(tokens: Sequence[TokenActivations], feature: int, scale: float) -> str:
    """Text tokens as spans, fired ones shaded; each run of image patches as one note."""
    parts: list[str] = []
    run: list[float] = []

    def flush_images() -> None:
        if run:
            parts.append(
                f'<span class="image">[{len(run)} image patches; max {max(run):.3g}]</span>'
            )
            run.clear()

    for item in tokens:
        value = item.activation(feature)
        if item.token.kind is TokenKind.IMAGE_PATCH:
            run.append(value)
            continue
        flush_images()
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
    feature fired shaded by its activation (scaled to the feature's maximum over the text)."""
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
            f"shading up to {scale:.4g}</p>"
            f'<div class="tokens">{_token_spans(encoded.tokens, feature, scale)}</div></section>'
        )
    return _PAGE.format(title=html.escape(title), sections="\n".join(sections))
