"""A feature's activation grid drawn over a film: the one picture both the client's pages and
the server's vision explainer make (so it lives in imaging, which the server may import)."""

from __future__ import annotations

import numpy as np
from PIL import Image

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
