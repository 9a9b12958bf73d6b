"""DICOM to greyscale pixels: which files are accepted, and what is applied to their pixels.

**Which files.** A chest radiograph: Modality (0008,0060) CR, DX or DR (``DicomOptions``
can widen this, e.g. to OT for secondary captures of films). Any other modality, a non-image
object (SR, RTPLAN...), or a file with no Modality whose SOP class is not a radiograph's is
*refused* with a message naming the modality or SOP class: silently encoding a CT slice or a
segmentation as if it were a chest film would give features and reports that look valid and
mean nothing, and a warning carried back is too easy to ignore. A file with neither Modality
nor SOP class cannot be judged and is accepted. Files without the 128-byte preamble (and so
without "DICM") are read with pydicom's ``force`` once their first element looks like a DICOM
tag; files without a transfer syntax get the one their encoding shows, unless the pixel data is
encapsulated (compressed), which then cannot be decoded. Float Pixel Data (7FE0,0008) and
Double Float Pixel Data (7FE0,0009), which only parametric maps use, are refused: a
radiograph stores integers. A multi-frame file is refused naming its frame count unless a
``frame`` is chosen.

**Decoding.** Compressed pixel data goes through pydicom's pixel-data plugins: pylibjpeg with
pylibjpeg-libjpeg (JPEG baseline, extended, lossless, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000,
HTJ2K) and pylibjpeg-rle (RLE); all in the ``images`` and ``server`` extras. Without the one
a file needs, the error names the packages to install.

**Bounds, before anything is allocated.** The header's Rows, Columns, Samples per Pixel and
Bits Allocated must fit ``DecodeLimits`` (``max_decoded_bytes`` for one decoded frame); a
compressed frame's own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, the RLE segment table;
``dicom_frames``) must agree with them, or the frame is refused naming what it claims before a
codec sees it; a deflated data set is inflated under a cap derived from them
(``dicom_reading``); LUTs are held to their descriptors (``dicom_luts``). Only the chosen
frame is decoded, and any failure of pydicom or a codec is an ``ImageDecodeError``.

**Pixels, in order.** (1) The Modality LUT: Rescale Slope/Intercept or the Modality LUT
Sequence, to the modality's units. (2) The first VOI LUT or window (Window Center/Width with
its VOI LUT Function), the display the acquiring site chose; ``apply_voi=False`` keeps the
whole rescaled range instead. The window matters where it clips: on pydicom's CR sample RG3
it saturates 2.5% more of the pixels and moves the others by up to 3.7% of the range.
(3) The photometric interpretation: MONOCHROME1 is inverted so that dense is bright; RGB, YBR
(converted to RGB by pydicom) and PALETTE COLOR (through its lookup table) become luma with
the weights of an RGB PNG (``decode.to_greyscale``); rescale and window apply only to
monochrome images. No further scaling: MAIRA-2's own preprocessing min-max rescales each image
to 0..255, so only the relative values matter.

Only the elements needed here are read (``specific_tags``), so patient attributes never enter
the dataset and no pydicom warning can carry them; messages name attributes, never values,
except Modality, SOP class and photometric interpretation, which hold no patient data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from maira_sae.client.imaging.decode import (
    DecodeLimits,
    DimensionsCheck,
    ImageDecodeError,
    check_dimensions,
    to_greyscale,
)
from maira_sae.client.imaging.dicom_bounds import PixelGeometry, check_encoded_frame
from maira_sae.client.imaging.dicom_luts import check_luts
from maira_sae.client.imaging.dicom_reading import read_dicom

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["RADIOGRAPH_MODALITIES", "DicomOptions", "decode_dicom", "looks_like_bare_dicom"]

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})
"""Modality values of a radiograph. DR is not a DICOM defined term, but vendors write it."""

_RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    }
)

_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "RF": "radio fluoroscopy",
    "OT": "other, e.g. a secondary capture",
    "SEG": "segmentation",
    "SR": "structured report",
    "RTDOSE": "radiotherapy dose",
    "RTPLAN": "radiotherapy plan",
    "RTSTRUCT": "radiotherapy structure set",
    "ECG": "electrocardiogram",
}

_INSTALL = "pip install 'maira-sae[images]'"
_PLUGINS = {
    "libjpeg": "pylibjpeg and pylibjpeg-libjpeg",
    "openjpeg": "pylibjpeg and pylibjpeg-openjpeg",
    "rle": "pylibjpeg and pylibjpeg-rle",
}


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM files are judged and decoded.

    ``modalities``: the accepted Modality values; None accepts any file with pixel data.
    ``apply_voi``: apply the file's first VOI LUT or window (else the whole rescaled range).
    ``frame``: the frame of a multi-frame file to decode, from 0; None refuses multi-frame
    files, naming their frame count.
    """

    modalities: frozenset[str] | None = RADIOGRAPH_MODALITIES
    apply_voi: bool = True
    frame: int | None = None

    def __post_init__(self) -> None:
        if self.frame is not None and self.frame < 0:
            raise ValueError(f"frame must be >= 0, got {self.frame}")
        if self.modalities is not None:
            if not self.modalities:
                raise ValueError("accept at least one DICOM modality, or None for any")
            accepted = frozenset(m.strip().upper() for m in self.modalities)
            object.__setattr__(self, "modalities", accepted)

    def with_frame(self, frame: int | None) -> DicomOptions:
        return dataclasses.replace(self, frame=frame)

    def describe(self) -> str:
        """What is applied, in words: the text GetInfo reports."""
        voi = (
            "the first VOI LUT or window (Window Center/Width, VOI LUT Function)"
            if self.apply_voi
            else "no VOI LUT or window (the whole rescaled range is kept)"
        )
        which = (
            f"DICOM modalities {', '.join(sorted(self.modalities))} only"
            if self.modalities is not None
            else "DICOM of any modality"
        )
        return (
            f"{which}; Modality LUT "
            f"(Rescale Slope/Intercept), then {voi}, then MONOCHROME1 inverted and RGB, YBR or "
            "PALETTE COLOR reduced to luma; MAIRA-2 then min-max rescales each image to 0..255"
        )


