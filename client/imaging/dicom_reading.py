"""Reading a DICOM file's data set once, with a Deflated Explicit VR file inflated under a cap.

pydicom inflates a deflated data set in full (``zlib.decompress``) as it reads it, so a 1 MB
file can grow into gigabytes before any header is checked. Here the file meta is read first;
a deflated data set is then inflated in two bounded steps: its first ``HEADER_ALLOWANCE``
bytes, enough to read Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames
(group 0028, which precedes the pixels), then at most the pixel bytes they declare plus that
allowance. A file that inflates past it is refused; pydicom reads the inflated bytes.
"""

from __future__ import annotations

import zlib
from io import BytesIO
from typing import TYPE_CHECKING, Any

from maira_sae.client.imaging.decode import DecodeLimits, ImageDecodeError
from maira_sae.client.imaging.dicom_bounds import PixelGeometry

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["HEADER_ALLOWANCE", "read_dicom"]

HEADER_ALLOWANCE = 4 * 1024 * 1024
"""Bytes a deflated data set may inflate to besides its pixels: every element but Pixel
Data (identification, LUTs, overlays, private blocks)."""

_TRUNCATED = "deflated DICOM data set is truncated (its deflate stream does not end)"
# Rows, Columns, Samples per Pixel, Bits Allocated, Number of Frames (read_dataset takes tags).
_GEOMETRY_TAGS = [0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008]


def read_dicom(data: bytes, name: str, limits: DecodeLimits, tags: list[str]) -> Dataset:
    """The data set of ``data`` with only ``tags`` read (see ``dicom.decode_dicom``)."""
    import pydicom
    from pydicom.filereader import read_dataset, read_preamble

    bare = data[128:132] != b"DICM"
    try:
        file = BytesIO(data)
        preamble = read_preamble(file, bare)
        meta = read_dataset(file, False, True, stop_when=_past_file_meta)
        if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            dataset = pydicom.dcmread(BytesIO(data), force=bare, specific_tags=tags)
        else:
            inflated = _inflate_bounded(data[file.tell() :], name, limits)
            # The inflated data set alone: explicit VR little endian, which pydicom recognises.
            dataset = pydicom.dcmread(BytesIO(inflated), force=True, specific_tags=tags)
            dataset.file_meta = pydicom.dataset.FileMetaDataset(meta)
            dataset.preamble = preamble
        # pydicom converts an element's value when it is first used, and a malformed one (an
        # unknown VR, a bad number) raises then: convert them all here, in sequences too.
        dataset.walk(_convert)
        return dataset
    except ImageDecodeError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed files
        raise ImageDecodeError(
            name, f"cannot parse DICOM data (corrupt or truncated: {type(exc).__name__})"
        ) from exc


def _convert(_dataset: Dataset, _element: Any) -> None:
    """Nothing: ``Dataset.walk`` has converted the element by handing it here."""


def _past_file_meta(tag: Any, _vr: str | None, _length: int) -> bool:
    return bool(tag.group != 0x0002)


def _inflate_bounded(deflated: bytes, name: str, limits: DecodeLimits) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(deflated, HEADER_ALLOWANCE)
    if inflater.eof:
        return head
    if len(head) < HEADER_ALLOWANCE:
        raise ImageDecodeError(name, _TRUNCATED)
    geometry = _geometry_of_head(head, name)
    geometry.check_budget(name, limits, frames=geometry.frames)
    budget = HEADER_ALLOWANCE + geometry.frame_bytes * geometry.frames
    rest = inflater.decompress(inflater.unconsumed_tail, budget + 1 - len(head))
    size = len(head) + len(rest)
    if size > budget:
        raise ImageDecodeError(
            name,
            f"deflated DICOM data set inflates past {budget} bytes, more than its "
            f"{geometry.frames} frame(s) of Rows {geometry.rows} x Columns {geometry.columns} "
            f"x {geometry.samples} samples x {geometry.bits_allocated} bits and "
            f"{HEADER_ALLOWANCE} bytes of other elements can hold",
        )
    if not inflater.eof:
        raise ImageDecodeError(name, _TRUNCATED)
    return head + rest


def _geometry_of_head(head: bytes, name: str) -> PixelGeometry:
    """The pixel geometry read from the first inflated bytes (elements up to group 0028)."""
    import warnings

    from pydicom.filereader import read_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut-off element warns; Rows is checked below
            header = read_dataset(
                BytesIO(head), False, True, stop_when=_past_group_0028, specific_tags=_GEOMETRY_TAGS
            )
    except Exception as exc:  # as in read_dicom
        raise ImageDecodeError(
            name, f"cannot parse deflated DICOM data (corrupt or truncated: {type(exc).__name__})"
        ) from exc
    if header.get("Rows") is None or header.get("Columns") is None:
        raise ImageDecodeError(
            name,
            f"the first {HEADER_ALLOWANCE} bytes of the deflated DICOM data set do not reach "
            "Rows and Columns",
        )
    return PixelGeometry.of(header, name)


def _past_group_0028(tag: Any, _vr: str | None, _length: int) -> bool:
    return bool(tag.group > 0x0028)
