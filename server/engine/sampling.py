"""Next-token choice per batch row: greedy, or temperature with nucleus (top-p) sampling.

Each row owns its random generator, seeded from the request, so a row's tokens never depend on
what else is in the batch: a steered variant and its baseline see the same random stream.
"""

from __future__ import annotations

import torch


class RowSampler:
    def __init__(
        self, *, rows: int, temperature: float, top_p: float, seed: int, device: torch.device
    ) -> None:
        self._temperature = temperature
        self._top_p = top_p
        self._generators = []
        if temperature > 0:
            for _ in range(rows):
                generator = torch.Generator(device=device)
                generator.manual_seed(seed)
                self._generators.append(generator)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick one token per row from ``logits [rows, vocab]``; returns ``[rows]`` token ids."""
        logits = logits.float()
        if self._temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self._temperature, dim=-1)
        if self._top_p < 1.0:
            probs = _nucleus(probs, self._top_p)
        return torch.stack(
            [
                torch.multinomial(row_probs, 1, generator=generator)[0]
                for row_probs, generator in zip(probs, self._generators, strict=True)
            ]
        )


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p`` (keeps >= 1)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)
