"""A caller in its own process, for the abrupt-disconnect test: opens a long GenerateSteered
stream, prints "streaming" once the first token arrives, and keeps reading until killed.

    python -m tests.reliability._stream_client TARGET MAX_NEW_TOKENS
"""

from __future__ import annotations

import sys

import grpc

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import SMALL_PNG


def main(target: str, max_new_tokens: int) -> None:
    request = pb.GenerateSteeredRequest(
        study=pb.Study(frontal=pb.Image(data=SMALL_PNG)),
        settings=pb.GenerationSettings(max_new_tokens=max_new_tokens),
    )
    with grpc.insecure_channel(target) as channel:
        for _ in pb_grpc.MairaSaeServiceStub(channel).GenerateSteered(request):
            print("streaming", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
