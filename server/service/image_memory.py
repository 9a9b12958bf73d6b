"""The decoded-image memory budget shared by every request being prepared.

A request's images are decoded, reduced to greyscale and preprocessed in a worker thread; at
their peak that takes tens of bytes per pixel (Pillow's bands, integer luma, the float64
min-max), so a few large images at once can take gigabytes. Each image reserves its share of
``limits.image_memory_bytes`` from its header's dimensions *before* its pixels are decoded (the
decoder calls back once it has read and checked the header), and the request gives it all back
once its model inputs are built. When the budget is full the request
fails with RESOURCE_EXHAUSTED (retry shortly); a request that could never fit, OUT_OF_RANGE.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from maira_sae.client.imaging.decode import MediaType
from maira_sae.server.errors import OutOfRange, ServerFull, limit_metadata
from maira_sae.server.service.from_proto import DecodeImage, ImageDecoder

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
                f"limits.image_memory_bytes = {self.capacity_bytes}; send smaller images",
                field=name,
                reason="LIMIT_EXCEEDED",
                metadata=limit_metadata("image_memory_bytes", self.capacity_bytes, wanted),
            )
        with self._lock:
            if self._held + nbytes > self.capacity_bytes:
                raise ServerFull(
                    "the server is decoding as many images as its memory budget allows "
                    f"(limits.image_memory_bytes = {self.capacity_bytes}); retry shortly",
                    retry_after_s=RETRY_AFTER_S,
                    reason="IMAGE_MEMORY_BUSY",
                    metadata={"limit": "image_memory_bytes", "limitValue": self.capacity_bytes},
                )
            self._held += nbytes
        hold.bytes += nbytes

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes

    def bytes_for(self, pixels: int) -> int:
        """Working memory for an image of ``pixels`` (its header's width x height)."""
        return min(pixels, self._max_image_pixels) * BYTES_PER_PIXEL


class ImageMemoryHold:
    """What one request holds of the budget."""

    def __init__(self, budget: ImageMemoryBudget) -> None:
        self._budget = budget
        self.bytes = 0

    def decoder(self, decode: ImageDecoder) -> DecodeImage:
        """``decode`` that reserves the image's working memory once the decoder has read its
        header's dimensions, before any pixel is decoded: the decoder's own parse of the
        header, not a second one (which, for a deflated DICOM file, would inflate it whole)."""

        def reserve_then_decode(
            data: bytes, media_type: MediaType | None, name: str, frame: int | None = None
        ) -> np.ndarray:
            def reserve(width: int, height: int) -> None:
                self._budget._reserve(self, self._budget.bytes_for(width * height), name)

            return decode(data, media_type, name, frame, on_dimensions=reserve)

        return reserve_then_decode
