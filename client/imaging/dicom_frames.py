"""The geometry a compressed DICOM frame declares in its own header, read before decoding.

A codec allocates what its codestream says, not what the DICOM header says: a JPEG 2000 frame
whose SIZ marker claims 12000 x 12000 inside a file whose Rows and Columns say 64 x 64 makes
openjpeg allocate and decode the whole 12000 x 12000 picture before pydicom notices the
mismatch. So the marker that carries the frame's size is read by hand (no library exposes it
without decoding): JPEG's SOF (ITU-T T.81 B.2.2), JPEG-LS's SOF55 (T.87 C.2.2), the JPEG 2000
codestream's SIZ (T.800 A.5.1), unwrapped from its JP2 boxes when present (T.800 I.4), and the
64-byte RLE header (PS3.5 G.5). Only these few bytes are parsed; the frames themselves come out
of the encapsulation through pydicom.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

__all__ = ["FrameHeader", "FrameHeaderError", "RleHeader", "read_codestream_header", "read_rle"]


class FrameHeaderError(ValueError):
    """A frame whose header cannot be read; the message says what is wrong, in words."""


@dataclass(frozen=True)
class FrameHeader:
    """What a JPEG, JPEG-LS or JPEG 2000 codestream says it holds; ``marker`` names where."""

    marker: str
    rows: int
    columns: int
    samples: int
    precision: int


@dataclass(frozen=True)
class RleHeader:
    """The RLE header: its segment count and where each segment starts in the frame."""

    segments: int
    offsets: tuple[int, ...]


# SOF markers of T.81: baseline, extended, progressive, lossless, each Huffman or arithmetic,
# sequential or hierarchical; C4 (DHT), C8 (JPG) and CC (DAC) are not frame headers.
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_LS_SOF55 = frozenset({0xF7})
# Markers without a length field: TEM and the restart markers RST0..7.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
# SIZ after its marker: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz.
_SIZ = struct.Struct(">HHIIIIIIIIH")

_RLE_HEADER = struct.Struct("<16I")


def read_codestream_header(codec: str, frame: bytes) -> FrameHeader:
    """The frame geometry of a ``codec`` ("JPEG", "JPEG-LS" or "JPEG 2000") codestream."""
    if codec == "JPEG 2000":
        return _j2k_header(frame)
    markers = _JPEG_LS_SOF55 if codec == "JPEG-LS" else _JPEG_SOF
    return _jpeg_header(frame, markers, "JPEG-LS SOF55" if codec == "JPEG-LS" else "JPEG SOF")


def read_rle(frame: bytes) -> RleHeader:
    """The RLE header of ``frame``, its offsets checked to lie in order inside the frame."""
    if len(frame) < _RLE_HEADER.size:
        raise FrameHeaderError(f"RLE frame is {len(frame)} bytes, shorter than its 64-byte header")
    count, *offsets = _RLE_HEADER.unpack_from(frame)
    if not 1 <= count <= 15:
        raise FrameHeaderError(f"RLE header says {count} segments (1..15 allowed)")
    used = tuple(offsets[:count])
    in_order = used[0] == _RLE_HEADER.size and all(a < b for a, b in itertools.pairwise(used))
    if not in_order or used[-1] >= len(frame):
        raise FrameHeaderError(
            f"RLE segment offsets {list(used)} are not increasing from 64 inside the "
            f"{len(frame)}-byte frame"
        )
    return RleHeader(count, used)


def _jpeg_header(frame: bytes, sof_markers: frozenset[int], marker_name: str) -> FrameHeader:
    if frame[:2] != b"\xff\xd8":
        raise FrameHeaderError(f"{marker_name}: the frame does not start with a JPEG SOI marker")
    position = 2
    while position + 4 <= len(frame):
        if frame[position] != 0xFF:
            raise FrameHeaderError(f"{marker_name}: no marker at byte {position} of the frame")
        marker = frame[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if marker in (_SOS, _EOI):
            break
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if marker in sof_markers:
            if length < 8 or position + 2 + length > len(frame):
                raise FrameHeaderError(f"{marker_name} segment is truncated")
            precision, rows, columns, samples = struct.unpack_from(">BHHB", frame, position + 4)
            return FrameHeader(marker_name, rows, columns, samples, precision)
        if length < 2 or position + 2 + length > len(frame):
            raise FrameHeaderError(
                f"{marker_name}: the segment at byte {position} has length {length}, which does "
                f"not fit the {len(frame)}-byte frame"
            )
        position += 2 + length
    raise FrameHeaderError(f"{marker_name}: the frame has no frame header before its scan")


def _j2k_header(frame: bytes) -> FrameHeader:
    codestream = _jp2_codestream(frame) if frame.startswith(_JP2_SIGNATURE) else frame
    if not codestream.startswith(_J2K_SOC_SIZ):
        raise FrameHeaderError("JPEG 2000 SIZ: the codestream does not start with SOC and SIZ")
    start = len(_J2K_SOC_SIZ)
    if len(codestream) < start + _SIZ.size + 1:
        raise FrameHeaderError("JPEG 2000 SIZ segment is truncated")
    _, _, xsiz, ysiz, xosiz, yosiz, *_tiles, components = _SIZ.unpack_from(codestream, start)
    component_sizes = codestream[start + _SIZ.size : start + _SIZ.size + 3 * components : 3]
    if components < 1 or len(component_sizes) < components or xosiz > xsiz or yosiz > ysiz:
        raise FrameHeaderError("JPEG 2000 SIZ segment is malformed")
    precision = max((size & 0x7F) + 1 for size in component_sizes)
    return FrameHeader("JPEG 2000 SIZ", ysiz - yosiz, xsiz - xosiz, components, precision)


def _jp2_codestream(frame: bytes) -> bytes:
    """The contents of the JP2 file's contiguous codestream box (jp2c)."""
    position = 0
    while position + 8 <= len(frame):
        length, kind = struct.unpack_from(">I4s", frame, position)
        header = 8
        if length == 1 and position + 16 <= len(frame):
            length, header = struct.unpack_from(">Q", frame, position + 8)[0], 16
        elif length == 0:
            length = len(frame) - position
        if length < header:
            break
        if kind == b"jp2c":
            return frame[position + header : position + length]
        position += length
    raise FrameHeaderError("JPEG 2000 SIZ: the JP2 file has no codestream box")