# Only the elements needed to judge, decode and display the pixels.
_DICOM_PIXEL_TAGS = [
    "Modality",
    "SOPClassUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")

# Two-letter value representations, for recognising a file that starts with an element.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)


def looks_like_bare_dicom(data: bytes) -> bool:
    """True when ``data`` starts like a DICOM file written without its 128-byte preamble:
    an element of group 0002 (file meta) or 0008 (identification), little or big endian,
    whose VR is valid (explicit VR) or whose length fits the file (implicit VR)."""
    if len(data) < 8:
        return False
    little = data[:2] in (b"\x02\x00", b"\x08\x00")
    big = data[:2] in (b"\x00\x02", b"\x00\x08")
    if not (little or big):
        return False
    if data[4:6] in _VRS:
        return True
    return little and int.from_bytes(data[4:8], "little") <= len(data) - 8


def decode_dicom(
    data: bytes,
    name: str,
    limits: DecodeLimits,
    options: DicomOptions | None = None,
    on_dimensions: DimensionsCheck | None = None,
) -> np.ndarray:
    """One DICOM file's frame as 2-D float32 greyscale (see the module docstring);
    ``on_dimensions`` as in ``images.decode_image``."""
    options = options or DicomOptions()
    _import_pydicom(name)
    dataset = read_dicom(data, name, limits, _DICOM_PIXEL_TAGS)
    geometry = _check_dicom_header(dataset, name, limits, options)
    if on_dimensions is not None:
        on_dimensions(geometry.columns, geometry.rows)
    _set_missing_transfer_syntax(dataset, name)
    index = options.frame or 0
    check_encoded_frame(dataset, name, index, geometry, limits)
    photometric = str(dataset.PhotometricInterpretation).strip()
    if photometric in _MONOCHROME:
        check_luts(dataset, name, voi=options.apply_voi)
    raw = _dicom_pixel_array(dataset, name, index)
    return _display_values(raw, dataset, name, options)


