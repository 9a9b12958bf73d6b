"""DICOM decoding: files written here with pydicom, and the real sample files of pydicom and
pydicom-data (written by scanners and toolkits, not here), every transfer syntax they cover."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from maira_sae.client.imaging.decode import DecodeLimits, ImageDecodeError, MediaType, decode_image
from maira_sae.client.imaging.dicom import DicomOptions
from maira_sae.client.study import StudyImage

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("data_store", reason="pydicom-data (a test dependency) is not installed")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

LIMITS = DecodeLimits()
ANY_MODALITY = DicomOptions(modalities=None)
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
PATIENT = "Doe^Jane"
BAD_BIRTH_DATE = "not-a-date"  # would make pydicom warn with the value if it were parsed
RAW = np.array([[0, 100, 200, 300], [400, 500, 600, 4095]], dtype=np.uint16)


def decode(data: bytes, options: DicomOptions | None = None, limits: DecodeLimits = LIMITS):
    return decode_image(data, None, name="frontal image", limits=limits, dicom=options)


def dicom_bytes(
    raw: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    *,
    preamble: bool = True,
    **attributes,
) -> bytes:
    """A 12-bit X-ray with a patient name and an invalid (unparsed) birth date; ``raw`` of
    shape [frames, H, W] writes a multi-frame file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = attributes.pop("SOPClassUID", DX_SOP_CLASS)
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
        dataset.Rows, dataset.Columns = raw.shape[-2:]
        if raw.ndim == 3:
            dataset.NumberOfFrames = raw.shape[0]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = photometric
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
        dataset.PixelRepresentation = 0
        dataset.PixelData = raw.astype(np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    if syntax != ExplicitVRLittleEndian and "PixelData" in dataset:
        dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if preamble:
            dataset.save_as(buffer, enforce_file_format=True)
        else:  # the bare data set, as some old archives write it: no preamble, no meta
            dataset.file_meta = FileMetaDataset()
            dataset.save_as(buffer, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


# --- files written here -----------------------------------------------------------------------


def test_monochrome2_applies_rescale():
    decoded = decode_image(
        dicom_bytes(RAW, RescaleSlope=2, RescaleIntercept=-100),
        MediaType.DICOM,
        name="x",
        limits=LIMITS,
    )
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, RAW * 2.0 - 100)


def test_monochrome1_is_inverted_so_dense_is_bright():
    decoded = decode(dicom_bytes(RAW, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100))
    rescaled = RAW * 2.0 - 100
    np.testing.assert_array_equal(decoded, rescaled.min() + rescaled.max() - rescaled)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear window, as a 0..1 fraction of the output range."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def normalised(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_window_is_applied_after_rescale(photometric):
    center, width = 500.0, 801.0
    data = dicom_bytes(
        RAW,
        photometric,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=[center, 1234.0],  # multi-valued: the first window is used
        WindowWidth=[width, 10.0],
    )
    fraction = linear_window(RAW * 2.0 - 100, center, width)
    if photometric == "MONOCHROME1":
        fraction = 1 - fraction
    np.testing.assert_allclose(normalised(decode(data)), fraction, atol=1e-6)
    assert fraction.min() == 0 and fraction.max() == 1  # both clipping ends exercised


def test_window_can_be_left_out():
    data = dicom_bytes(RAW, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=500, WindowWidth=8)
    kept = decode(data, DicomOptions(apply_voi=False))
    np.testing.assert_array_equal(kept, RAW * 2.0 - 100)
    assert len(np.unique(decode(data))) < len(np.unique(kept))  # the narrow window clips


def test_without_pixel_data():
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        decode(dicom_bytes(None))


def test_compressed_syntax_that_cannot_be_decoded_names_it():
    # A SIZ marker that agrees with the header (4 x 2, one 12-bit component), then junk.
    siz = struct.pack(">HHIIIIIIIIHBBB", 41, 0, 4, 2, 0, 0, 4, 2, 0, 0, 1, 11, 1, 1)
    junk = encapsulate([b"\xff\x4f\xff\x51" + siz + b"junk" * 50])
    data = dicom_bytes(RAW, syntax=JPEG2000, PixelData=junk)
    with pytest.raises(
        ImageDecodeError,
        match=r"PixelData frame 0: compressed pixel data could not be decoded \(transfer syntax "
        r"JPEG 2000 Image Compression \(1\.2\.840",
    ):
        decode(data)


def test_decoding_never_surfaces_patient_data(caplog):
    good = dicom_bytes(RAW, WindowCenter=500, WindowWidth=400)
    refused = dicom_bytes(RAW, "HSV")
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode(good)
        with pytest.raises(ImageDecodeError) as error:
            decode(refused)
    surfaced = [str(w.message) for w in caught] + [caplog.text, str(error.value)]
    assert not any(BAD_BIRTH_DATE in text or "Doe" in text for text in surfaced)


def test_unknown_photometric_interpretation_is_refused_naming_the_supported_ones():
    with pytest.raises(ImageDecodeError, match=r"'HSV' is not supported.*PALETTE COLOR"):
        decode(dicom_bytes(RAW, "HSV"))


def test_multi_frame_is_refused_naming_the_count_unless_a_frame_is_chosen():
    frames = np.stack([RAW, RAW // 2 + 7, RAW * 0 + 3 * np.arange(4, dtype=np.uint16)])
    data = dicom_bytes(frames)
    with pytest.raises(ImageDecodeError, match=r"multi-frame DICOM \(3 frames\).*0\.\.2"):
        decode(data)
    for index, expected in enumerate(frames):
        np.testing.assert_array_equal(decode(data, DicomOptions(frame=index)), expected)
    with pytest.raises(ImageDecodeError, match=r"frame 3 was chosen, but .* has 3 frame"):
        decode(data, DicomOptions(frame=3))


def test_a_frame_chosen_in_the_sdk_travels_with_the_whole_file(tmp_path):
    frames = np.stack([RAW, 4095 - RAW])
    path = tmp_path / "two.dcm"
    path.write_bytes(dicom_bytes(frames))
    whole = StudyImage.from_file(path)  # sent as it is: the server refuses it, naming frames
    with pytest.raises(ImageDecodeError, match=r"two\.dcm: multi-frame DICOM \(2 frames\)"):
        whole.pixels()
    image = StudyImage.from_file(path, frame=1)
    assert (image.data, image.media_type, image.frame) == (path.read_bytes(), MediaType.DICOM, 1)
    np.testing.assert_allclose(normalised(image.pixels()), normalised(4095.0 - RAW), atol=1e-4)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_files_without_the_preamble_are_read(syntax, tmp_path):
    data = dicom_bytes(RAW, syntax=syntax, preamble=False, Modality="CR")
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(decode(data), RAW)
    path = tmp_path / "bare.dcm"
    path.write_bytes(data)
    assert StudyImage.from_file(path).media_type is MediaType.DICOM


def test_float_pixel_data_is_refused_saying_what_it_is():
    data = dicom_bytes(None, Rows=2, Columns=2, FloatPixelData=np.zeros(4, "<f4").tobytes())
    with pytest.raises(ImageDecodeError, match=r"Float Pixel Data .* not supported"):
        decode(data)


@pytest.mark.parametrize("modality", ["CR", "DX", "DR", "dx"])
def test_radiograph_modalities_are_accepted(modality):
    np.testing.assert_array_equal(decode(dicom_bytes(RAW, Modality=modality)), RAW)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"Modality": "CT"}, r"modality 'CT' \(computed tomography\) is not a chest radiograph"),
        ({"Modality": "XYZ"}, r"modality 'XYZ' is not a chest radiograph; accepted: CR, DR, DX"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "no Modality .* CT Image Storage"),
    ],
)
def test_other_modalities_are_refused_naming_them(attributes, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode(dicom_bytes(RAW, **attributes))
    np.testing.assert_array_equal(decode(dicom_bytes(RAW, **attributes), ANY_MODALITY), RAW)


def test_dimensions_checked_before_decoding():
    with pytest.raises(ImageDecodeError, match="over the limit of 4"):
        decode(dicom_bytes(RAW), limits=DecodeLimits(max_pixels=4))


def test_truncated():
    data = dicom_bytes(RAW)
    with pytest.raises(ImageDecodeError, match="frontal image: "):
        decode(data[: len(data) - 7])


def test_without_pydicom_installed(monkeypatch):
    data = dicom_bytes(RAW)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageDecodeError, match=r"needs pydicom: pip install 'maira-sae\[images\]'"):
        decode(data)


