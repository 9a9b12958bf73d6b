"""Hostile DICOM files, built in code: a deflate bomb, a JPEG 2000 frame that lies about its
size, and LUTs whose descriptors claim more entries than their data holds. Every one has a
64 x 64 DX header that passes the dimension limits; only its body is hostile. Shared by the
tests and bench/dicom_bombs.py."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np

__all__ = ["deflate_bomb", "lut_file", "lying_jpeg2000", "radiograph_dataset"]

HEADER_SIDE = 64


def radiograph_dataset(bits: int = 16):
    """A 64 x 64 MONOCHROME2 DX data set without Pixel Data, ``bits`` allocated and stored."""
    from pydicom.dataset import Dataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    dataset = Dataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "DX"
    dataset.Rows = dataset.Columns = HEADER_SIDE
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    return dataset


def _set_file_meta(dataset, syntax: str) -> None:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    dataset.file_meta = meta


def _file(dataset, syntax: str) -> bytes:
    _set_file_meta(dataset, syntax)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflate_bomb(pixel_bytes: int = 2**30, dataset=None) -> bytes:
    """A Deflated Explicit VR Little Endian file of about ``pixel_bytes`` / 1000 bytes (1 MB
    for the default 1 GiB) whose data set inflates to ``dataset`` (default: a 64 x 64 16-bit
    header) followed by Pixel Data of ``pixel_bytes`` zero bytes: for the defaults, 2**18
    times what Rows x Columns x 16 bits hold."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = dataset if dataset is not None else radiograph_dataset()
    _set_file_meta(dataset, DeflatedExplicitVRLittleEndian)
    # The data set is deflated here rather than by pydicom, so that its Pixel Data can be
    # streamed through the compressor without ever being held.
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, dataset.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, dataset)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(body.getvalue() + pixel_header)
    head += compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the deflate stream is byte-aligned and forgets its history, so one
    # compressed run of zeros can be repeated as is: a real stream, built in milliseconds.
    chunk = 2**24
    run = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    runs, rest = divmod(pixel_bytes, chunk)
    tail = compressor.compress(bytes(rest)) + compressor.flush()
    return bytes(128) + b"DICM" + meta.getvalue() + head + run * runs + tail


@cache
def _blank_jpeg2000(side: int) -> bytes:
    from openjpeg import encode

    return bytes(encode(np.zeros((side, side), dtype=np.uint8), bits_stored=8))


def lying_jpeg2000(side: int = 12000) -> bytes:
    """A JPEG 2000 (lossless) file whose header says 64 x 64 and whose one frame is a real,
    complete ``side`` x ``side`` codestream (blank, a few hundred bytes)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    dataset = radiograph_dataset(bits=8)
    dataset.PixelData = encapsulate([_blank_jpeg2000(side)])
    dataset["PixelData"].VR = "OB"
    return _file(dataset, JPEG2000Lossless)


def lut_file(sequence: str, claimed: int = 4096, held: int = 16) -> bytes:
    """An uncompressed 64 x 64 file with a ``sequence`` ("VOILUTSequence" or
    "ModalityLUTSequence") item whose LUT Descriptor claims ``claimed`` 16-bit entries and
    whose LUT Data (OW) holds ``held``."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    dataset = radiograph_dataset()
    item = Dataset()
    item.LUTDescriptor = [claimed, 0, 16]
    item.LUTData = np.arange(held, dtype="<u2").tobytes()
    item["LUTData"].VR = "OW"
    setattr(dataset, sequence, [item])
    dataset.PixelData = np.zeros((HEADER_SIDE, HEADER_SIDE), dtype="<u2").tobytes()
    return _file(dataset, ExplicitVRLittleEndian)
