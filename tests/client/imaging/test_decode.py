"""Image decoding: real PNG and JPEG bytes made here, good and hostile (DICOM: test_dicom.py)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from maira_sae.client.imaging.decode import (
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
