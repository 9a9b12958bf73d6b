"""Decoded pixels -> MAIRA-2 ``pixel_values``, the way MAIRA-2's own processor does it.

MAIRA-2's processor converts each image to greyscale, min-max rescales it to 0..255 and casts to
``uint8`` (truncating), then hands it to a ``BitImageProcessor``: resize the shortest edge
(bicubic, by Pillow, on the 8-bit image), centre-crop, scale by 1/255, normalise per channel.
We do the same steps with the same arithmetic, so our output equals transformers' PIL
``BitImageProcessor`` on the same 8-bit image (checked in the tests). The one deliberate
difference is upstream of this module: we take greyscale at the stored depth (16-bit, DICOM
float) before the min-max, where the original's ``convert("L")`` clipped to 8 bits first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from maira_sae.client.imaging.decode import to_greyscale

__all__ = [
    "MAX_ASPECT_RATIO",
    "ImageGeometry",
    "ImagePreprocessingSettings",
    "PreprocessedImage",
    "preprocess_image",
]

# Long side / short side past which an image is refused (the server's own, configurable
# limits.max_image_aspect_ratio is checked earlier and is normally lower).
MAX_ASPECT_RATIO = 32.0

_PROCESSOR_TYPE = "BitImageProcessor"
_REQUIRED_FLAGS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")


@dataclass(frozen=True)
class ImagePreprocessingSettings:
    """The ``BitImageProcessor`` settings MAIRA-2 uses; defaults are the real checkpoint's.

    Only the shape MAIRA-2 uses is supported: resize the shortest edge, then a square centre
    crop of that same size. Grounded boxes are relative to that crop, and mapping them back to
    the original image (``ImageGeometry``) relies on the crop being the whole short side.
    ``resample`` is a Pillow filter number (3 = bicubic).
    """

    shortest_edge: int = 518
    crop_height: int = 518
    crop_width: int = 518
    mean: tuple[float, float, float] = (0.5307, 0.5307, 0.5307)
    std: tuple[float, float, float] = (0.2583, 0.2583, 0.2583)
    rescale_factor: float = 1 / 255
    resample: int = 3

    def __post_init__(self) -> None:
        if self.shortest_edge < 1:
            raise ValueError(f"shortest_edge must be positive, got {self.shortest_edge}")
        if not self.crop_height == self.crop_width == self.shortest_edge:
            raise ValueError(
                f"crop {self.crop_height}x{self.crop_width} must be a square of the shortest "
                f"edge {self.shortest_edge}: grounded boxes are mapped back through that crop"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values (one per channel)")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if not (math.isfinite(self.rescale_factor) and self.rescale_factor > 0):
            raise ValueError(f"rescale_factor must be positive, got {self.rescale_factor}")
        try:
            Image.Resampling(self.resample)
        except ValueError as exc:
            raise ValueError(f"resample {self.resample} is not a Pillow filter") from exc

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ImagePreprocessingSettings:
        """Read a Hugging Face ``preprocessor_config.json`` written for a BitImageProcessor."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            config = json.loads(text)
            if not isinstance(config, dict):
                raise ValueError("expected a JSON object")
            return cls.from_json_dict(config)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: unsupported image preprocessor config: {exc}") from exc

    @classmethod
    def from_json_dict(cls, config: dict[str, Any]) -> ImagePreprocessingSettings:
        """Settings from the parsed JSON; missing keys take MAIRA-2's values."""
        processor_type = config.get("image_processor_type", _PROCESSOR_TYPE)
        if not str(processor_type).startswith(_PROCESSOR_TYPE):
            raise ValueError(f"image_processor_type {processor_type!r} is not {_PROCESSOR_TYPE}")
        for flag in _REQUIRED_FLAGS:
            if config.get(flag, True) is not True:
                raise ValueError(f"{flag}={config[flag]!r} is not supported (MAIRA-2 needs true)")
        defaults = cls()
        crop_height, crop_width = _crop_size(config.get("crop_size", defaults.crop_height))
        return cls(
            shortest_edge=_shortest_edge(config.get("size", defaults.shortest_edge)),
            crop_height=crop_height,
            crop_width=crop_width,
            mean=_per_channel(config.get("image_mean", defaults.mean), "image_mean"),
            std=_per_channel(config.get("image_std", defaults.std), "image_std"),
            rescale_factor=float(config.get("rescale_factor", defaults.rescale_factor)),
            resample=int(config.get("resample", defaults.resample)),
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content that ``from_file`` and transformers read."""
        return {
            "image_processor_type": _PROCESSOR_TYPE,
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }


def _shortest_edge(size: object) -> int:
    if isinstance(size, int):  # legacy form: an int means the shortest edge for this processor
        return size
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        return int(size["shortest_edge"])
    raise ValueError(
        f"size {size!r} is not supported: MAIRA-2 resizes the shortest edge, "
        'keeping the aspect ratio ({"shortest_edge": N})'
    )


def _crop_size(crop: object) -> tuple[int, int]:
    if isinstance(crop, int):
        return crop, crop
    if isinstance(crop, dict) and set(crop) == {"height", "width"}:
        return int(crop["height"]), int(crop["width"])
    raise ValueError(f'crop_size {crop!r} is not supported (expected {{"height", "width"}})')


def _per_channel(value: object, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        first, second, third = (float(v) for v in value)
        return first, second, third
    raise ValueError(f"{key} {value!r} must be a number or a list of three numbers")


@dataclass(frozen=True)
class ImageGeometry:
    """Where the model's square crop lies in the original image, in original pixels.

    MAIRA-2 maps a grounded box back by taking the crop side as the original short side and
    centring it with floor division; we record exactly those numbers (see the facts sheet).
    """

    original_width: int
    original_height: int
    crop_side: int
    crop_left: int
    crop_top: int

    @classmethod
    def for_size(cls, width: int, height: int) -> ImageGeometry:
        side = min(width, height)
        return cls(
            original_width=width,
            original_height=height,
            crop_side=side,
            crop_left=(width - side) // 2,
            crop_top=(height - side) // 2,
        )


@dataclass(frozen=True)
class PreprocessedImage:
    """``pixel_values`` is ``[3, S, S]`` float32 with three identical channels."""

    pixel_values: torch.Tensor
    geometry: ImageGeometry


def preprocess_image(pixels: np.ndarray, settings: ImagePreprocessingSettings) -> PreprocessedImage:
    """Turn decoded pixels (``[H, W]`` or ``[H, W, C]``, any depth) into model input."""
    grey = to_greyscale(pixels)
    height, width = grey.shape
    if height == 0 or width == 0:
        raise ValueError(f"image has no pixels (shape {pixels.shape})")
    resized = _resize_shortest_edge(_min_max_uint8(grey), settings)
    cropped = _center_crop(resized, settings.crop_height, settings.crop_width)
    # The same arithmetic as transformers: rescale in float64, then float32 for normalising.
    scaled = (cropped.astype(np.float64) * settings.rescale_factor).astype(np.float32)
    mean = np.asarray(settings.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(settings.std, dtype=np.float32)[:, None, None]
    normalised = (scaled[None, :, :] - mean) / std
    return PreprocessedImage(
        pixel_values=torch.from_numpy(np.ascontiguousarray(normalised)),
        geometry=ImageGeometry.for_size(width, height),
    )


def _min_max_uint8(grey: np.ndarray) -> np.ndarray:
    """MAIRA-2's per-image rescale to 0..255: float64, then truncation to uint8.

    The original divides by zero on a constant image; that image becomes all zeros here.
    """
    values = grey.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or infinite values")
    values -= values.min()
    peak = values.max()
    if peak > 0:
        values /= peak
        values *= 255
    return values.astype(np.uint8)


def _resize_shortest_edge(image: np.ndarray, settings: ImagePreprocessingSettings) -> np.ndarray:
    """Pillow resize of the 8-bit image; output size rounded like transformers (``int()``).

    The short side is scaled to ``shortest_edge``, so a thin strip would grow without bound
    (1 x 16384 to 518 x 8.5 M pixels): past ``MAX_ASPECT_RATIO`` it is refused instead.
    """
    height, width = image.shape
    short, long = (width, height) if width <= height else (height, width)
    if long > MAX_ASPECT_RATIO * short:
        raise ValueError(
            f"image is {width}x{height}, an aspect ratio over {MAX_ASPECT_RATIO:g}: resizing its "
            "short side to the model's size would take too much memory"
        )
    new_short, new_long = settings.shortest_edge, int(settings.shortest_edge * long / short)
    new_height, new_width = (new_long, new_short) if width <= height else (new_short, new_long)
    resized = Image.fromarray(image).resize(
        (new_width, new_height), resample=Image.Resampling(settings.resample)
    )
    return np.asarray(resized)


def _center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """transformers' ``center_crop`` offsets; settings guarantee the crop fits."""
    height, width = image.shape
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return image[top : top + crop_height, left : left + crop_width]
