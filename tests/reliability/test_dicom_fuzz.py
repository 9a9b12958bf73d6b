"""A mutation fuzzer over real DICOM files, sent to a live server: every case ends OK or with a
client error, never INTERNAL or UNKNOWN, and the server's peak RSS never grows past its image
budget.

The seeds are pydicom's sample files (scanners' and toolkits', one or two per transfer syntax
a hospital sends). Each mutation is drawn from a fixed seed: bit flips, truncation, header
field edits (Rows, Columns, Bits Allocated, Number of Frames, Samples per Pixel, LUT
descriptors), frame edits inside the encapsulation (truncated, emptied, duplicated, split into
fragments, codestream size markers rewritten) and the two bombs (a deflate bomb, a lying JPEG
2000 frame). The server runs in this process, so its peak RSS is this process's VmHWM, reset
before each case (/proc/self/clear_refs) and read after it.
"""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from maira_sae.client.imaging.dicom_reading import HEADER_ALLOWANCE
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import outcome_of, study
from tests.reliability.conftest import TIGHT_LIMITS
from tests.support.dicom_bombs import deflate_bomb, lut_file, lying_jpeg2000

if TYPE_CHECKING:
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("data_store", reason="pydicom-data (a test dependency) is not installed")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.encaps import encapsulate, generate_frames  # noqa: E402

SEED = 25
MUTATIONS_PER_FILE = 18
FUZZ_PIXELS = 1_000_000  # max_image_pixels of the fuzzed server: every seed file fits
IMAGE_BUDGET = FUZZ_PIXELS * 8 + HEADER_ALLOWANCE  # decoded bytes, plus a deflated header
# Peak RSS is the whole process's: a study that decodes also runs preprocessing and the demo
# model's forward, and the allocator keeps slack (measured: up to 11 MiB alone, 22 MiB after the
# rest of the suite). The bombs this guards against grew it by 700 to 5000 MiB; the bound
# is 100 MB.
SERVED_STUDY_ALLOWANCE = 32 * 2**20
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

SEEDS = [
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "6154",  # Explicit VR Little Endian, CR, MONOCHROME1
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "vlut_04.dcm",  # a VOI LUT Sequence
    "mlut_18.dcm",  # a Modality LUT Sequence
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",  # JPEG Baseline, YBR
    "JPGExtended.dcm",  # JPEG Extended 12-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1, RGB
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS Near-Lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "SC_rgb_gdcm_KY.dcm",  # JPEG 2000, RGB
    "MR_small_RLE.dcm",  # RLE Lossless, 16-bit
    "SC_rgb_rle_2frame.dcm",  # RLE Lossless, RGB, two frames
]

HEADER_FIELDS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel"]
HOSTILE_SIZES = [0, 1, 3, 7, 255, 4096, 12000, 65535]


@pytest.fixture(scope="module")
def fuzz_server(demo_checkpoint: DemoCheckpoint) -> Iterator[pb_grpc.MairaSaeServiceStub]:
    """The tight server, taking DICOM of any modality (the seeds are MR, OT, NM...) and images
    of up to FUZZ_PIXELS pixels."""
    from maira_sae.server.service.config import DicomConfig, LimitsConfig
    from tests.support.servers import demo_config, running_server

    limits = LimitsConfig(**TIGHT_LIMITS, max_image_pixels=FUZZ_PIXELS)
    config = demo_config(demo_checkpoint, limits=limits, dicom=DicomConfig(modalities="*"))
    with pytest.MonkeyPatch.context() as patch:
        # pylibjpeg-rle panics (in Rust) on some mutated frames; the decoder refuses those, but
        # with RUST_BACKTRACE=1 (set on some development machines) the first panic also loads
        # the library's symbols to print a backtrace, about 30 MiB that is not image memory.
        patch.setenv("RUST_BACKTRACE", "0")
        with running_server(config) as server, grpc.insecure_channel(server.target) as channel:
            yield pb_grpc.MairaSaeServiceStub(channel)


