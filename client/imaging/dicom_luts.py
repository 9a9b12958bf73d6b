"""Lookup tables checked against their descriptors before pydicom applies them.

pydicom unpacks LUT Data with the entry count the LUT Descriptor claims (PS3.3 C.11.1.1): a
descriptor that claims more entries than the data holds, or fewer than a Modality LUT's data
holds, raises ``struct.error`` deep inside it. Here each item of the Modality LUT Sequence and
the VOI LUT Sequence is held to its descriptor first, and a bad one is refused naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maira_sae.client.imaging.decode import ImageDecodeError

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

__all__ = ["check_luts"]

# Bits per LUT entry pydicom can apply: a Modality LUT's data becomes uint8 or uint16; a VOI
# LUT may use 8 or 10..16 bits (PS3.3 C.8.11.3.1.5).
_MODALITY_DEPTHS = frozenset({8, 16})
_VOI_DEPTHS = frozenset({8, *range(10, 17)})


def check_luts(dataset: Dataset, name: str, *, voi: bool) -> None:
    """Refuses a Modality LUT (and, when ``voi``, a VOI LUT) that pydicom cannot apply."""
    _check_sequence(dataset, "ModalityLUTSequence", _MODALITY_DEPTHS, name, exact=True)
    if voi:
        _check_sequence(dataset, "VOILUTSequence", _VOI_DEPTHS, name, exact=False)


def _check_sequence(
    dataset: Dataset, keyword: str, depths: frozenset[int], name: str, *, exact: bool
) -> None:
    """``exact``: the data must hold exactly the entries claimed (pydicom's ``unpack``), else
    at least as many (``unpack_from``)."""
    for index, item in enumerate(dataset.get(keyword) or ()):
        where = f"{keyword}[{index}]"
        if "LUTDescriptor" not in item or "LUTData" not in item:
            continue  # pydicom skips an incomplete VOI item; an incomplete Modality LUT fails later
        descriptor = item["LUTDescriptor"]
        values = list(descriptor.value) if descriptor.VM > 1 else [descriptor.value]
        if len(values) != 3 or not all(isinstance(value, int) for value in values):
            raise ImageDecodeError(
                name, f"{where}.LUTDescriptor has {len(values)} values, not 3 numbers"
            )
        if not 0 <= values[0] <= 0xFFFF:
            raise ImageDecodeError(
                name, f"{where}.LUTDescriptor claims {values[0]} entries (0..65535 allowed)"
            )
        entries = values[0] or 65536  # 0 stands for 2**16 entries
        if values[2] not in depths:
            allowed = ", ".join(str(depth) for depth in sorted(depths))
            raise ImageDecodeError(
                name,
                f"{where}.LUTDescriptor says {values[2]} bits per entry (supported: {allowed})",
            )
        held = _entries_held(item["LUTData"])
        if held < entries or (exact and held != entries):
            raise ImageDecodeError(
                name, f"{where}.LUTDescriptor claims {entries} entries, LUTData holds {held}"
            )


def _entries_held(element: DataElement) -> int:
    """Entries in LUT Data: 16-bit words of an OW value, or the values of a US/SS one."""
    if isinstance(element.value, bytes | bytearray):
        return len(element.value) // 2
    return int(element.VM)