def _import_pydicom(name: str) -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise ImageDecodeError(name, f"DICOM support needs pydicom: {_INSTALL}") from exc
    return pydicom


def _check_dicom_header(
    dataset: Dataset, name: str, limits: DecodeLimits, options: DicomOptions
) -> PixelGeometry:
    if "PixelData" not in dataset and (
        "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset
    ):
        raise ImageDecodeError(
            name,
            "DICOM Float Pixel Data (floating-point pixels, as in a parametric map) is not "
            "supported: a radiograph stores integer Pixel Data",
        )
    _check_modality(dataset, name, options)
    if "PixelData" not in dataset:
        raise ImageDecodeError(name, "DICOM file has no pixel data")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ImageDecodeError(
            name,
            f"DICOM photometric interpretation {photometric or 'missing'!r} is not supported "
            f"(supported: {', '.join(_MONOCHROME + _COLOUR)})",
        )
    geometry = PixelGeometry.of(dataset, name)
    frames, frame = geometry.frames, options.frame
    if frames > 1 and frame is None:
        raise ImageDecodeError(
            name,
            f"multi-frame DICOM ({frames} frames): choose one frame, 0..{frames - 1} "
            "(Image.frame in the request: StudyImage.from_file(path, frame=N), or "
            "maira-sae --frame N)",
        )
    if frame is not None and frame >= frames:
        raise ImageDecodeError(
            name, f"frame {frame} was chosen, but the DICOM file has {frames} frame(s)"
        )
    check_dimensions(geometry.columns, geometry.rows, name, limits)
    geometry.check_budget(name, limits)
    return geometry


def _check_modality(dataset: Dataset, name: str, options: DicomOptions) -> None:
    if options.modalities is None:
        return
    accepted = ", ".join(sorted(options.modalities))
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    if modality:
        if modality not in options.modalities:
            what = _MODALITY_NAMES.get(modality)
            named = f"{modality!r} ({what})" if what else repr(modality)
            raise ImageDecodeError(
                name,
                f"DICOM modality {named} is not a chest radiograph; accepted: {accepted}",
            )
        return
    sop_class = dataset.get("SOPClassUID")
    if sop_class is None or str(sop_class) in _RADIOGRAPH_SOP_CLASSES:
        return
    raise ImageDecodeError(
        name,
        f"DICOM file has no Modality and its SOP class, {sop_class.name}, is not a "
        f"radiograph's; accepted modalities: {accepted}",
    )


def _set_missing_transfer_syntax(dataset: Dataset, name: str) -> None:
    """A file without (0002,0010): name the syntax its elements were read in, which is the
    pixel data's own unless the pixel data is encapsulated."""
    from pydicom import uid

    if dataset.file_meta.get("TransferSyntaxUID") is not None:
        return
    if dataset["PixelData"].is_undefined_length:
        raise ImageDecodeError(
            name, "DICOM file has compressed pixel data but no transfer syntax (0002,0010)"
        )
    implicit, little = dataset.original_encoding
    if implicit:
        syntax = uid.ImplicitVRLittleEndian
    else:
        syntax = uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    dataset.file_meta.TransferSyntaxUID = syntax


