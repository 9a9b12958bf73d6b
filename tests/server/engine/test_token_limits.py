"""Token limits and range membership, without a model."""

from __future__ import annotations

import pytest
import torch

from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.engine.token_ranges import RangeSet
from maira_sae.server.engine.types import TokenRange
from maira_sae.server.errors import OutOfRange
from maira_sae.server.maira2.processor import ModelInputs
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind


def _inputs(prompt: int, response: int = 0) -> ModelInputs:
    tokens = tuple(
        TokenInfo(i, 5, "a", TokenKind.PROMPT_TEXT if i < prompt else TokenKind.RESPONSE)
        for i in range(prompt + response)
    )
    return ModelInputs(
        input_ids=torch.zeros(len(tokens), dtype=torch.long),
        pixel_values=torch.zeros(1, 3, 2, 2),
        tokens=tokens,
        images=(),
        prompt_length=prompt,
    )


def test_zero_means_the_context_length():
    limits = TokenLimits.resolve(max_prompt_tokens=0, max_sequence_tokens=300, context_length=4096)
    assert limits == TokenLimits(max_prompt_tokens=4096, max_sequence_tokens=300)


def test_limits_hold_at_the_limit_and_refuse_past_it():
    limits = TokenLimits(max_prompt_tokens=100, max_sequence_tokens=150)
    limits.check(_inputs(100, 50))
    limits.check(_inputs(100), max_new_tokens=50)
    with pytest.raises(OutOfRange, match=r"prompt is 101 tokens.*max_prompt_tokens = 100"):
        limits.check(_inputs(101))
    with pytest.raises(OutOfRange, match=r"\(100 tokens\) \+ response \(0\) \+ max_new_tokens"):
        limits.check(_inputs(100), max_new_tokens=51)
    with pytest.raises(OutOfRange, match=r"is 151 tokens, over limits.max_sequence_tokens = 150"):
        limits.check(_inputs(100, 51))


def test_range_set_matches_the_naive_union():
    ranges = [TokenRange(5, 9), TokenRange(0, 2), TokenRange(8, 12), TokenRange(20, 21)]
    ranges += [TokenRange(12, 13), TokenRange(30, 1000)]
    positions = torch.arange(0, 40)
    expected = [any(r.start <= p < r.end for r in ranges) for p in positions.tolist()]
    assert RangeSet(ranges).contains(positions).tolist() == expected
    assert not RangeSet([]).contains(positions).any()
