"""Every DICOM decoder is bounded before it allocates: frames held to their own codestream
headers, deflated data sets inflated under a cap, LUTs held to their descriptors. Real sample
files (pydicom's) edited the way a hostile or broken sender would, and files built in code."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from maira_sae.client.imaging.decode import (
    DecodeLimits,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
)
from maira_sae.client.imaging.dicom import DicomOptions
from maira_sae.client.imaging.dicom_frames import FrameHeaderError, read_codestream_header
from maira_sae.client.imaging.dicom_reading import HEADER_ALLOWANCE
from tests.support.dicom_bombs import (
    deflate_bomb,
    lut_file,
    lying_jpeg2000,
    radiograph_dataset,
)

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg (an images extra) is not installed")
from pydicom.data import get_testdata_file  # noqa: E402

ANY_MODALITY = DicomOptions(modalities=None)
LIMITS = DecodeLimits()


def decode(data: bytes, limits: DecodeLimits = LIMITS, options: DicomOptions = ANY_MODALITY):
    return decode_image(data, None, name="study.frontal", limits=limits, dicom=options)


def sample_bytes(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"sample file {name} is missing"
    with open(path, "rb") as file:
        return file.read()


def patched(data: bytes, marker: bytes, offset: int, value: bytes) -> bytes:
    """``data`` with ``value`` written ``offset`` bytes after the first ``marker``."""
    at = data.index(marker) + offset
    return data[:at] + value + data[at + len(value) :]


# --- frames held to their own headers ------------------------------------------------------


def test_a_jpeg_2000_frame_larger_than_its_header_is_refused_before_decoding():
    with pytest.raises(
        ImageDecodeError,
        match=r"^study\.frontal: PixelData frame 0: JPEG 2000 SIZ says 12000 x 12000, the header "
        r"says Rows 64 x Columns 64$",
    ):
        decode(lying_jpeg2000(12000))
    assert decode(lying_jpeg2000(64)).shape == (64, 64)  # the same file, honest


def test_a_jpeg_2000_frame_in_a_jp2_file_is_read_through_its_boxes():
    codestream = lying_jpeg2000(64)
    header = read_codestream_header("JPEG 2000", _jp2(_codestream_of(codestream)))
    assert (header.rows, header.columns, header.samples, header.precision) == (64, 64, 1, 8)
    with pytest.raises(FrameHeaderError, match="JP2 file has no codestream box"):
        read_codestream_header("JPEG 2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n")


def _codestream_of(data: bytes) -> bytes:
    from pydicom.encaps import get_frame

    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    return get_frame(dataset.PixelData, 0, number_of_frames=1)


def _jp2(codestream: bytes) -> bytes:
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    ihdr = struct.pack(">IIHBBBB", 64, 64, 1, 7, 7, 0, 0)
    return (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n"
        + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")
        + box(b"jp2h", box(b"ihdr", ihdr))
        + box(b"jp2c", codestream)
    )


def test_a_jpeg_sof_that_disagrees_with_rows_is_refused():
    data = sample_bytes("JPEG-LL.dcm")  # 1024 x 256, SOF3
    lying = patched(data, b"\xff\xc3", 5, struct.pack(">H", 12000))
    with pytest.raises(
        ImageDecodeError,
        match=r"PixelData frame 0: JPEG SOF says 256 x 12000, the header says Rows 1024 x "
        r"Columns 256",
    ):
        decode(lying)
    assert decode(data).shape == (1024, 256)


def test_a_jpeg_ls_sof55_that_disagrees_with_samples_per_pixel_is_refused():
    data = sample_bytes("MR_small_jpeg_ls_lossless.dcm")
    lying = patched(data, b"\xff\xf7", 9, b"\x03")
    with pytest.raises(
        ImageDecodeError, match=r"JPEG-LS SOF55 says 3 components, the header says Samples per"
    ):
        decode(lying)


def test_an_rle_header_must_match_the_samples_and_lie_inside_its_fragment():
    data = sample_bytes("MR_small_RLE.dcm")  # 16-bit grey: two segments
    header_at = data.index(struct.pack("<IIHH", 2, 64, 0, 0)[:8])
    one = data[:header_at] + struct.pack("<I", 1) + data[header_at + 4 :]
    with pytest.raises(
        ImageDecodeError,
        match=r"PixelData frame 0: RLE header says 1 segments, the header says Samples per "
        r"Pixel 1 x 16 bits = 2 segments",
    ):
        decode(one)
    outside = data[: header_at + 8] + struct.pack("<I", 10**6) + data[header_at + 12 :]
    with pytest.raises(ImageDecodeError, match=r"RLE segment offsets \[64, 1000000\] are not"):
        decode(outside)


def test_a_frame_missing_from_its_encapsulation_is_refused_naming_it():
    data = sample_bytes("emri_small_jpeg_2k_lossless.dcm")  # 10 frames
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    dataset.NumberOfFrames = 12
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ImageDecodeError, match=r"PixelData frame 11: not found in the encaps"):
        decode(buffer.getvalue(), options=ANY_MODALITY.with_frame(11))


def test_a_frame_over_the_decoded_byte_budget_is_refused_as_too_large():
    data = sample_bytes("SC_rgb_jpeg_gdcm.dcm")  # 100 x 100 RGB, 8 bits
    small = DecodeLimits(max_pixels=100 * 100)  # 80 000 bytes; RGB at 8 bits is 30 000
    assert decode(data, small).shape == (100, 100)
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    dataset.BitsAllocated = 64  # claims 240 000 bytes per frame
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ImageTooLargeError, match=r"would decode to 240000 bytes, over the limit"):
        decode(buffer.getvalue(), small)


# --- deflated data sets ---------------------------------------------------------------------


def test_a_deflate_bomb_is_refused_after_inflating_only_its_budget():
    bomb = deflate_bomb(2**27)  # 128 KiB that inflate to 128 MiB
    assert len(bomb) < 2**18
    with pytest.raises(
        ImageDecodeError,
        match=rf"deflated DICOM data set inflates past {HEADER_ALLOWANCE + 64 * 64 * 2} bytes, "
        r"more than its 1 frame\(s\) of Rows 64 x Columns 64",
    ):
        decode(bomb)


def test_deflated_files_are_inflated_by_the_decoder_never_by_pydicom(monkeypatch):
    import pydicom.filereader

    def uncapped(*_args, **_kwargs):
        raise AssertionError("pydicom inflated the data set itself, without a cap")

    monkeypatch.setattr(pydicom.filereader.zlib, "decompress", uncapped)
    assert decode(sample_bytes("image_dfl.dcm")).shape == (512, 512)


def test_a_truncated_deflated_data_set_is_refused_saying_so():
    data = sample_bytes("image_dfl.dcm")
    with pytest.raises(ImageDecodeError, match="deflated DICOM data set is truncated"):
        decode(data[:-200])


def test_a_deflated_file_whose_header_claims_too_much_is_refused_before_inflating():
    dataset = radiograph_dataset()
    dataset.Rows = dataset.Columns = 6000
    dataset.NumberOfFrames = 100
    with pytest.raises(ImageTooLargeError, match=r"100 frames of 6000x6000 .* over the limit"):
        decode(deflate_bomb(2 * HEADER_ALLOWANCE, dataset))


def test_a_deflated_data_set_whose_rows_lie_past_the_header_allowance_is_refused():
    dataset = radiograph_dataset()
    dataset.add_new(0x00090010, "LO", "A PRIVATE CREATOR")
    dataset.add_new(0x00091010, "OB", bytes(HEADER_ALLOWANCE + 1))  # before group 0028
    with pytest.raises(ImageDecodeError, match=r"do not reach Rows and Columns"):
        decode(deflate_bomb(64 * 64 * 2, dataset))


# --- lookup tables --------------------------------------------------------------------------


@pytest.mark.parametrize("sequence", ["VOILUTSequence", "ModalityLUTSequence"])
def test_a_lut_whose_descriptor_claims_more_than_its_data_is_refused_naming_it(sequence):
    with pytest.raises(
        ImageDecodeError,
        match=rf"^study\.frontal: {sequence}\[0\]\.LUTDescriptor claims 4096 entries, LUTData "
        r"holds 16$",
    ):
        decode(lut_file(sequence))
    honest = decode(lut_file(sequence, claimed=16))
    assert honest.shape == (64, 64)


def test_malformed_lut_descriptors_are_refused_naming_the_element():
    with pytest.raises(ImageDecodeError, match=r"VOILUTSequence\[0\]\.LUTDescriptor says 9 bits"):
        decode(_with_descriptor("VOILUTSequence", [16, 0, 9]))
    with pytest.raises(
        ImageDecodeError, match=r"ModalityLUTSequence\[0\]\.LUTDescriptor has 2 values, not 3"
    ):
        decode(_with_descriptor("ModalityLUTSequence", [16, 0]))
    with pytest.raises(
        ImageDecodeError,
        match=r"ModalityLUTSequence\[0\]\.LUTDescriptor claims 16 entries, "
        r"LUTData holds 32",
    ):
        decode(_with_data("ModalityLUTSequence", 32))  # pydicom unpacks exactly


def _with_descriptor(sequence: str, descriptor: list[int]) -> bytes:
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(lut_file(sequence, claimed=16)))
    getattr(dataset, sequence)[0].LUTDescriptor = descriptor
    return _saved(dataset)


def _with_data(sequence: str, entries: int) -> bytes:
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(lut_file(sequence, claimed=16)))
    getattr(dataset, sequence)[0].LUTData = np.arange(entries, dtype="<u2").tobytes()
    return _saved(dataset)


def _saved(dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


# --- one parse ------------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_the_file_is_parsed_once_and_its_dimensions_reported_before_any_pixel(monkeypatch):
    import pydicom.pixels.decoders.base as decoders

    reads, seen = [], []
    real_dcmread = pydicom.dcmread

    def counted(*args, **kwargs):
        reads.append(kwargs.get("specific_tags"))
        return real_dcmread(*args, **kwargs)

    def never(*_args, **_kwargs):
        raise AssertionError("pixels decoded before the dimensions were reported")

    def report_then_stop(width: int, height: int) -> None:
        seen.append((width, height))
        raise Stop

    monkeypatch.setattr(pydicom, "dcmread", counted)
    monkeypatch.setattr(decoders.DecodeRunner, "decode", never)
    for data, size in [(sample_bytes("image_dfl.dcm"), (512, 512)), (lying_jpeg2000(64), (64, 64))]:
        reads.clear()
        with pytest.raises(Stop):
            decode_image(
                data,
                None,
                name="x",
                limits=LIMITS,
                dicom=ANY_MODALITY,
                on_dimensions=report_then_stop,
            )
        assert len(reads) == 1 and seen[-1] == size
