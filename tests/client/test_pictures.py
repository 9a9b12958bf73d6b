"""Heat maps and shaded text from planted activations: no server needed."""

from __future__ import annotations

import functools
import re

import numpy as np
from PIL import Image

from maira_sae.client import pictures
from maira_sae.client.imaging.heatmap import crop_box
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
    left, top, side = crop_box(WIDTH, HEIGHT)
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
    left, top, side = crop_box(WIDTH, HEIGHT)
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


def find_rows(picture: Image.Image, part: Image.Image) -> int:
    """The row at which ``part`` (as wide as ``picture``) appears exactly in ``picture``."""
    whole, inner = np.asarray(picture.convert("RGB")), np.asarray(part.convert("RGB"))
    for y in range(whole.shape[0] - inner.shape[0] + 1):
        if np.array_equal(whole[y : y + inner.shape[0]], inner):
            return y
    raise AssertionError("not found")


def test_several_features_make_a_sheet_one_makes_a_titled_overlay():
    top = top_result()
    sheet = pictures.top_features_heatmap(film(), top)
    assert sheet.width == 2 * 384 and sheet.height > 384  # two fire on the image; one does not
    single = pictures.top_features_heatmap(film(), top, features=[2])
    overlay = pictures.overlay_heatmap(film(), top.features[2].image_grids[0].to_array())
    assert single.width == WIDTH and single.height > HEIGHT  # a title above, a bar below
    y = find_rows(single, overlay)  # the overlay, at the image's own size
    title = np.asarray(single.convert("L"))[:y]
    assert y > 0 and (title > 128).any()  # the title is written above it
    bar = np.asarray(single)[y + HEIGHT :]
    assert (bar[..., 0].astype(int) - bar[..., 2] > 100).any()  # the colour bar below


def top_with_strengths(*strengths: float) -> TopFeaturesResult:
    features = []
    for index, strength in enumerate(strengths):
        values = np.zeros(ROWS * COLS)
        values[index * COLS + 5] = strength
        grid = ImageGrid(image_index=0, rows=ROWS, cols=COLS, values=tuple(values))
        features.append(FeatureScore(index, strength, f"f{index}", None, (1,), (grid,)))
    return TopFeaturesResult("sae", 15, tuple(features), 100)


def test_panels_share_one_scale_by_default_and_can_each_have_their_own():
    top = top_with_strengths(8.0, 2.0, 0.5)
    shared = pictures.heatmap_panels(film(), top)
    assert [p.vmax for p in shared] == [8.0, 8.0, 8.0]
    own = pictures.heatmap_panels(film(), top, shared_scale=False)
    assert [p.vmax for p in own] == [8.0, 2.0, 0.5]
    weak = top.features[2].image_grids[0].to_array()
    expected = pictures.overlay_heatmap(film(), weak, vmax=8.0)
    assert np.array_equal(np.asarray(shared[2].picture), np.asarray(expected))
    # On the shared scale the weak feature is faint; on its own it is as hot as the strongest.
    assert heat(np.asarray(shared[2].picture), *cell_centre(2, 5)) < 0.2 * heat(
        np.asarray(own[2].picture), *cell_centre(2, 5)
    )
    sheets = [pictures.top_features_heatmap(film(), top, shared_scale=s) for s in (True, False)]
    assert sheets[0].size == sheets[1].size
    assert not np.array_equal(np.asarray(sheets[0]), np.asarray(sheets[1]))


def test_colour_bar_runs_the_colour_map_and_is_labelled():
    bar = np.asarray(pictures.colour_bar(300, 12.5))
    assert tuple(bar[0, 4]) == tuple(pictures.HEAT_COLOURS[0])
    assert tuple(bar[0, 295]) == tuple(pictures.HEAT_COLOURS[255])
    labels = bar[12:]
    assert (labels > 128).any() and (labels[:, :, 0] == labels[:, :, 2]).all()  # white text