def _dicom_pixel_array(dataset: Dataset, name: str, index: int) -> np.ndarray:
    """Frame ``index`` decoded: always by index, so pydicom decodes the one frame whose header
    ``check_encoded_frame`` has read, never all of them."""
    from pydicom.pixels import get_decoder

    syntax = dataset.file_meta.TransferSyntaxUID
    syntax_text = f"{syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageDecodeError(
            name, f"transfer syntax {syntax_text} has no pixel data decoder in pydicom"
        ) from exc
    if not decoder.is_available:
        raise ImageDecodeError(
            name, f"no decoder is installed for transfer syntax {syntax_text}: {_install(syntax)}"
        )
    dataset.pixel_array_options(index=index)
    try:
        return dataset.pixel_array
    # The plugins raise arbitrary types (struct.error, RuntimeError, MemoryError from a codec,
    # numpy's ValueError from a reshape, and pylibjpeg-rle's Rust panics, which are not even an
    # Exception): every one is a file that cannot be decoded.
    except BaseException as exc:
        if not _is_decoder_failure(exc):
            raise
        why = (
            "compressed pixel data could not be decoded"
            if syntax.is_compressed
            else "pixel data could not be read"
        )
        raise ImageDecodeError(
            name,
            f"PixelData frame {index}: {why} (transfer syntax {syntax_text}; {type(exc).__name__})",
        ) from exc


def _is_decoder_failure(exc: BaseException) -> bool:
    """An Exception, or a panic in a codec written in Rust (pyo3's PanicException derives
    from BaseException so that ``except Exception`` does not swallow it; here it is a file
    the codec could not handle, which must not take the request down with it)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _install(syntax: str) -> str:
    """The install hint for a syntax's decoder, from pydicom's pylibjpeg plugin table."""
    from pydicom.pixels.decoders import pylibjpeg

    needs = pylibjpeg.DECODER_DEPENDENCIES.get(syntax, ())
    plugin = next(
        (plugin for plugin in _PLUGINS if any(plugin in package for package in needs)), None
    )
    packages = _PLUGINS[plugin] if plugin else "a pydicom pixel-data plugin"
    return f"install {packages} (the images and server extras have them: {_INSTALL})"


def _display_values(
    raw: np.ndarray, dataset: Dataset, name: str, options: DicomOptions
) -> np.ndarray:
    photometric = str(dataset.PhotometricInterpretation).strip()
    if photometric in _MONOCHROME:
        values = _monochrome(raw, dataset, name, options)
    else:
        values = _colour_to_grey(raw, dataset, name, photometric)
    if values.ndim != 2:
        raise ImageDecodeError(name, f"DICOM pixel data has shape {values.shape}, expected 2-D")
    return values


def _monochrome(raw: np.ndarray, dataset: Dataset, name: str, options: DicomOptions) -> np.ndarray:
    """Modality LUT, then VOI (when set), then MONOCHROME1 inversion: bright = dense.

    The inversion mirrors values within the image's own range (min + max - x); MAIRA-2 min-max
    normalises each image next, so this is exactly "invert the display".
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(raw, dataset)
        if options.apply_voi:
            values = apply_voi_lut(values, dataset, index=0)
    # check_luts has refused the LUTs pydicom cannot unpack; what is left to fail here is the
    # attributes' values (a non-numeric window, a mismatched shape...), of arbitrary types.
    except Exception as exc:
        raise ImageDecodeError(
            name,
            f"invalid DICOM Modality LUT, rescale, VOI LUT or window attributes "
            f"({type(exc).__name__})",
        ) from exc
    values = np.asarray(values, dtype=np.float32)
    if str(dataset.PhotometricInterpretation).strip() == "MONOCHROME1":
        values = values.min() + values.max() - values
    return values


def _colour_to_grey(raw: np.ndarray, dataset: Dataset, name: str, photometric: str) -> np.ndarray:
    """RGB as decoded (pydicom has converted YBR to RGB), PALETTE COLOR through its lookup
    table, then luma as for an RGB PNG."""
    rgb = raw
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(raw, dataset)
        except Exception as exc:  # struct.error from a segmented table, among others
            raise ImageDecodeError(
                name, f"invalid DICOM palette colour lookup table ({type(exc).__name__})"
            ) from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageDecodeError(
            name, f"DICOM {photometric} pixel data has shape {rgb.shape}, expected [H, W, 3]"
        )
    return to_greyscale(rgb.astype(rgb.dtype.newbyteorder("="), copy=False)).astype(np.float32)