# --- the sample files of pydicom and pydicom-data ---------------------------------------------


def sample(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"sample file {name} is missing"
    return Path(path)


def decode_sample(name: str, options: DicomOptions = ANY_MODALITY) -> np.ndarray:
    return decode_image(sample(name).read_bytes(), None, name=name, limits=LIMITS, dicom=options)


@cache
def sample_headers() -> dict[str, Dataset]:
    """Every sample file with pixel data: its header, read without the pixels."""
    import data_store
    from pydicom.data.data_manager import DATA_ROOT

    folders = [Path(DATA_ROOT) / "test_files", Path(data_store.__file__).parent / "data"]
    headers = {}
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        if get_testdata_file(path.name, download=False) is None:
            continue  # pydicom-data files that failed pydicom's own hash check
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                header = pydicom.dcmread(path, force=True, stop_before_pixels=False)
            except Exception:
                continue  # not DICOM (JSON, dumps, ICC profiles...)
        if "PixelData" in header:
            headers[path.name] = header
    return headers


# Sample files that are broken on purpose or by accident, and what they are refused for.
BROKEN = {
    "JPEG-lossy.dcm": "compressed pixel data could not be decoded",  # misplaced JPEG marker
    "JPEG2000-embedded-sequence-delimiter.dcm": "PixelData frame 0: JPEG 2000 SIZ says",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "DICOM photometric interpretation 'missing'",
    "MR_truncated.dcm": "pixel data could not be read",
    "badVR.dcm": "Number of Frames is not a number",
    "nested_priv_SQ.dcm": "photometric interpretation 'missing'",
    "meta_missing_tsyntax.dcm": "photometric interpretation 'missing'",
}


def frames_of(header: Dataset) -> int:
    try:
        return int(header.get("NumberOfFrames", 1) or 1)
    except ValueError:
        return 1


def test_the_samples_cover_every_transfer_syntax_a_hospital_sends():
    syntaxes = {str(h.file_meta.get("TransferSyntaxUID", "")) for h in sample_headers().values()}
    wanted = {
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
        pydicom.uid.RLELossless,
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.JPEGExtended12Bit,
        pydicom.uid.JPEGLosslessSV1,
        pydicom.uid.JPEGLSLossless,
        pydicom.uid.JPEGLSNearLossless,
        pydicom.uid.JPEG2000Lossless,
        pydicom.uid.JPEG2000,
    }
    assert wanted <= syntaxes, wanted - syntaxes


@pytest.mark.parametrize("name", sorted(sample_headers()))
def test_every_sample_file_decodes_or_is_refused_for_what_it_is(name):
    header = sample_headers()[name]
    frames = frames_of(header)
    options = ANY_MODALITY.with_frame(frames - 1 if frames > 1 else None)
    if name in BROKEN:
        with pytest.raises(ImageDecodeError, match=BROKEN[name]):
            decode_sample(name, options)
        return
    pixels = decode_sample(name, options)
    assert pixels.dtype == np.float32 and pixels.shape == (header.Rows, header.Columns)
    assert np.isfinite(pixels).all()


# Lossless encodings of one picture decode to the same values, whatever the syntax.
SAME_PICTURE = [
    ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
     "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"],
    ["SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_jpeg_gdcm.dcm",
     "SC_rgb_gdcm2k_uncompressed.dcm"],
    ["SC_rgb_16bit.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_expb_16bit.dcm"],
    ["RG1_UNCR.dcm", "RG1_J2KR.dcm"],
    ["RG1_UNCI.dcm", "RG1_J2KI.dcm"],
    ["US1_UNCR.dcm", "US1_J2KR.dcm"],
    ["MR2_UNCR.dcm", "MR2_J2KR.dcm"],
    ["OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"],
    ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"],
]  # fmt: skip


