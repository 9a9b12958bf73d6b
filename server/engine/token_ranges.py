"""Membership of token positions in a set of half-open ranges, vectorised.

A request may name many ranges (``limits.max_token_ranges``) and a study has thousands of
tokens: the ranges are sorted and merged once, then any batch of positions is tested with one
``searchsorted`` instead of positions x ranges comparisons in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maira_sae.server.engine.types import TokenRange


class RangeSet:
    def __init__(self, ranges: Sequence[TokenRange]) -> None:
        merged: list[list[int]] = []
        for token_range in sorted(ranges, key=lambda r: r.start):
            if merged and token_range.start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], token_range.end)
            else:
                merged.append([token_range.start, token_range.end])
        self._starts = torch.tensor([r[0] for r in merged], dtype=torch.long)
        self._ends = torch.tensor([r[1] for r in merged], dtype=torch.long)

    def contains(self, positions: torch.Tensor) -> torch.Tensor:
        """A bool tensor shaped like ``positions`` (int64): inside one of the ranges."""
        if self._starts.numel() == 0:
            return torch.zeros_like(positions, dtype=torch.bool)
        # The last range starting at or before each position is the only one that can hold it.
        index = torch.searchsorted(self._starts, positions, right=True) - 1
        candidate_end = self._ends[index.clamp(min=0)]
        return (index >= 0) & (positions < candidate_end)
