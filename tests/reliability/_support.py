"""Helpers of the reliability suite: hostile and unusual inputs, status checks, metrics scraping,
and a real ``maira-sae-server serve`` subprocess.

Only the generated stubs are used to talk to servers (never the client SDK), so these tests
exercise exactly what any gRPC caller sends.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image, PngImagePlugin
from prometheus_client.parser import text_string_to_metric_families

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint

T = TypeVar("T")
M = TypeVar("M", bound=Message)

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_EXECUTABLE = Path(sys.executable).with_name("maira-sae-server")
SERVING = health_pb2.HealthCheckResponse.SERVING

# What the contract (the header of maira_sae.proto) allows a call to end with.
DOCUMENTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)

# A string that stands for patient data: it must never reach a log line.
CANARY = "CANARY-7f3a9c-Doe^Jane"


# -------------------------------------------------------------------------------------------
# Images


def png_bytes(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """PNG of ``pixels`` (uint8 or uint16 greyscale, RGB or RGBA), with optional tEXt chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    image = Image.fromarray(pixels)  # uint16 greyscale becomes mode I;16, a 16-bit PNG
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def noise(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_claiming_size(width: int, height: int) -> bytes:
    """A well-formed PNG header that claims ``width`` x ``height`` 8-bit grey pixels, followed
    by a tiny IDAT: only a decoder that trusts the header would try to allocate the image."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def dicom_bytes(
    *,
    pixels: np.ndarray | None = None,
    patient_name: str = "Anonymous",
    compressed_pixel_data: bytes | None = None,
) -> bytes:
    """A DICOM file: uncompressed 16-bit MONOCHROME2 ``pixels``; no PixelData when both pixel
    arguments are None; or ``compressed_pixel_data`` encapsulated under JPEG 2000."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = (
        JPEG2000Lossless if compressed_pixel_data is not None else ExplicitVRLittleEndian
    )
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = patient_name
    dataset.PatientID = patient_name
    dataset.Modality = "DX"
    rows, columns = (64, 64) if pixels is None else pixels.shape
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    if compressed_pixel_data is not None:
        dataset.PixelData = encapsulate([compressed_pixel_data])
        dataset["PixelData"].VR = "OB"
    elif pixels is not None:
        dataset.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study(data: bytes, media_type: int = pb.MEDIA_TYPE_UNSPECIFIED, **texts: str) -> pb.Study:
    return pb.Study(frontal=pb.Image(data=data, media_type=media_type), **texts)


SMALL_PNG = png_bytes(noise())


# -------------------------------------------------------------------------------------------
# Calls and statuses


@dataclass(frozen=True)
class Outcome:
    """How one call ended: its code, its details and, for success, the response(s)."""

    code: grpc.StatusCode
    details: str = ""
    response: Any = None
    error: grpc.RpcError | None = None

    def detail(self, kind: type[M]) -> M | None:
        """The server's google.rpc detail of type ``kind`` (ErrorInfo, BadRequest, ...)."""
        status = rpc_status.from_call(self.error) if self.error is not None else None  # type: ignore[arg-type]
        for detail in status.details if status is not None else ():
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                return message
        return None

    def field_path(self) -> str:
        """The field path of the one BadRequest field violation, after checking the ErrorInfo
        every error carries."""
        info = self.detail(error_details_pb2.ErrorInfo)
        assert info is not None and info.domain == "maira-sae.v1" and info.reason
        bad_request = self.detail(error_details_pb2.BadRequest)
        assert bad_request is not None, self.details
        (violation,) = bad_request.field_violations
        assert violation.description == self.details and violation.reason == info.reason
        return violation.field

    @property
    def retry_delay_s(self) -> float | None:
        """The google.rpc.RetryInfo delay the server attached, if any."""
        if self.error is None:
            return None
        status = rpc_status.from_call(self.error)  # type: ignore[arg-type]
        for detail in status.details if status is not None else ():
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.ToNanoseconds() / 1e9
        return None


def outcome_of(call: Callable[[], T]) -> Outcome:
    """Run a blocking stub call (a stream is read to its end) and say how it ended."""
    try:
        response = call()
        if isinstance(response, Iterator):
            response = list(response)
        return Outcome(grpc.StatusCode.OK, response=response)
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", error=error)  # type: ignore[attr-defined]