@pytest.mark.parametrize("names", SAME_PICTURE, ids=[group[0] for group in SAME_PICTURE])
def test_lossless_syntaxes_of_one_picture_agree(names):
    first = decode_sample(names[0])
    for name in names[1:]:
        np.testing.assert_array_equal(decode_sample(name), first, err_msg=name)


def test_multi_frame_samples_agree_frame_by_frame_across_syntaxes():
    names = ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
             "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]  # fmt: skip
    for frame in (0, 9):
        options = ANY_MODALITY.with_frame(frame)
        first = decode_sample(names[0], options)
        for name in names[1:]:
            np.testing.assert_array_equal(decode_sample(name, options), first, err_msg=name)
    with pytest.raises(ImageDecodeError, match=r"multi-frame DICOM \(10 frames\)"):
        decode_sample("emri_small.dcm")


def test_ybr_becomes_the_same_grey_as_its_rgb_original():
    rgb = decode_sample("SC_rgb.dcm")
    for name in ["SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm"]:
        assert np.abs(decode_sample(name) - rgb).max() <= 2, name  # YBR rounding
    for name in ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"]:  # YBR in JPEG
        assert np.abs(decode_sample(name) - rgb).mean() < 1, name  # lossy, chroma subsampled


def test_rgb_dicom_is_grey_exactly_as_an_rgb_png():
    from PIL import Image

    raw = pydicom.dcmread(sample("US1_UNCR.dcm")).pixel_array
    png = io.BytesIO()
    Image.fromarray(raw).save(png, format="PNG")
    from_png = decode_image(png.getvalue(), None, name="png", limits=LIMITS)
    np.testing.assert_array_equal(decode_sample("US1_UNCR.dcm"), from_png)


