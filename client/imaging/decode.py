"""Decode PNG, JPEG and DICOM bytes into greyscale pixels at full depth.

It needs numpy and Pillow; DICOM (``dicom.py``, where what is accepted and applied is
described) imports pydicom only when a DICOM file arrives, so the client works without it until
then. Never torch.

What MAIRA-2 does next (per image: greyscale, then min-max to 0..255) throws away the absolute
scale, so the decoder keeps the stored depth: 8-bit stays ``uint8``, 16-bit PNG stays ``uint16``,
DICOM comes back as ``float32`` after its modality and VOI transforms.

Error messages name the image and the problem, never pixel values or DICOM attributes that
could hold patient data.
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from maira_sae.client.imaging.dicom import DicomOptions

__all__ = [
    "DecodeLimits",
    "DimensionsCheck",
    "ImageDecodeError",
    "MediaType",
    "check_dimensions",
    "decode_image",
    "load_image_file",
    "sniff_media_type",
    "to_greyscale",
]


DimensionsCheck = Callable[[int, int], None]
"""``check(width, height)``, called with an image's header dimensions before its pixels are
decoded; it may raise to stop the decoding."""


class MediaType(enum.Enum):
    PNG = "image/png"
    JPEG = "image/jpeg"
    DICOM = "application/dicom"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"


def sniff_media_type(data: bytes) -> MediaType | None:
    """The media type the leading bytes announce, or None when they match none we decode.
    DICOM is recognised by "DICM" after the 128-byte preamble, or, for a file written without
    the preamble, by a first element that looks like DICOM's (``dicom.looks_like_bare_dicom``).
    """
    from maira_sae.client.imaging.dicom import looks_like_bare_dicom  # dicom imports this module

    if data.startswith(_PNG_SIGNATURE):
        return MediaType.PNG
    if data.startswith(_JPEG_SIGNATURE):
        return MediaType.JPEG
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)] == _DICOM_MAGIC:
        return MediaType.DICOM
    if looks_like_bare_dicom(data):
        return MediaType.DICOM
    return None


class ImageDecodeError(ValueError):
    """An image that cannot be used: the message says which image and why, without its content."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class ImageTooLargeError(ImageDecodeError):
    """A well-formed image past a size limit; ``limit`` names the DecodeLimits field."""

    def __init__(self, name: str, problem: str, limit: str) -> None:
        super().__init__(name, problem)
        self.limit = limit


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked before any pixel is decoded.

    The defaults admit every real chest X-ray (detectors top out near 4300 x 4300, about 18.5 M
    pixels, and files of a few tens of MiB) with room to spare, while keeping one decoded image
    under a few hundred MiB even at the float64 precision used later. ``max_pixels`` is checked
    against the header; Pillow's own decompression-bomb guard (about 179 M pixels) still refuses
    anything larger whatever is set here.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 16384
    min_side: int = 1

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_side, self.min_side) < 1:
            raise ValueError(f"decode limits must be positive: {self}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} exceeds max_side {self.max_side}")

    @property
    def max_decoded_bytes(self) -> int:
        """The most bytes a decoder may produce for one image: ``max_pixels`` at 8 bytes each
        (the float64 footprint the limits were sized for). DICOM frames and deflated data
        sets are held to it before they are decoded or inflated."""
        return self.max_pixels * 8


def decode_image(
    data: bytes,
    media_type: MediaType | None,
    *,
    name: str,
    limits: DecodeLimits,
    dicom: DicomOptions | None = None,
    on_dimensions: DimensionsCheck | None = None,
) -> np.ndarray:
    """Decode one image into a 2-D greyscale array at full depth.

    ``media_type`` is what the sender declared; None means "trust the bytes". A declared type
    that the bytes contradict is refused rather than guessed around. Colour is reduced with
    Pillow's "L" weights (ITU-R 601-2 luma) at the stored depth and alpha is dropped. Animated
    PNGs give their first frame; JPEG EXIF orientation is not applied (neither does MAIRA-2).
    ``dicom`` says which DICOM files are accepted and how they are windowed (default:
    ``DicomOptions()``); its ``frame`` picks a frame of a multi-frame DICOM file, and for PNG
    and JPEG, which hold one picture, it may only be None or 0. ``on_dimensions(width,
    height)`` is called once the header has been read and checked, before any pixel is decoded:
    the server reserves the image's working memory there, from the one parse of the header the
    decoder makes anyway.
    """
    if not data:
        raise ImageDecodeError(name, "empty image (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            name,
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes",
            "max_bytes",
        )
    resolved = _resolve_media_type(data, media_type, name)
    if resolved is MediaType.DICOM:
        from maira_sae.client.imaging.dicom import decode_dicom  # dicom imports this module

        return decode_dicom(data, name, limits, dicom, on_dimensions)
    if dicom is not None and dicom.frame:
        raise ImageDecodeError(
            name, f"frame {dicom.frame} was chosen, but a {resolved.name} image has frame 0 only"
        )
    return _decode_raster(data, resolved, name, limits, on_dimensions)


