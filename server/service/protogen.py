"""Regenerates the committed protobuf code of ``maira_sae.v1`` from its .proto file.

``python -m maira_sae.server.service.protogen`` writes ``maira_sae_pb2.py``,
``maira_sae_pb2_grpc.py`` and ``maira_sae_pb2.pyi`` beside the .proto; ``--check`` only
compares a fresh generation with the committed files and exits 1 when they differ. The include
root is the folder above the ``maira_sae`` package, so generated imports read
``from maira_sae.v1 import maira_sae_pb2``.
The output depends on the grpcio-tools version: regenerate with the one the project pins.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

import maira_sae.v1

PROTO_NAME = "maira_sae/v1/maira_sae.proto"
GENERATED_NAMES = ("maira_sae_pb2.py", "maira_sae_pb2_grpc.py", "maira_sae_pb2.pyi")
PROTO_ROOT = Path(maira_sae.v1.__file__).resolve().parents[2]


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc on the contract, writing under ``out_root/maira_sae/v1``; returns the files."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    well_known = resources.files("grpc_tools") / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--pyi_out={out_root}",
            str(proto_root / PROTO_NAME),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc} on {proto_root / PROTO_NAME}")
    out_dir = out_root / Path(PROTO_NAME).parent
    return [out_dir / name for name in GENERATED_NAMES]


def stale_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Names of the committed generated files that differ from a fresh generation."""
    committed_dir = proto_root / Path(PROTO_NAME).parent
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp), proto_root)
        return [
            path.name
            for path in fresh
            if not (committed_dir / path.name).is_file()
            or (committed_dir / path.name).read_bytes() != path.read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m maira_sae.server.service.protogen", description=__doc__
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed generated files are stale; write nothing",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run `make proto`", file=sys.stderr)
            return 1
        print("generated protobuf code is up to date")
        return 0
    for path in generate(PROTO_ROOT):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
