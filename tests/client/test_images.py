"""Image decoding: real PNG, JPEG and DICOM bytes made here, good and hostile."""

from __future__ import annotations

import io
import struct
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from maira_sae.client.images import (
    DecodeLimits,
    ImageDecodeError,
    MediaType,
    decode_image,
    load_image_file,
    sniff_media_type,
    to_greyscale,
)

LIMITS = DecodeLimits()
RNG = np.random.default_rng(1234)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, media_type: MediaType | None = None, limits: DecodeLimits = LIMITS):
    return decode_image(data, media_type, name="frontal image", limits=limits)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


# --- raster formats ---------------------------------------------------------------------------


def test_png_8bit_grey_is_returned_unchanged():
    pixels = RNG.integers(0, 256, (31, 17), dtype=np.uint8)
    decoded = decode(encode(pixels), MediaType.PNG)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, pixels)


def test_png_16bit_grey_keeps_full_depth():
    pixels = RNG.integers(0, 65536, (20, 24), dtype=np.uint16)
    decoded = decode(encode(pixels))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_png_matches_pillow_luma(channels):
    pixels = RNG.integers(0, 256, (15, 22, channels), dtype=np.uint8)
    decoded = decode(encode(pixels))
    expected = np.asarray(Image.fromarray(pixels).convert("L"))
    assert decoded.shape == (15, 22)
    np.testing.assert_array_equal(decoded, expected)


def test_jpeg_decodes_to_greyscale():
    pixels = RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = encode(pixels, "JPEG", quality=90)
    decoded = decode(data, MediaType.JPEG)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    np.testing.assert_array_equal(decoded, expected)


def test_one_pixel_image():
    decoded = decode(encode(np.array([[7]], dtype=np.uint8)))
    np.testing.assert_array_equal(decoded, [[7]])


def test_greyscale_of_equal_channels_is_exact_at_16_bits():
    grey = RNG.integers(0, 65536, (9, 9), dtype=np.uint16)
    np.testing.assert_array_equal(to_greyscale(np.stack([grey] * 3, axis=-1)), grey)


def test_greyscale_rejects_odd_shapes():
    with pytest.raises(ValueError, match="shape"):
        to_greyscale(np.zeros((4, 4, 5), dtype=np.uint8))


# --- refusals ---------------------------------------------------------------------------------


def test_empty_bytes():
    with pytest.raises(ImageDecodeError, match="frontal image: empty"):
        decode(b"")


def test_over_max_bytes():
    with pytest.raises(ImageDecodeError, match="over the limit of 100 bytes"):
        decode(encode(np.zeros((64, 64), np.uint8)) + b"\x00" * 200, limits=DecodeLimits(100))


def test_random_bytes():
    with pytest.raises(ImageDecodeError, match="not a PNG, JPEG or DICOM"):
        decode(RNG.bytes(500))


def test_random_bytes_behind_a_png_signature():
    with pytest.raises(ImageDecodeError, match="cannot decode PNG"):
        decode(b"\x89PNG\r\n\x1a\n" + RNG.bytes(500))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    data = encode(RNG.integers(0, 256, (64, 64), dtype=np.uint8), fmt)
    with pytest.raises(ImageDecodeError, match=f"cannot decode {fmt}.*truncated"):
        decode(data[: len(data) // 2])


def test_declared_type_disagreeing_with_bytes_names_both():
    with pytest.raises(ImageDecodeError, match="declared image/jpeg, but the bytes are image/png"):
        decode(encode(np.zeros((4, 4), np.uint8)), MediaType.JPEG)


def test_decompression_bomb_header_is_refused_without_decoding():
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode(png_claiming(100_000, 100_000))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("width", "height", "problem"),
    [(20_000, 1, "over the maximum of 16384"), (5000, 5000, "over the limit of 1000000")],
)
def test_header_dimensions_checked_against_limits(width, height, problem):
    limits = DecodeLimits(max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError, match=problem):
        decode(png_claiming(width, height), limits=limits)


def test_minimum_side():
    with pytest.raises(ImageDecodeError, match="under the minimum of 8"):
        decode(encode(np.zeros((4, 40), np.uint8)), limits=DecodeLimits(min_side=8))


def test_unsupported_mode():
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(cmyk, format="JPEG")
    with pytest.raises(ImageDecodeError, match="unsupported JPEG pixel mode 'CMYK'"):
        decode(cmyk.getvalue())


def test_sniffing():
    assert sniff_media_type(encode(np.zeros((2, 2), np.uint8))) is MediaType.PNG
    assert sniff_media_type(encode(np.zeros((2, 2), np.uint8), "JPEG")) is MediaType.JPEG
    assert sniff_media_type(b"\x00" * 128 + b"DICM") is MediaType.DICOM
    assert sniff_media_type(b"GIF89a") is None


# --- files ------------------------------------------------------------------------------------


def test_load_image_file(tmp_path):
    path = tmp_path / "frontal.png"
    path.write_bytes(encode(np.zeros((3, 3), np.uint8)))
    data, media_type = load_image_file(path)
    assert media_type is MediaType.PNG
    assert data == path.read_bytes()


def test_load_image_file_errors_name_the_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"notes\.txt: not a PNG"):
        load_image_file(text)
    with pytest.raises(ImageDecodeError, match=r"missing\.png: cannot read file"):
        load_image_file(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="over the limit of 4 bytes"):
        load_image_file(text, max_bytes=4)