def test_titles_wrap_and_are_never_cut():
    font = pictures._font()
    label = "#1234 score 5.67: right upper lobe consolidation with air bronchograms, volume loss"
    lines = pictures.wrap_text(label, 150, font)
    assert len(lines) > 2 and " ".join(lines) == label
    assert all(font.getlength(line) <= 150 for line in lines)
    word = pictures.wrap_text("x" * 80, 100, font)  # one word wider than a line: broken
    assert len(word) > 1 and "".join(word) == "x" * 80
    blank = Image.new("RGB", (9, 9))
    short = pictures.heatmap_grid([pictures.HeatmapPanel("#1 score 2: a", blank)])
    long = pictures.heatmap_grid([pictures.HeatmapPanel(label, blank)])
    assert long.height > short.height  # the title takes the lines it needs


def test_grid_tiles_scale_small_and_large_pictures_to_fit():
    panels = [pictures.HeatmapPanel("small", Image.new("RGB", (144, 160), "white")),
              pictures.HeatmapPanel("large", Image.new("RGB", (1000, 500), "white"))]  # fmt: skip
    sheet = np.asarray(pictures.heatmap_grid(panels, tile=384).convert("L"))
    lit = sheet[-384:] > 250  # the tiles, under the titles (no colour bars without a vmax)
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
    assert page.count('<figure class="patches" data-image="0">') == 2  # one per section
    assert len(re.findall(r'class="tok[^"]*" data-position=', page)) == 2 * 5


def test_html_draws_each_images_patches_as_a_shaded_grid():
    def patch(position: int, image: int, row: int, col: int, value: float) -> TokenActivations:
        grid = {"image_index": image, "grid_row": row, "grid_col": col}
        fired = ((7,), (value,)) if value else ((), ())
        return TokenActivations(token(position, TokenKind.IMAGE_PATCH, **grid), *fired)

    tokens = [TokenActivations(token(0, TokenKind.PROMPT_TEXT, "Frontal:"), (), ())]
    position = 1
    for image, hot in [(0, (1, 2)), (1, (0, 0))]:
        for row in range(3):
            for col in range(3):
                value = (2.0 + image) if (row, col) == hot else 0.0
                tokens.append(patch(position, image, row, col, value))
                position += 1
    tokens.append(TokenActivations(token(position, TokenKind.RESPONSE, " clear"), (7,), (1.0,)))
    encoded = EncodeResult("sae", 15, tuple(tokens), position + 1, ReconstructionQuality(0, 1, 1))
    page = pictures.tokens_html(encoded, [(7, "effusion")])
    figures = re.findall(r'<figure class="patches" data-image="(\d)">(.*?)</figure>', page, re.S)
    assert [image for image, _ in figures] == ["0", "1"]
    for (_, body), (row, col), value in zip(figures, [(1, 2), (0, 0)], [2.0, 3.0], strict=True):
        assert "repeat(3, 20px)" in body and body.count("<span") == 9
        fired = re.findall(r'class="fired" data-value="([\d.]+)" [^>]*grid-area: (\d) / (\d)', body)
        assert fired == [(f"{value:g}", str(row + 1), str(col + 1))]
        assert f"max {value:g}; shading up to {value:g}" in body
    assert page.index('data-image="1"') < page.index(" clear")  # in token order


def test_html_says_so_when_a_feature_fires_on_no_text_token():
    text = [
        TokenActivations(token(0, TokenKind.PROMPT_TEXT, "Cough"), (3,), (1.0,)),
        TokenActivations(token(1, TokenKind.RESPONSE, " clear"), (), ()),
    ]
    patch = TokenActivations(
        token(2, TokenKind.IMAGE_PATCH, image_index=0, grid_row=0, grid_col=0), (9,), (5.0,)
    )
    quality = ReconstructionQuality(0, 1, 1)
    text_only = pictures.tokens_html(EncodeResult("sae", 15, tuple(text), 3, quality), [(9, "x")])
    assert "It fires on no text token of this study" in text_only
    assert "--html-images" in text_only
    with_patches = EncodeResult("sae", 15, (*text, patch), 3, quality)
    page = pictures.tokens_html(with_patches, [(9, "x"), (3, "y")])
    sections = dict(re.findall(r'<section data-feature="(\d+)">(.*?)</section>', page, re.S))
    assert "its image patches are drawn below" in sections["9"]
    assert "no text token" not in sections["3"]
