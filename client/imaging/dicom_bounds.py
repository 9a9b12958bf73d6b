"""What a DICOM file's pixels will cost, checked before anything is decoded or inflated.

The header's Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames fix the
decoded size; ``PixelGeometry`` reads them once. A compressed frame is then held to them: its
own codestream header (``dicom_frames``) must describe the same picture, so no codec allocates
more than the header promised and the limits admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from maira_sae.client.imaging.decode import DecodeLimits, ImageDecodeError, ImageTooLargeError
from maira_sae.client.imaging.dicom_frames import FrameHeaderError, read_codestream_header, read_rle

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["PixelGeometry", "check_encoded_frame"]


@dataclass(frozen=True)
class PixelGeometry:
    """The picture the DICOM header describes."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int

    @classmethod
    def of(cls, dataset: Dataset, name: str) -> PixelGeometry:
        """The geometry of ``dataset``; refuses missing Rows/Columns and non-numeric values."""
        if dataset.get("Rows") is None or dataset.get("Columns") is None:
            raise ImageDecodeError(name, "DICOM file lacks Rows or Columns")
        try:
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError) as exc:
            raise ImageDecodeError(name, "DICOM Number of Frames is not a number") from exc
        if frames < 1:
            raise ImageDecodeError(name, f"DICOM Number of Frames is {frames}, not at least 1")
        try:
            return cls(
                rows=int(dataset.Rows),
                columns=int(dataset.Columns),
                samples=int(dataset.get("SamplesPerPixel") or 1),
                bits_allocated=int(dataset.get("BitsAllocated") or 16),
                frames=frames,
            )
        except (TypeError, ValueError) as exc:
            raise ImageDecodeError(
                name, "DICOM Rows, Columns, Samples per Pixel or Bits Allocated is not a number"
            ) from exc

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame (whole bytes per sample, as the decoders return it)."""
        return self.rows * self.columns * self.samples * -(-self.bits_allocated // 8)

    def check_budget(self, name: str, limits: DecodeLimits, frames: int = 1) -> None:
        """Refuses ``frames`` decoded frames over ``limits.max_decoded_bytes``."""
        size = self.frame_bytes * frames
        if self.samples < 1 or self.bits_allocated < 1:
            raise ImageDecodeError(
                name,
                f"DICOM Samples per Pixel {self.samples} or Bits Allocated "
                f"{self.bits_allocated} is not positive",
            )
        if size > limits.max_decoded_bytes:
            what = "one frame" if frames == 1 else f"{frames} frames"
            raise ImageTooLargeError(
                name,
                f"{what} of {self.columns}x{self.rows} x {self.samples} samples x "
                f"{self.bits_allocated} bits would decode to {size} bytes, over the limit of "
                f"{limits.max_decoded_bytes} bytes ({limits.max_pixels} pixels at 8 bytes)",
                "max_pixels",
            )


def check_encoded_frame(
    dataset: Dataset, name: str, index: int, geometry: PixelGeometry, limits: DecodeLimits
) -> None:
    """Refuses frame ``index`` of encapsulated Pixel Data whose own header disagrees with the
    DICOM header (or cannot be read), before any codec sees it. Native pixel data passes."""
    from pydicom.encaps import get_frame

    codec = _codec(dataset.file_meta.TransferSyntaxUID)
    if codec is None or not dataset["PixelData"].is_undefined_length:
        return
    where = f"PixelData frame {index}"
    geometry.check_budget(name, limits)
    offsets = None
    if "ExtendedOffsetTable" in dataset and "ExtendedOffsetTableLengths" in dataset:
        offsets = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths)
    try:
        frame = get_frame(
            dataset.PixelData, index, number_of_frames=geometry.frames, extended_offsets=offsets
        )
    except Exception as exc:  # pydicom raises several types for broken encapsulation
        raise ImageDecodeError(
            name, f"{where}: not found in the encapsulated pixel data ({type(exc).__name__})"
        ) from exc
    try:
        problem = _disagreement(codec, frame, geometry)
    except FrameHeaderError as exc:
        raise ImageDecodeError(name, f"{where}: {exc}") from exc
    if problem:
        raise ImageDecodeError(name, f"{where}: {problem}")


def _codec(syntax: str) -> str | None:
    """The codec whose frame header ``dicom_frames`` reads for ``syntax``, or None."""
    from pydicom import uid

    for codec, syntaxes in (
        ("JPEG 2000", uid.JPEG2000TransferSyntaxes),
        ("JPEG-LS", uid.JPEGLSTransferSyntaxes),
        ("JPEG", uid.JPEGTransferSyntaxes),
        ("RLE", [uid.RLELossless]),
    ):
        if syntax in syntaxes:
            return codec
    return None


def _disagreement(codec: str, frame: bytes, geometry: PixelGeometry) -> str | None:
    """What the frame's own header says that the DICOM header does not, or None."""
    if codec == "RLE":
        segments = read_rle(frame).segments
        expected = geometry.samples * -(-geometry.bits_allocated // 8)
        if segments != expected:
            return (
                f"RLE header says {segments} segments, the header says Samples per Pixel "
                f"{geometry.samples} x {geometry.bits_allocated} bits = {expected} segments"
            )
        return None
    header = read_codestream_header(codec, frame)
    if (header.rows, header.columns) != (geometry.rows, geometry.columns):
        return (
            f"{header.marker} says {header.columns} x {header.rows}, the header says "
            f"Rows {geometry.rows} x Columns {geometry.columns}"
        )
    if header.samples != geometry.samples:
        return (
            f"{header.marker} says {header.samples} components, the header says Samples "
            f"per Pixel {geometry.samples}"
        )
    if header.precision > geometry.bits_allocated:
        return (
            f"{header.marker} says {header.precision}-bit samples, more than Bits Allocated "
            f"{geometry.bits_allocated}"
        )
    return None