@cache
def gigabyte_deflate_bomb() -> bytes:
    return deflate_bomb(2**30)


# --- mutations ------------------------------------------------------------------------------

Mutation = Callable[[bytes, random.Random], bytes | None]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    """1..8 bits flipped, half of them in the first KiB (file meta and header elements)."""
    mutable = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        limit = min(len(data), 1024) if rng.random() < 0.5 else len(data)
        position = rng.randrange(132 if limit > 132 else 0, limit)
        mutable[position] ^= 1 << rng.randrange(8)
    return bytes(mutable)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def edit_header(data: bytes, rng: random.Random) -> bytes | None:
    dataset = _read(data)
    keyword = rng.choice([*HEADER_FIELDS, "NumberOfFrames"])
    size = rng.choice(HOSTILE_SIZES)
    if keyword == "NumberOfFrames":
        dataset.NumberOfFrames = str(rng.choice([0, 2, 3, 1000, 2**31]))
    else:
        setattr(dataset, keyword, size)
    return _write(dataset)


def edit_lut(data: bytes, rng: random.Random) -> bytes | None:
    """A LUT item whose descriptor and data disagree (or are malformed) in a random way."""
    from pydicom.dataset import Dataset

    dataset = _read(data)
    item = Dataset()
    claimed = rng.choice([0, 1, 16, 4096, 65535])
    item.LUTDescriptor = [claimed, rng.choice([0, -5, 100]), rng.choice([8, 9, 12, 16, 32])]
    if rng.random() < 0.2:
        item.LUTDescriptor = item.LUTDescriptor[:2]
    held = rng.choice([1, 2, 16, 4096])
    item.LUTData = bytes(rng.getrandbits(8) for _ in range(2 * held))
    item["LUTData"].VR = "OW"
    setattr(dataset, rng.choice(["VOILUTSequence", "ModalityLUTSequence"]), [item])
    return _write(dataset)


def edit_frame(data: bytes, rng: random.Random) -> bytes | None:
    """One encapsulated frame truncated, emptied, duplicated, split or its size rewritten."""
    dataset = _read(data)
    if not dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
    index = rng.randrange(len(frames))
    frame = frames[index]
    edit = rng.choice(["truncate", "empty", "duplicate", "split", "size", "zero header"])
    if edit == "truncate":
        frames[index] = frame[: rng.randrange(0, len(frame))]
    elif edit == "empty":
        frames[index] = b""
    elif edit == "duplicate":
        frames.insert(index, frame)
    elif edit == "zero header":
        frames[index] = bytes(min(64, len(frame))) + frame[64:]
    elif edit == "size":
        frames[index] = _rewrite_size(frame, rng.choice(HOSTILE_SIZES))
    fragments = rng.randint(2, 4) if edit == "split" else 1
    try:
        dataset.PixelData = encapsulate(
            frames, fragments_per_frame=fragments, has_bot=rng.random() < 0.5
        )
    except ValueError:  # a frame too short to split: the case is not drawn
        return None
    return _write(dataset)


def _rewrite_size(frame: bytes, size: int) -> bytes:
    """The frame with the size in its SIZ, SOF or RLE header replaced by ``size``."""
    for marker, offset, layout in (
        (b"\xff\x51", 6, ">II"),  # JPEG 2000 SIZ: Xsiz, Ysiz
        (b"\xff\xc0", 5, ">HH"),  # JPEG SOF0..3 and JPEG-LS SOF55: height, width
        (b"\xff\xc1", 5, ">HH"),
        (b"\xff\xc3", 5, ">HH"),
        (b"\xff\xf7", 5, ">HH"),
    ):
        at = frame.find(marker)
        if at >= 0 and at + offset + struct.calcsize(layout) <= len(frame):
            start = at + offset
            value = struct.pack(layout, size, size)
            return frame[:start] + value + frame[start + len(value) :]
    return struct.pack("<I", size % 16) + frame[4:]  # RLE: the segment count