def to_greyscale(pixels: np.ndarray) -> np.ndarray:
    """Reduce ``[H, W]`` or ``[H, W, C]`` pixels to ``[H, W]``, keeping the dtype.

    C = 1 is squeezed, C = 2 (grey + alpha) keeps the grey band, C = 3 or 4 (RGB, RGBA) becomes
    luma with Pillow's fixed-point "L" weights and rounding, so 8-bit input matches
    ``Image.convert("L")`` exactly and 16-bit input gets the same formula at 16 bits. Float input
    uses the same weights without rounding. Alpha is dropped.
    """
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected [H, W] or [H, W, C] with C in 1..4, got shape {pixels.shape}")
    channels = pixels.shape[2]
    if channels <= 2:
        return pixels[:, :, 0]
    red, green, blue = (pixels[:, :, i] for i in range(3))
    if np.issubdtype(pixels.dtype, np.floating):
        luma = (red * 19595.0 + green * 38470.0 + blue * 7471.0) / 65536.0
        return luma.astype(pixels.dtype, copy=False)
    if not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(f"unsupported pixel dtype {pixels.dtype}")
    luma = red.astype(np.int64) * 19595
    luma += green.astype(np.int64) * 38470
    luma += blue.astype(np.int64) * 7471
    luma += 0x8000
    luma >>= 16
    return luma.astype(pixels.dtype)


def load_image_file(
    path: str | os.PathLike[str], *, max_bytes: int = DecodeLimits.max_bytes
) -> tuple[bytes, MediaType]:
    """Read an image file for sending: its bytes and the media type sniffed from them."""
    name = os.fspath(path)
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > max_bytes:
            raise ImageDecodeError(
                name, f"file is {size} bytes, over the limit of {max_bytes} bytes"
            )
        data = file.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    media_type = sniff_media_type(data)
    if media_type is None:
        raise ImageDecodeError(name, "not a PNG, JPEG or DICOM file")
    return data, media_type


def _resolve_media_type(data: bytes, declared: MediaType | None, name: str) -> MediaType:
    sniffed = sniff_media_type(data)
    if sniffed is None:
        claim = f"declared {declared.value}, but the" if declared else "the"
        raise ImageDecodeError(name, f"{claim} bytes are not a PNG, JPEG or DICOM file")
    if declared is not None and declared is not sniffed:
        raise ImageDecodeError(
            name, f"declared {declared.value}, but the bytes are {sniffed.value}"
        )
    return sniffed


def check_dimensions(width: int, height: int, name: str, limits: DecodeLimits) -> None:
    """Refuses a width x height (read from a header, before decoding) outside ``limits``."""
    if min(width, height) < limits.min_side:
        raise ImageDecodeError(
            name, f"image is {width}x{height}, a side is under the minimum of {limits.min_side}"
        )
    if max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            name,
            f"image is {width}x{height}, a side is over the maximum of {limits.max_side}",
            "max_side",
        )
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            name,
            f"image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {limits.max_pixels}",
            "max_pixels",
        )


# Errors Pillow's decoders raise on malformed or truncated input (SyntaxError for broken PNG
# chunks, struct.error and zlib.error from the container parsers).
_PILLOW_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

_PILLOW_FORMATS = {MediaType.PNG: "PNG", MediaType.JPEG: "JPEG"}

_DIRECT_MODES = frozenset({"L", "I", "I;16", "I;16L", "I;16B", "RGB", "RGBA", "RGBX", "LA"})
_CONVERTED_MODES = {"1": "L", "P": "RGBA", "PA": "RGBA"}


def _decode_raster(
    data: bytes,
    media_type: MediaType,
    name: str,
    limits: DecodeLimits,
    on_dimensions: DimensionsCheck | None,
) -> np.ndarray:
    kind = _PILLOW_FORMATS[media_type]
    try:
        # Image.open parses only the header; pixels are decoded by load() below, after the
        # dimension check, so a file claiming huge dimensions costs nothing.
        with Image.open(BytesIO(data), formats=[kind]) as image:
            check_dimensions(image.width, image.height, name, limits)
            if on_dimensions is not None:
                on_dimensions(image.width, image.height)
            if image.mode not in _DIRECT_MODES and image.mode not in _CONVERTED_MODES:
                raise ImageDecodeError(name, f"unsupported {kind} pixel mode {image.mode!r}")
            image.load()
            converted = _CONVERTED_MODES.get(image.mode)
            pixels = np.asarray(image.convert(converted) if converted else image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            name,
            f"image dimensions are over the limit of {limits.max_pixels} pixels",
            "max_pixels",
        ) from exc
    except _PILLOW_DECODE_ERRORS as exc:
        raise ImageDecodeError(
            name, f"cannot decode {kind} data (corrupt or truncated: {type(exc).__name__})"
        ) from exc
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        pixels = pixels.astype(np.uint16, copy=False)  # big-endian "I;16B" to native order
    return to_greyscale(pixels)
