"""Next-token choice per batch row: greedy, or temperature with nucleus (top-p) sampling.

Each row owns its random generator, seeded from the request, so a row's tokens never depend on
what else is in the batch: a steered variant and its baseline see the same random stream.
"""

from __future__ import annotations

import torch

# The temperatures a request may ask (0 aside, which is greedy): below 0.01 sampling is greedy
# in all but name, above 100 it is noise. The sampler stays finite outside them too.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


class RowSampler:
    def __init__(
        self, *, rows: int, temperature: float, top_p: float, seed: int, device: torch.device
    ) -> None:
        # Within float32, where the logits are divided: 1e-308 would round to 0 there.
        finfo = torch.finfo(torch.float32)
        self._temperature = min(max(temperature, finfo.tiny), finfo.max) if temperature > 0 else 0.0
        self._top_p = top_p
        self._generators = []
        if temperature > 0:
            for _ in range(rows):
                generator = torch.Generator(device=device)
                generator.manual_seed(seed)
                self._generators.append(generator)

    def __call__(self, logits: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """Pick one token per row from ``logits [rows, vocab]``; returns ``[rows]`` token ids.
        ``rows`` names the sampler's rows the logits belong to (default: all, in order), so a
        row keeps its own random stream when others have ended."""
        logits = logits.float()
        if self._temperature <= 0:
            return logits.argmax(dim=-1)
        # Shifted so the largest logit is 0: dividing by any positive temperature then gives
        # 0 for the best token and at most -inf for the rest, never inf - inf = nan.
        shifted = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(shifted / self._temperature, dim=-1)
        if self._top_p < 1.0:
            probs = _nucleus(probs, self._top_p)
        generators = self._generators if rows is None else [self._generators[r] for r in rows]
        return torch.stack(
            [
                torch.multinomial(row_probs, 1, generator=generator)[0]
                for row_probs, generator in zip(probs, generators, strict=True)
            ]
        )


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p``; the most
    likely token always stays (a ``top_p`` that rounds to 0 in float32 keeps just it)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    outside = mass_before >= top_p
    outside[..., 0] = False
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)
