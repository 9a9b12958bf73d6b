"""The decoded-image memory budget shared by every request being prepared.

A request's images are decoded, reduced to greyscale and preprocessed in a worker thread; at
their peak that takes tens of bytes per pixel (Pillow's bands, integer luma, the float64
min-max), so a few large images at once can take gigabytes. Each image reserves its share of
``limits.image_memory_bytes`` from its header's dimensions *before* it is decoded, and the
request gives it all back once its model inputs are built. When the budget is full the request
fails with RESOURCE_EXHAUSTED (retry shortly); a request that could never fit, OUT_OF_RANGE.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from io import BytesIO

import numpy as np
from PIL import Image

from maira_sae.client.imaging.decode import MediaType, sniff_media_type
from maira_sae.server.errors import OutOfRange, ResourceExhausted
from maira_sae.server.service.from_proto import DecodeImage

# Peak working memory per pixel while one image is decoded and preprocessed (8-bit RGBA:
# 4 bytes in Pillow, 16 in integer luma, 8 for the float64 min-max; greyscale needs less).
BYTES_PER_PIXEL = 24
RETRY_AFTER_S = 0.2


class ImageMemoryBudget:
    """Bytes of decoded-image working memory that requests may hold at once (thread-safe)."""

    def __init__(self, capacity_bytes: int, max_image_pixels: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._max_image_pixels = max_image_pixels
        self._held = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[ImageMemoryHold]:
        """One request's reservations, all released when the block ends."""
        hold = ImageMemoryHold(self)
        try:
            yield hold
        finally:
            self._release(hold.bytes)

    def _reserve(self, hold: ImageMemoryHold, nbytes: int, name: str) -> None:
        wanted = hold.bytes + nbytes
        if wanted > self.capacity_bytes:
            raise OutOfRange(
                f"{name}: the study's images need about {wanted} bytes of decoding memory, over "
                f"limits.image_memory_bytes = {self.capacity_bytes}; send smaller images"
            )
        with self._lock:
            if self._held + nbytes > self.capacity_bytes:
                raise ResourceExhausted(
                    "the server is decoding as many images as its memory budget allows "
                    f"(limits.image_memory_bytes = {self.capacity_bytes}); retry shortly",
                    retry_after_s=RETRY_AFTER_S,
                )
            self._held += nbytes
        hold.bytes += nbytes

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes

    def estimate_bytes(self, data: bytes, media_type: MediaType | None) -> int:
        """Working memory for an image, from the pixel count its header claims; an unreadable
        header counts as the largest image allowed (decoding then says what is wrong)."""
        pixels = claimed_pixels(data, media_type)
        if pixels is None:
            pixels = self._max_image_pixels
        return min(pixels, self._max_image_pixels) * BYTES_PER_PIXEL


class ImageMemoryHold:
    """What one request holds of the budget."""

    def __init__(self, budget: ImageMemoryBudget) -> None:
        self._budget = budget
        self.bytes = 0

    def decoder(self, decode: DecodeImage) -> DecodeImage:
        """``decode`` that first reserves the image's working memory."""

        def reserve_then_decode(data: bytes, media_type: MediaType | None, name: str) -> np.ndarray:
            self._budget._reserve(self, self._budget.estimate_bytes(data, media_type), name)
            return decode(data, media_type, name)

        return reserve_then_decode


def claimed_pixels(data: bytes, media_type: MediaType | None) -> int | None:
    """Width x height as the header says, without decoding pixels; None when unreadable."""
    kind = media_type or sniff_media_type(data)
    with suppress(Exception):  # any parse failure: unknown, the decoder reports it
        if kind is MediaType.DICOM:
            import pydicom

            header = pydicom.dcmread(
                BytesIO(data), stop_before_pixels=True, specific_tags=["Rows", "Columns"]
            )
            return int(header.Rows) * int(header.Columns)
        if kind in (MediaType.PNG, MediaType.JPEG):
            with Image.open(BytesIO(data)) as image:  # parses the header only
                return image.width * image.height
    return None
