"""A film with a feature's heat map over it, as PNG bytes: what a vision explainer is shown.

    heat_map_png(thumbnail, heat_map, *, opacity=0.6) -> bytes

``thumbnail`` is the film as a dashboard stores it (uint8 [side, side]); ``heat_map`` the
feature's activation over the film's patch grid ([rows, cols], >= 0). Each patch is tinted red
in proportion to its activation over the map's peak; a map with no activation leaves the film
as it is.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_RED = np.array([255.0, 0.0, 0.0])


def heat_map_png(thumbnail: np.ndarray, heat_map: np.ndarray, *, opacity: float = 0.6) -> bytes:
    film = np.repeat(np.asarray(thumbnail, dtype=np.float64)[:, :, None], 3, axis=2)
    heat = np.clip(np.nan_to_num(np.asarray(heat_map, dtype=np.float64)), 0, None)
    peak = heat.max(initial=0.0)
    if peak > 0:
        side = film.shape[:2]
        scaled = Image.fromarray((heat / peak * 255).astype(np.uint8)).resize(
            (side[1], side[0]), Image.Resampling.NEAREST
        )
        weight = opacity * np.asarray(scaled, dtype=np.float64)[:, :, None] / 255
        film = film * (1 - weight) + _RED * weight
    buffer = io.BytesIO()
    Image.fromarray(film.round().astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
