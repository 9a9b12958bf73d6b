"""MAIRA-2 image preprocessing: shapes, values, crop geometry, config files, and agreement with
transformers' own BitImageProcessor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maira_sae.server.maira2.image_preprocessing import (
    ImageGeometry,
    ImagePreprocessingSettings,
    preprocess_image,
)

SETTINGS = ImagePreprocessingSettings()
MEAN, STD = SETTINGS.mean[0], SETTINGS.std[0]
RNG = np.random.default_rng(7)


def test_output_shape_dtype_and_identical_channels():
    out = preprocess_image(RNG.integers(0, 4096, (600, 500), dtype=np.uint16), SETTINGS)
    values = out.pixel_values
    assert values.shape == (3, 518, 518)
    assert values.dtype == torch.float32
    assert torch.equal(values[0], values[1]) and torch.equal(values[1], values[2])
    assert values.min() >= (0 - MEAN) / STD - 1e-6
    assert values.max() <= (1 - MEAN) / STD + 1e-6


def test_constant_image_gives_zeros_before_normalising_not_nan():
    values = preprocess_image(np.full((300, 300), 1234.5, dtype=np.float32), SETTINGS).pixel_values
    assert torch.isfinite(values).all()
    torch.testing.assert_close(values, torch.full_like(values, (0 - MEAN) / STD))


def test_one_pixel_image():
    out = preprocess_image(np.array([[9]], dtype=np.uint8), SETTINGS)
    assert out.pixel_values.shape == (3, 518, 518)
    assert out.geometry == ImageGeometry(1, 1, 1, 0, 0)


def test_non_finite_pixels_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        preprocess_image(np.array([[0.0, np.nan]], dtype=np.float32), SETTINGS)


@pytest.mark.parametrize(
    ("marker_columns", "kept"), [(slice(0, 40), False), (slice(180, 220), True)]
)
def test_non_square_image_is_centre_cropped(marker_columns, kept):
    image = np.zeros((200, 400), dtype=np.uint8)  # landscape: the crop drops 100 columns a side
    image[80:120, marker_columns] = 255
    values = preprocess_image(image, SETTINGS).pixel_values
    background = (0 - MEAN) / STD
    assert bool((values > background + 0.5).any()) is kept


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (613, 700, ImageGeometry(613, 700, 613, 0, 43)),
        (1001, 500, ImageGeometry(1001, 500, 500, 250, 0)),
        (512, 512, ImageGeometry(512, 512, 512, 0, 0)),
    ],
)
def test_geometry(width, height, expected):
    assert ImageGeometry.for_size(width, height) == expected
    pixels = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    assert preprocess_image(pixels, SETTINGS).geometry == expected


def test_colour_input_is_reduced_like_pillow_l():
    rgba = RNG.integers(0, 256, (50, 60, 4), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgba).convert("L"))
    torch.testing.assert_close(
        preprocess_image(rgba, SETTINGS).pixel_values,
        preprocess_image(grey, SETTINGS).pixel_values,
        rtol=0,
        atol=0,
    )


# --- settings files ---------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    settings = ImagePreprocessingSettings(
        shortest_edge=28, crop_height=28, crop_width=28, mean=(0.1, 0.2, 0.3), resample=2
    )
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(settings.to_json_dict()))
    assert ImagePreprocessingSettings.from_file(path) == settings
    assert settings.to_json_dict()["image_processor_type"] == "BitImageProcessor"


def test_from_file_accepts_legacy_ints_and_scalar_mean(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"size": 518, "crop_size": 518, "image_mean": 0.5307}))
    assert ImagePreprocessingSettings.from_file(path) == SETTINGS


@pytest.mark.parametrize(
    ("change", "problem"),  # a change merged into a valid config, or a whole replacement
    [
        ({"size": {"height": 518, "width": 518}}, "shortest edge"),
        ({"do_center_crop": False}, "do_center_crop=False is not supported"),
        ({"crop_size": {"height": 400, "width": 400}}, "must be a square of the shortest edge"),
        ({"image_std": [0.2, 0.2]}, "image_std"),
        ({"image_std": [0.2, 0.0, 0.2]}, "std values must be positive"),
        ({"image_processor_type": "CLIPImageProcessor"}, "is not BitImageProcessor"),
        ({"resample": 42}, "not a Pillow filter"),
        ([], "expected a JSON object"),
    ],
)
def test_from_file_refuses_unsupported_configs(tmp_path, change, problem):
    path = tmp_path / "preprocessor_config.json"
    config = {**SETTINGS.to_json_dict(), **change} if isinstance(change, dict) else change
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=problem) as info:
        ImagePreprocessingSettings.from_file(path)
    assert str(path) in str(info.value)


# --- agreement with transformers --------------------------------------------------------------


def maira2_normalise(image: Image.Image) -> Image.Image:
    """MAIRA-2's own ``_normalize_image``: greyscale, min-max to 0..255, truncate to uint8."""
    values = np.array(image.convert("L")).astype(float)
    values -= values.min()
    values /= values.max()
    values *= 255
    return Image.fromarray(values.astype(np.uint8)).convert("L")


@pytest.mark.parametrize("settings", [SETTINGS, ImagePreprocessingSettings(28, 28, 28)])
@pytest.mark.parametrize("shape", [(700, 613, 3), (333, 517), (518, 518), (40, 90)])
def test_matches_transformers_bit_image_processor(tmp_path, settings, shape):
    """Bit-identical in practice: same Pillow resize on the same 8-bit image, same float steps.

    The tolerance (1e-6 absolute, about 2e-7 of one grey level after normalising) only leaves
    room for float rounding, not for a different resize or crop.
    """
    bit = pytest.importorskip("transformers.models.bit.image_processing_pil_bit")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings.to_json_dict()))
    reference_processor = bit.BitImageProcessorPil.from_pretrained(tmp_path)

    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 3, : shape[1] // 4] = 17  # a flat region, so not only noise is compared
    reference = reference_processor(
        images=maira2_normalise(Image.fromarray(pixels)), return_tensors="pt"
    )["pixel_values"][0]
    ours = preprocess_image(pixels, settings).pixel_values
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
