"""Studies from files, bytes, PIL images and arrays; DICOM files written here with pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maira_sae.client import (
    DicomOptions,
    ImageDecodeError,
    Intervention,
    MediaType,
    Study,
    StudyImage,
    Variant,
)
from maira_sae.client._convert import study_to_proto
from maira_sae.client.requests import PositionScope, SteeringMode

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

RAW = np.array([[0, 100, 200, 300], [400, 500, 600, 4095]], dtype=np.uint16)


def write_dicom(
    path: Path, photometric: str, syntax: str = ExplicitVRLittleEndian, **extra
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = RAW.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = RAW.tobytes()
    dataset.RescaleSlope, dataset.RescaleIntercept = 2, -100
    for keyword, value in extra.items():
        setattr(dataset, keyword, value)
    if syntax != ExplicitVRLittleEndian:
        dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome2_from_files_applies_rescale(tmp_path):
    path = write_dicom(tmp_path / "frontal.dcm", "MONOCHROME2")
    study = Study.from_files(path, indication="Cough.")
    assert study.frontal.media_type is MediaType.DICOM
    assert study.frontal.data == path.read_bytes()  # sent as is; the server decodes it alike
    np.testing.assert_array_equal(study.frontal.pixels(), RAW * 2.0 - 100)


def test_dicom_monochrome1_from_files_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "frontal.dcm", "MONOCHROME1")
    rescaled = RAW * 2.0 - 100
    pixels = Study.from_files(path).frontal.pixels()
    np.testing.assert_array_equal(pixels, rescaled.min() + rescaled.max() - rescaled)


def test_dicom_window_is_applied(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", "MONOCHROME2", WindowCenter=500.0, WindowWidth=801.0)
    pixels = Study.from_files(path).frontal.pixels().astype(np.float64)
    fraction = np.clip(((RAW * 2.0 - 100) - 499.5) / 800 + 0.5, 0, 1)  # DICOM linear window
    normalised = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(normalised, fraction, atol=1e-6)


def test_dicom_files_are_sent_unjudged_and_decoding_here_names_the_file(tmp_path):
    """The server decides what it takes: loading never decodes (no pydicom needed, no local
    policy); ``pixels()`` decodes as the server would, naming the file in each refusal."""
    junk = encapsulate([b"\xff\xd8\xff\xe0" + b"junk" * 50])
    compressed = write_dicom(
        tmp_path / "compressed.dcm", "MONOCHROME2", JPEGBaseline8Bit, PixelData=junk
    )
    colour = write_dicom(tmp_path / "colour.dcm", "HSV")  # retired: not decoded
    ct = write_dicom(tmp_path / "ct.dcm", "MONOCHROME2", Modality="CT")
    refusals = {
        compressed: r"compressed\.dcm: PixelData frame 0: JPEG SOF",
        colour: r"colour\.dcm: .*photometric",
        ct: r"ct\.dcm: DICOM modality 'CT'",
    }
    for path, refusal in refusals.items():
        image = Study.from_files(path).frontal
        assert (image.data, image.media_type, image.frame) == (
            path.read_bytes(),
            MediaType.DICOM,
            None,
        )
        with pytest.raises(ImageDecodeError, match=refusal):
            image.pixels()
    pixels = StudyImage.from_file(ct).pixels(dicom=DicomOptions(modalities=None))
    np.testing.assert_array_equal(pixels, RAW * 2.0 - 100)  # as a server taking any modality
    with pytest.raises(ImageDecodeError, match=r"missing\.png: cannot read file"):
        Study.from_files(tmp_path / "missing.png")


def test_a_chosen_frame_travels_with_the_file(tmp_path):
    path = write_dicom(tmp_path / "one.dcm", "MONOCHROME2")
    image = StudyImage.from_file(path, frame=0)
    assert image.frame == 0 and study_to_proto(Study.of(image)).frontal.frame == 0
    assert not study_to_proto(Study.from_files(path)).frontal.HasField("frame")
    np.testing.assert_array_equal(image.pixels(), RAW * 2.0 - 100)
    with pytest.raises(ValueError, match=r"frame must be in 0\.\.2"):
        StudyImage(data=path.read_bytes(), frame=-1)
    png = StudyImage.of(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="frame 2 was chosen, but a PNG image has frame 0"):
        StudyImage(png.data, png.media_type, frame=2).pixels()


def png_pixels(image: StudyImage) -> np.ndarray:
    assert image.media_type is MediaType.PNG
    return np.asarray(Image.open(io.BytesIO(image.data)))


def test_arrays_and_pil_images_become_lossless_png():
    grey8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    grey16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    np.testing.assert_array_equal(png_pixels(StudyImage.of(grey8)), grey8)
    np.testing.assert_array_equal(png_pixels(StudyImage.of(grey16)), grey16)
    np.testing.assert_array_equal(StudyImage.of(grey16).pixels(), grey16)
    floats = np.array([[-1.0, 0.0], [0.5, 1.0]])
    assert png_pixels(StudyImage.of(floats)).tolist() == [[0, 32768], [49151, 65535]]
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    np.testing.assert_array_equal(png_pixels(StudyImage.of(Image.fromarray(rgb))), rgb)


def test_study_of_mixed_inputs_and_proto(tmp_path):
    png = tmp_path / "prior.png"
    Image.fromarray(np.full((4, 4), 7, dtype=np.uint8)).save(png)
    study = Study.of(
        np.zeros((4, 4), dtype=np.uint8), png.read_bytes(), str(png), indication="", technique="PA"
    )
    assert [role for role, _ in study.images()] == ["frontal", "lateral", "prior"]
    assert study.lateral.media_type is MediaType.PNG
    message = study_to_proto(study)
    assert message.HasField("indication") and message.indication == ""
    assert not message.HasField("comparison")  # absent reads "N/A" on the server
    assert message.prior.data == png.read_bytes()


def test_steering_specs():
    assert Intervention.parse("123:add:8") == Intervention(SteeringMode.ADD, 8.0, feature=123)
    assert Intervention.parse("5:ablate").mode is SteeringMode.ABLATE
    assert Intervention.parse("9:scale:0.5@generated").scope is PositionScope.GENERATED
    variant = Variant.of("two", "1:clamp:0", Intervention.parse("2:add:-3"))
    assert [i.feature for i in variant.interventions] == [1, 2]
    for bad in ("123", "x:add:1", "1:push:2", "1:add", "1:add:nan", "1:add:1@nowhere"):
        with pytest.raises(ValueError, match="steering spec"):
            Intervention.parse(bad)


def test_media_type_is_the_sdk_enum_or_its_mime_string():
    from maira_sae.v1 import maira_sae_pb2 as pb

    assert StudyImage(b"x", "image/png").media_type is MediaType.PNG
    with pytest.raises(TypeError, match=r"media_type 1 is not a maira_sae.client.MediaType"):
        StudyImage(b"x", pb.MEDIA_TYPE_PNG, name="f.png")
    with pytest.raises(TypeError, match=r"MediaType.DICOM \('application/dicom'\)"):
        StudyImage(b"x", "image/tiff")
