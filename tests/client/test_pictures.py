"""Heat maps and shaded text from planted activations: no server needed."""

from __future__ import annotations

import functools
import re

import numpy as np
from PIL import Image

from maira_sae.client import pictures
from maira_sae.client.results import (
    EncodeResult,
    FeatureScore,
    ImageGrid,
    ReconstructionQuality,
    Token,
    TokenActivations,
    TokenKind,
    TopFeaturesResult,
)

WIDTH, HEIGHT = 560, 600  # portrait: the crop is the middle 560 x 560, 20 rows down
ROWS = COLS = 37


def film() -> np.ndarray:
    return np.full((HEIGHT, WIDTH), 1000, dtype=np.uint16) + np.arange(WIDTH, dtype=np.uint16)


def cell_centre(row: int, col: int) -> tuple[int, int]:
    """(x, y) in the original image of the centre of a patch grid cell."""
    left, top, side = pictures.crop_box(WIDTH, HEIGHT)
    return left + int((col + 0.5) * side / COLS), top + int((row + 0.5) * side / ROWS)


@functools.cache
def plain() -> np.ndarray:
    """The picture with no activation at all."""
    return np.asarray(pictures.overlay_heatmap(film(), np.zeros((ROWS, COLS))), dtype=int)


def heat_map(rgb: np.ndarray) -> np.ndarray:
    """How far the overlay moved each pixel from the plain picture."""
    return np.abs(np.asarray(rgb, dtype=int) - plain()).max(axis=2)


def heat(rgb: np.ndarray, x: int, y: int) -> int:
    return int(heat_map(rgb)[y, x])


def test_heatmap_png_has_the_image_size_and_is_hot_where_planted(tmp_path):
    grid = np.zeros((ROWS, COLS), dtype=np.float32)
    grid[5, 30] = 4.0
    grid[20, 3] = 2.0
    path = pictures.save_png(pictures.overlay_heatmap(film(), grid), tmp_path / "h.png")
    saved = Image.open(path)
    assert saved.format == "PNG" and saved.size == (WIDTH, HEIGHT)
    rgb = np.asarray(saved.convert("RGB"))
    hottest = heat(rgb, *cell_centre(5, 30))
    assert hottest > 100 and heat(rgb, *cell_centre(20, 3)) > 40
    for cold in [(0, 0), (18, 18), (36, 36), (5, 20), (30, 30)]:
        assert heat(rgb, *cell_centre(*cold)) == 0, cold
    # The hottest pixel of the whole picture lies in the planted cell.
    coloured = heat_map(rgb)
    y, x = np.unravel_index(np.argmax(coloured), coloured.shape)
    left, top, side = pictures.crop_box(WIDTH, HEIGHT)
    assert (int((y - top) * ROWS / side), int((x - left) * COLS / side)) == (5, 30)
    # Outside the square the model saw: dimmed grey, never coloured.
    outside = np.concatenate([rgb[:top], rgb[top + side :]])
    assert (outside.max(axis=2) == outside.min(axis=2)).all()
    assert outside[..., 0].max() < 0.5 * 255


def top_result() -> TopFeaturesResult:
    def feature(index: int, row: int) -> FeatureScore:
        values = np.zeros(ROWS * COLS)
        values[row * COLS + 10] = 1.0
        grid = ImageGrid(image_index=0, rows=ROWS, cols=COLS, values=tuple(values))
        return FeatureScore(index, 1.0, f"label {index}", None, (1,), (grid,))

    no_image = FeatureScore(9, 2.0, None, None, (1,), ())
    return TopFeaturesResult("sae", 15, (no_image, feature(1, 3), feature(2, 30)), 100)


def test_several_features_make_a_grid_one_makes_the_overlay():
    top = top_result()
    sheet = pictures.top_features_heatmap(film(), top)
    assert sheet.size == (2 * 384, 384 + 18)  # two features fire on the image; one does not
    single = pictures.top_features_heatmap(film(), top, features=[2])
    assert single.size == (WIDTH, HEIGHT)
    assert heat(np.asarray(single), *cell_centre(30, 10)) > 100


def test_grid_tiles_scale_small_and_large_pictures_to_fit():
    panels = [("small", Image.new("RGB", (144, 160), "white")),
              ("large", Image.new("RGB", (1000, 500), "white"))]  # fmt: skip
    sheet = np.asarray(pictures.heatmap_grid(panels, tile=384).convert("L"))
    lit = sheet[18:] > 128  # below the titles
    small, large = lit[:, :384], lit[:, 384:]
    assert small.any(axis=1).sum() == 384 and small.any(axis=0).sum() == round(144 * 384 / 160)
    assert large.any(axis=0).sum() == 384 and large.any(axis=1).sum() == 192


def token(position: int, kind: TokenKind, text: str = "", **grid) -> Token:
    return Token(position=position, token_id=position, text=text, kind=kind, **grid)


def test_html_shades_exactly_the_tokens_that_fired():
    tokens = [
        TokenActivations(token(0, TokenKind.SPECIAL, "<s>"), (), ()),
        TokenActivations(token(1, TokenKind.PROMPT_TEXT, "Cough"), (7, 3), (2.0, 1.0)),
        TokenActivations(token(2, TokenKind.PROMPT_TEXT, " <b>&"), (3,), (0.5,)),
        TokenActivations(
            token(3, TokenKind.IMAGE_PATCH, image_index=0, grid_row=0, grid_col=0), (7,), (9.0,)
        ),
        TokenActivations(token(4, TokenKind.RESPONSE, " effusion"), (7,), (4.0,)),
        TokenActivations(token(5, TokenKind.RESPONSE, "."), (), ()),
    ]
    encoded = EncodeResult("sae", 15, tuple(tokens), 6, ReconstructionQuality(0.1, 0.9, 0.95))
    page = pictures.tokens_html(encoded, [(7, "pleural effusion"), (3, None)])
    sections = re.findall(r'<section data-feature="(\d+)">(.*?)</section>', page, re.S)
    fired = {
        int(feature): [int(p) for p in re.findall(r'class="tok fired" data-position="(\d+)"', body)]
        for feature, body in sections
    }
    assert fired == {7: [1, 4], 3: [1, 2]}
    assert "Feature 7: pleural effusion" in page and "Feature 3 (no label)" in page
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page  # token text is escaped
    assert "[1 image patches; max 9]" in page  # image patches are summarised, not shaded
    assert len(re.findall(r'class="tok[^"]*" data-position=', page)) == 2 * 5