MUTATIONS: list[Mutation] = [flip_bits, truncate, edit_header, edit_lut, edit_frame]


def _read(data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def _write(dataset) -> bytes | None:
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset.save_as(buffer)
    except Exception:  # a value pydicom cannot write: the case is not drawn
        return None
    return buffer.getvalue()


def fuzz_cases() -> Iterator[tuple[str, bytes]]:
    """(what, bytes): the seeds' mutations, then the bombs and the two LUT cases."""
    rng = random.Random(SEED)
    for name in SEEDS:
        path = get_testdata_file(name, download=False)
        assert path is not None, f"sample file {name} is missing"
        original = Path(path).read_bytes()
        drawn = 0
        while drawn < MUTATIONS_PER_FILE:
            mutation = rng.choice(MUTATIONS)
            mutated = mutation(original, rng)
            if mutated is not None:
                drawn += 1
                yield f"{name} {mutation.__name__} #{drawn}", mutated
    yield "deflate bomb, 1 MB to 1 GiB", gigabyte_deflate_bomb()
    yield "JPEG 2000 frame of 12000 x 12000 in a 64 x 64 header", lying_jpeg2000(12000)
    yield "VOI LUT claiming 4096 entries, holding 16", lut_file("VOILUTSequence")
    yield "Modality LUT claiming 4096 entries, holding 16", lut_file("ModalityLUTSequence")


# --- the test -------------------------------------------------------------------------------


def _kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def test_mutated_dicom_files_never_fail_the_server_nor_outgrow_its_budget(fuzz_server):
    started = time.monotonic()
    bad, growth, codes = [], {}, {}
    for what, data in fuzz_cases():
        request = pb.TopFeaturesRequest(study=study(data), k=1)
        _reset_peak_rss()
        before = _kib("VmRSS:")
        outcome = outcome_of(lambda request=request: fuzz_server.TopFeatures(request, timeout=60))
        growth[what] = (_kib("VmHWM:") - before) * 1024
        codes[outcome.code] = codes.get(outcome.code, 0) + 1
        if outcome.code not in ALLOWED:
            bad.append(f"{what}: {outcome.code.name} {outcome.details}")
    worst = max(growth, key=growth.__getitem__)
    print(
        f"{len(growth)} cases in {time.monotonic() - started:.1f} s; "
        f"{ {code.name: n for code, n in codes.items()} }; "
        f"largest peak RSS growth {growth[worst] / 2**20:.1f} MiB ({worst})"
    )
    assert not bad, "\n".join(bad)
    assert growth[worst] <= IMAGE_BUDGET + SERVED_STUDY_ALLOWANCE, (worst, growth[worst])
    assert codes.get(grpc.StatusCode.OK, 0) > 0  # some mutations still decode and run
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: lut_file("VOILUTSequence"), r"VOILUTSequence\[0\]\.LUTDescriptor claims 4096"),
        (
            lambda: lut_file("ModalityLUTSequence"),
            r"ModalityLUTSequence\[0\]\.LUTDescriptor claims 4096",
        ),
        (gigabyte_deflate_bomb, r"deflated DICOM data set inflates past"),
        (lambda: lying_jpeg2000(12000), r"PixelData frame 0: JPEG 2000 SIZ says 12000 x 12000"),
    ],
    ids=["voi-lut", "modality-lut", "deflate-bomb", "lying-jpeg2000"],
)
def test_hostile_dicom_is_an_invalid_argument_naming_the_element(tight_stub, make, message):
    """Through the default server (DX files, the default DICOM settings)."""
    import re

    outcome = outcome_of(lambda: tight_stub.TopFeatures(pb.TopFeaturesRequest(study=study(make()))))
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert re.search(rf"^study\.frontal: .*{message}", outcome.details), outcome.details
