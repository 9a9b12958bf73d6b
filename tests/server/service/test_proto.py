"""The committed generated code matches the .proto, and the contract has what the brief names."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from maira_sae.server.service import protogen
from maira_sae.v1 import maira_sae_pb2 as pb

needs_protoc = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="regenerating needs grpcio-tools (the dev extra)",
)


@needs_protoc
def test_committed_generated_files_are_fresh():
    assert protogen.stale_files() == [], "run `make proto` and commit the result"
    assert protogen.main(["--check"]) == 0


@needs_protoc
def test_check_notices_a_changed_proto(tmp_path):
    root = tmp_path / "protos"
    shutil.copytree(protogen.PROTO_ROOT / "maira_sae", root / "maira_sae")
    proto = root / protogen.PROTO_NAME
    proto.write_text(proto.read_text() + "\nmessage Added {}\n")
    assert set(protogen.stale_files(root)) == {"maira_sae_pb2.py", "maira_sae_pb2.pyi"}


def test_service_has_the_six_rpcs():
    service = pb.DESCRIPTOR.services_by_name["MairaSaeService"]
    assert pb.DESCRIPTOR.package == "maira_sae.v1"
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert streaming == {
        "Encode": (False, False),
        "TopFeatures": (False, False),
        "GenerateSteered": (False, True),
        "GetInfo": (False, False),
        "GetFeature": (False, False),
        "SearchFeatures": (False, False),
    }
    assert service.methods_by_name["GenerateSteered"].output_type.name == "GenerateSteeredResponse"


def test_every_enum_starts_with_unspecified():
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name


def test_absent_study_text_differs_from_empty():
    study = pb.Study(indication="")
    assert study.HasField("indication")
    assert not study.HasField("technique")
