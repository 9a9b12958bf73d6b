"""A chest X-ray study as the SDK sends it: encoded image bytes and the report sections.

Files are sent as they are (PNG, JPEG or DICOM bytes, with the frame chosen of a multi-frame
DICOM file), and the server decides what it takes: its DICOM policy (``ServerInfo.dicom``:
which modalities, whether the window applies) is the one that counts, so nothing here refuses a
file the server would accept, and sending a DICOM file needs no pydicom. The server decodes
with the same code as ``pixels()`` here (``pixels(dicom=info.dicom.options())`` matches a
server's settings), so what a caller sees locally is what the model sees. PIL images and numpy
arrays are encoded as lossless PNG first (16-bit arrays as 16-bit PNG).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image

from maira_sae.client.imaging.decode import (
    DecodeLimits,
    MediaType,
    decode_image,
    load_image_file,
    sniff_media_type,
    to_greyscale,
)
from maira_sae.client.imaging.dicom import DicomOptions

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[PathLike, bytes, Image.Image, np.ndarray, "StudyImage"]
"""What ``Study.of`` takes for an image: a file path, encoded bytes, a PIL image, pixels."""

IMAGE_ROLES = ("frontal", "lateral", "prior")  # prompt order; image_index counts present ones


@dataclass(frozen=True)
class StudyImage:
    """One encoded image; ``media_type`` None lets the server sniff the bytes. ``name`` says
    where it came from (a file path) in error messages. ``frame`` picks one frame (from 0) of a
    multi-frame DICOM file, which the server refuses without it; PNG, JPEG and one-frame DICOM
    files have frame 0 only."""

    data: bytes
    media_type: MediaType | None = None
    name: str = "image"
    frame: int | None = None

    def __post_init__(self) -> None:
        """A media type given as its MIME string ("image/png") is read as the enum; anything
        else that is not a ``MediaType`` (such as the protobuf enum's number, whose name this
        one shares) is refused here, saying what to pass."""
        if self.frame is not None and not 0 <= self.frame < 2**32:
            raise ValueError(f"{self.name}: frame must be in 0..2**32-1, got {self.frame}")
        if self.media_type is None or isinstance(self.media_type, MediaType):
            return
        if isinstance(self.media_type, str):
            try:
                object.__setattr__(self, "media_type", MediaType(self.media_type))
                return
            except ValueError:
                pass
        known = ", ".join(f"MediaType.{m.name} ({m.value!r})" for m in MediaType)
        raise TypeError(
            f"{self.name}: media_type {self.media_type!r} is not a maira_sae.client.MediaType "
            f"(the protobuf enum maira_sae.v1.MediaType is not accepted here); pass one of "
            f"{known}, or None to let the server sniff the bytes"
        )

    @classmethod
    def from_file(cls, path: PathLike, *, frame: int | None = None) -> StudyImage:
        """Reads a PNG, JPEG or DICOM file to send as it is; ``frame`` picks one frame (from 0)
        of a multi-frame DICOM file. Nothing is decoded here: the server judges the file under
        its own settings and says, with the file's role, what it refuses and why. Call
        ``pixels()`` to decode it here (DICOM then needs pydicom: the ``images`` extra)."""
        data, media_type = load_image_file(path)
        return cls(data=data, media_type=media_type, name=os.fspath(path), frame=frame)

    @classmethod
    def from_pil(cls, image: Image.Image, name: str = "image") -> StudyImage:
        if image.mode in ("1", "P", "PA"):
            image = image.convert("RGBA")
        return cls.from_array(np.asarray(image), name=name)

    @classmethod
    def from_array(cls, pixels: np.ndarray, name: str = "image") -> StudyImage:
        """``[H, W]`` greyscale or ``[H, W, 3|4]`` colour pixels as lossless PNG. uint8 and
        uint16 keep their values; bool becomes 0/255; any other dtype is min-max scaled to
        uint16, which loses nothing the model uses (MAIRA-2 min-max normalises each image)."""
        pixels = np.asarray(pixels)
        colour = pixels.ndim == 3 and pixels.shape[2] in (3, 4) and pixels.dtype == np.uint8
        if not colour:
            pixels = to_greyscale(pixels)
            if pixels.dtype == np.bool_:
                pixels = pixels.astype(np.uint8) * 255
            elif pixels.dtype not in (np.uint8, np.uint16):
                pixels = _scaled_to_uint16(pixels)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
        return cls(data=buffer.getvalue(), media_type=MediaType.PNG, name=name)

    @classmethod
    def of(cls, image: ImageLike, name: str = "image") -> StudyImage:
        """Any ``ImageLike``; bytes must be PNG, JPEG or DICOM (sniffed)."""
        if isinstance(image, StudyImage):
            return image
        if isinstance(image, bytes):
            return cls(data=image, media_type=sniff_media_type(image), name=name)
        if isinstance(image, Image.Image):
            return cls.from_pil(image, name=name)
        if isinstance(image, np.ndarray):
            return cls.from_array(image, name=name)
        return cls.from_file(image)

    def pixels(
        self, limits: DecodeLimits | None = None, dicom: DicomOptions | None = None
    ) -> np.ndarray:
        """The greyscale pixels at full depth (of ``frame``), decoded exactly as the server
        decodes them (DICOM: rescale, window, MONOCHROME1 inverted; ``ServerInfo.dicom`` says
        which modalities a server takes and whether it applies the window:
        ``dicom=info.dicom.options()`` decodes as that server does)."""
        options = dicom or DicomOptions()
        if self.frame is not None:
            options = options.with_frame(self.frame)
        return decode_image(
            self.data, self.media_type, name=self.name, limits=limits or _LIMITS, dicom=options
        )


_LIMITS = DecodeLimits()


def _scaled_to_uint16(pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image pixels must be finite")
    low, high = values.min(), values.max()
    span = high - low if high > low else 1.0
    return np.round((values - low) / span * 65535).astype(np.uint16)


@dataclass(frozen=True)
class Study:
    """One study. A text section left None, or given as "", reads "N/A" in the prompt, as
    MAIRA-2 was trained (both are sent; the server reads them alike)."""

    frontal: StudyImage
    lateral: StudyImage | None = None
    prior: StudyImage | None = None
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None

    @classmethod
    def of(
        cls,
        frontal: ImageLike,
        lateral: ImageLike | None = None,
        prior: ImageLike | None = None,
        *,
        indication: str | None = None,
        technique: str | None = None,
        comparison: str | None = None,
        prior_report: str | None = None,
    ) -> Study:
        """A study from file paths, bytes, PIL images, arrays or ``StudyImage``s."""
        return cls(
            frontal=StudyImage.of(frontal, name="frontal"),
            lateral=StudyImage.of(lateral, name="lateral") if lateral is not None else None,
            prior=StudyImage.of(prior, name="prior") if prior is not None else None,
            indication=indication,
            technique=technique,
            comparison=comparison,
            prior_report=prior_report,
        )

    @classmethod
    def from_files(
        cls,
        frontal: PathLike,
        lateral: PathLike | None = None,
        prior: PathLike | None = None,
        *,
        indication: str | None = None,
        technique: str | None = None,
        comparison: str | None = None,
        prior_report: str | None = None,
    ) -> Study:
        """A study from PNG, JPEG or DICOM files (see ``StudyImage.from_file``)."""
        return cls.of(
            frontal,
            lateral,
            prior,
            indication=indication,
            technique=technique,
            comparison=comparison,
            prior_report=prior_report,
        )

    def images(self) -> list[tuple[str, StudyImage]]:
        """The present images with their roles, in prompt order: list index = image_index."""
        return [(role, image) for role in IMAGE_ROLES if (image := getattr(self, role)) is not None]