def test_palette_colour_goes_through_its_lookup_table():
    dataset = pydicom.dcmread(sample("examples_palette.dcm"))
    rgb = pydicom.pixels.apply_color_lut(dataset.pixel_array, dataset).astype(np.float64)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471) / 65536
    np.testing.assert_allclose(decode_sample("examples_palette.dcm"), luma, atol=0.5)


def test_jpeg_lossless_and_extended_12_bit_decode_close_to_the_original():
    original = decode_sample("JPEG-LL.dcm")  # JPEG lossless, process 14 SV1
    extended = decode_sample("JPGExtended.dcm")  # the same picture, JPEG extended 12-bit
    assert original.shape == extended.shape
    assert np.corrcoef(original.ravel(), extended.ravel())[0, 1] > 0.98  # lossy


def test_sample_radiographs_decode_with_the_default_options():
    for name in ["RG1_J2KR.dcm", "RG3_UNCI.dcm", "6154"]:  # CR, MONOCHROME1
        assert decode_sample(name, DicomOptions()).ndim == 2
    with pytest.raises(ImageDecodeError, match=r"modality 'MR' \(magnetic resonance\)"):
        decode_sample("MR_small.dcm", DicomOptions())
    with pytest.raises(ImageDecodeError, match=r"modality 'SEG' \(segmentation\)"):
        decode_sample("liver_1frame.dcm", DicomOptions())
    with pytest.raises(ImageDecodeError, match=r"modality 'RTDOSE' \(radiotherapy dose\)"):
        decode_sample("rtdose_1frame.dcm", DicomOptions())


def test_non_image_objects_are_refused_by_modality():
    for name, modality in [("reportsi.dcm", "SR"), ("rtplan.dcm", "RTPLAN")]:
        with pytest.raises(ImageDecodeError, match=f"modality '{modality}'"):
            decode_sample(name, DicomOptions())


def test_sample_without_preamble_or_transfer_syntax_is_read():
    data = sample("OT-PAL-8-face.dcm").read_bytes()  # implicit VR, no preamble, no meta
    assert data[128:132] != b"DICM"
    assert decode(data, ANY_MODALITY).shape == (480, 640)
    with pytest.raises(ImageDecodeError, match=r"modality 'OT'"):
        decode(data)


WITHOUT_PLUGINS = """
import sys

class NotInstalled:  # as if the client were installed without the pixel-data plugins
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from maira_sae.client.imaging.dicom import DicomOptions
from maira_sae.client.imaging.decode import DecodeLimits, decode_image
data = open(sys.argv[1], "rb").read()
decode_image(data, None, name="x", limits=DecodeLimits(), dicom=DicomOptions(modalities=None))
"""


def test_a_missing_plugin_is_named():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PLUGINS, os.fspath(sample("JPEG-LL.dcm"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "no decoder is installed for transfer syntax JPEG Lossless" in result.stderr
    assert "install pylibjpeg and pylibjpeg-libjpeg (the images and server extras" in (
        result.stderr
    )
    assert "pip install 'maira-sae[images]'" in result.stderr