def canary_calls(stub: pb_grpc.MairaSaeServiceStub) -> list[grpc.StatusCode]:
    """Calls that carry CANARY in text, in image metadata and in DICOM tags, valid ones and
    ones refused at every stage; returns their codes."""
    png_with_text = png_bytes(noise(), text={"Comment": CANARY, "Author": CANARY})
    dicom = dicom_bytes(pixels=noise().astype(np.uint16) * 16, patient_name=CANARY)
    generate = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG, indication=CANARY),
        settings=pb.GenerationSettings(max_new_tokens=2),
        variants=[pb.Variant(name=CANARY)],
    )
    grounding = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG),
        task=pb.Task(kind=pb.TASK_KIND_PHRASE_GROUNDING, phrase=CANARY),
        settings=pb.GenerationSettings(max_new_tokens=2),
    )
    requests = [
        lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG, indication=CANARY))),
        lambda: stub.Encode(pb.EncodeRequest(study=study(png_with_text))),
        lambda: stub.Encode(pb.EncodeRequest(study=study(dicom), response=CANARY)),
        lambda: stub.TopFeatures(pb.TopFeaturesRequest(study=study(SMALL_PNG, comparison=CANARY))),
        lambda: stub.GenerateSteered(generate),
        lambda: stub.GenerateSteered(grounding),
        lambda: stub.SearchFeatures(pb.SearchFeaturesRequest(query=CANARY)),
        lambda: stub.SearchFeatures(pb.SearchFeaturesRequest(activation_text=CANARY)),
        # refused: over the limit, NUL, bad image with canary text, DICOM without pixels,
        # a PNG with canary metadata but broken pixels, an unknown SAE, an enum out of range
        lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG, indication=CANARY * 500))),
        lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG, technique=CANARY + "\0"))),
        lambda: stub.Encode(pb.EncodeRequest(study=study(b"junk", indication=CANARY))),
        lambda: stub.Encode(pb.EncodeRequest(study=study(dicom_bytes(patient_name=CANARY)))),
        lambda: stub.Encode(pb.EncodeRequest(study=study(png_with_text[:-60]))),
        lambda: stub.Encode(
            pb.EncodeRequest(study=study(SMALL_PNG, indication=CANARY), sae_id="missing")
        ),
        lambda: stub.Encode(
            pb.EncodeRequest(study=study(SMALL_PNG, prior_report=CANARY), task=pb.Task(kind=9))
        ),
    ]
    outcomes = [outcome_of(request) for request in requests]
    for outcome in outcomes:
        assert CANARY not in outcome.details, "an error message echoes request content"
    return [outcome.code for outcome in outcomes]


def health_status(target: str, service: str = "", timeout_s: float = 5.0) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s).status


def finished_events(events: Sequence[pb.GenerateSteeredResponse]) -> dict[int, pb.VariantResult]:
    return {e.variant_index: e.finished for e in events if e.WhichOneof("event") == "finished"}


# -------------------------------------------------------------------------------------------
# Metrics


def scrape_metrics(port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """Every sample of the server's /metrics as ``name{label="v",...}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def admitted_requests(metrics_port: int) -> float:
    return scrape_metrics(metrics_port)["maira_sae_admitted_requests"]


# -------------------------------------------------------------------------------------------
# A server subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_server_config(demo: DemoCheckpoint, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config file's content serving the demo checkpoint on loopback; ``sections`` are merged
    into the defaults (e.g. ``serving={"log_level": "DEBUG"}``)."""
    config: dict[str, Any] = {
        "serving": {"host": "127.0.0.1", "drain_grace_s": 30.0},
        "model": {"path": str(demo.model_dir)},
        "saes": [
            {
                "id": "demo-ef4-layer15",
                "path": str(demo.sae_dir),
                "interpretations_path": str(demo.interpretations_path),
            }
        ],
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@dataclass
class ServerProcess:
    """``maira-sae-server serve`` in a subprocess on fixed loopback ports, so that it can be
    killed and started again on the same ones. Each start's stderr goes to its own file."""

    config: dict[str, Any]
    workdir: Path
    grpc_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    stderr_files: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH: another tree's code

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def health_target(self) -> str:
        return f"127.0.0.1:{self.health_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to serve."""
        serving = {
            **self.config.get("serving", {}),
            "grpc_port": self.grpc_port,
            "health_port": self.health_port,
            "metrics_port": self.metrics_port,
        }
        config_file = self.workdir / f"server-{len(self.stderr_files)}.json"
        config_file.write_text(json.dumps({**self.config, "serving": serving}))
        stderr_file = self.workdir / f"server-{len(self.stderr_files)}.stderr"
        self.stderr_files.append(stderr_file)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIRA_SAE_")}
        with stderr_file.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(SERVER_EXECUTABLE), "serve", "--config", str(config_file)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**env, "HF_HUB_OFFLINE": "1", **self.env},
            )
        return self.process

    def start(self, timeout_s: float = 120.0) -> None:
        """Launch and wait until health reports SERVING."""
        process = self.launch()

        def serving() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}: {self.stderr}")
            try:
                return health_status(self.health_target, timeout_s=1.0) == SERVING
            except grpc.RpcError:
                return False

        wait_until(serving, timeout_s, interval_s=0.1, what="the server to serve")

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.wait(30)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.wait(10)

    @property
    def stderr(self) -> str:
        """The stderr of the latest start."""
        return self.stderr_files[-1].read_text(errors="replace") if self.stderr_files else ""

    @property
    def all_stderr(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.stderr_files)

    def rss_kib(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])


@contextmanager
def server_process(config: dict[str, Any], workdir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(config, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One wire-format length-delimited field: how a string, bytes or message field travels.
    Lets a test send bytes that no protobuf library would serialize, such as invalid UTF-8."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


class StreamOnThread:
    """A GenerateSteered call of ``variants`` x ``tokens`` read to its end on a thread: its
    events, tokens, finished variants and status code."""

    def __init__(
        self, stub, variants: int, tokens: int, *, timeout: float = 120, metadata=()
    ) -> None:
        request = pb.GenerateSteeredRequest(
            study=study(SMALL_PNG),
            settings=pb.GenerationSettings(max_new_tokens=tokens),
            variants=[pb.Variant() for _ in range(variants)],
        )
        self.variants = variants
        self.call = stub.GenerateSteered(request, timeout=timeout, metadata=metadata)
        self.events = self.tokens = self.finished = 0
        self.code: grpc.StatusCode | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events += 1
                kind = event.WhichOneof("event")
                self.tokens += kind == "token"
                self.finished += kind == "finished"
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.code = error.code()

    @property
    def complete(self) -> bool:
        return self.code is grpc.StatusCode.OK and self.finished == self.variants

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(30)
