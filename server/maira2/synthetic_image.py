"""A synthetic chest picture: the image of the server's warm-up pass, of the random demo
checkpoint's calibration, and the stock image of tests and benches. No patient data, fixed
bytes."""

from __future__ import annotations

import numpy as np


def synthetic_chest_image(height: int = 600, width: int = 560) -> np.ndarray:
    """A deterministic 8-bit greyscale picture shaped vaguely like a chest film (not square,
    so the centre crop matters): a bright mediastinum, two dark lung fields, a round heart."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / width
    image = 0.55 + 0.25 * y
    for centre_x in (0.3, 0.7):
        image -= 0.35 * np.exp(-(((x - centre_x) / 0.14) ** 2) - ((y - 0.45) / 0.25) ** 2)
    image += 0.3 * np.exp(-(((x - 0.55) / 0.12) ** 2) - ((y - 0.65) / 0.1) ** 2)
    return np.clip(image * 255, 0, 255).astype(np.uint8)