# --- DICOM ------------------------------------------------------------------------------------

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, generate_uid  # noqa: E402

PATIENT = "Doe^Jane"
BAD_BIRTH_DATE = "not-a-date"  # would make pydicom warn with the value if it were parsed


def dicom_bytes(
    raw: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    **attributes,
) -> bytes:
    """A single-frame 12-bit X-ray with a patient name and an invalid (unparsed) birth date."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = PATIENT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.PatientBirthDate = BAD_BIRTH_DATE
    if raw is not None:
        dataset.Rows, dataset.Columns = raw.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = photometric
        dataset.BitsAllocated = 16
        dataset.BitsStored = 12
        dataset.HighBit = 11
        dataset.PixelRepresentation = 0
        dataset.PixelData = raw.astype(np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    if syntax != ExplicitVRLittleEndian:
        dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


RAW = np.array([[0, 100, 200, 300], [400, 500, 600, 4095]], dtype=np.uint16)


def test_dicom_monochrome2_applies_rescale():
    decoded = decode(dicom_bytes(RAW, RescaleSlope=2, RescaleIntercept=-100), MediaType.DICOM)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, RAW * 2.0 - 100)


def test_dicom_monochrome1_is_inverted_so_dense_is_bright():
    decoded = decode(dicom_bytes(RAW, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100))
    rescaled = RAW * 2.0 - 100
    np.testing.assert_array_equal(decoded, rescaled.min() + rescaled.max() - rescaled)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dicom_window_is_applied_after_rescale(photometric):
    center, width = 500.0, 801.0
    data = dicom_bytes(
        RAW,
        photometric,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=[center, 1234.0],  # multi-valued: the first window is used
        WindowWidth=[width, 10.0],
    )
    decoded = decode(data).astype(np.float64)
    # DICOM PS3.3 C.11.2.1.2.1 linear window, as a 0..1 fraction of the output range.
    fraction = np.clip(((RAW * 2.0 - 100) - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    if photometric == "MONOCHROME1":
        fraction = 1 - fraction
    normalised = (decoded - decoded.min()) / (decoded.max() - decoded.min())
    np.testing.assert_allclose(normalised, fraction, atol=1e-6)
    assert fraction.min() == 0 and fraction.max() == 1  # both clipping ends exercised


def test_dicom_without_pixel_data():
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        decode(dicom_bytes(None))


def test_dicom_compressed_syntax_error_names_it():
    junk = encapsulate([b"\xff\x4f\xff\x51" + b"junk" * 50])
    data = dicom_bytes(RAW, syntax=JPEG2000, PixelData=junk)
    with pytest.raises(ImageDecodeError, match=r"JPEG 2000 Image Compression \(1\.2\.840"):
        decode(data)


def test_dicom_decoding_never_surfaces_patient_data(caplog):
    good = dicom_bytes(RAW, WindowCenter=500, WindowWidth=400)
    refused = dicom_bytes(RAW, "RGB")
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode(good)
        with pytest.raises(ImageDecodeError) as error:
            decode(refused)
    surfaced = [str(w.message) for w in caught] + [caplog.text, str(error.value)]
    assert not any(BAD_BIRTH_DATE in text or "Doe" in text for text in surfaced)


def test_dicom_colour_is_refused():
    with pytest.raises(ImageDecodeError, match="'RGB' is not supported"):
        decode(dicom_bytes(RAW, "RGB"))


def test_dicom_multi_frame_is_refused():
    with pytest.raises(ImageDecodeError, match="multi-frame DICOM \\(2 frames\\)"):
        decode(dicom_bytes(RAW, NumberOfFrames=2))


def test_dicom_dimensions_checked_before_decoding():
    with pytest.raises(ImageDecodeError, match="over the limit of 4"):
        decode(dicom_bytes(RAW), limits=DecodeLimits(max_pixels=4))


def test_truncated_dicom():
    data = dicom_bytes(RAW)
    with pytest.raises(ImageDecodeError, match="frontal image: "):
        decode(data[: len(data) - 7])


def test_dicom_without_pydicom_installed(monkeypatch):
    data = dicom_bytes(RAW)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageDecodeError, match="needs pydicom"):
        decode(data)
