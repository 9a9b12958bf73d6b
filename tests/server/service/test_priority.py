"""The priority a caller marks in metadata, and the tokens a generation asks for before it is
converted (which admission lane it takes)."""

from __future__ import annotations

import pytest

from maira_sae.server.engine.admission_policy import Priority
from maira_sae.server.errors import InvalidArgument
from maira_sae.server.service.priority import PRIORITY_KEY, call_priority, tokens_to_generate
from maira_sae.v1 import maira_sae_pb2 as pb


@pytest.mark.parametrize(
    ("metadata", "priority"),
    [(None, Priority.INTERACTIVE), ((("authorization", "Bearer x"),), Priority.INTERACTIVE),
     (((PRIORITY_KEY, "interactive"),), Priority.INTERACTIVE),
     (((PRIORITY_KEY, "batch"),), Priority.BATCH)],
)  # fmt: skip
def test_the_priority_metadata_is_read_and_interactive_when_absent(metadata, priority):
    assert call_priority(metadata) is priority


def test_a_priority_sent_twice_is_invalid():
    with pytest.raises(InvalidArgument, match=f"{PRIORITY_KEY} is sent 2 times; send it once"):
        call_priority(((PRIORITY_KEY, "batch"), (PRIORITY_KEY, "batch")))


def test_the_tokens_a_generation_asks_for_count_its_variants_and_the_default_length():
    variants = [pb.Variant(), pb.Variant(), pb.Variant()]
    settings = pb.GenerationSettings(max_new_tokens=100)
    assert (
        tokens_to_generate(pb.GenerateSteeredRequest(variants=variants, settings=settings), 300)
        == 300
    )
    assert tokens_to_generate(pb.GenerateSteeredRequest(), 300) == 300  # one baseline, the default
