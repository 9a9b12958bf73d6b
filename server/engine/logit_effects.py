"""Logit effects of SAE features: which tokens a feature's decoder direction promotes and
suppresses when it reaches the output (Neuronpedia's "positive/negative logits").

The direction is the feature's decoder row in residual-stream units (``W_dec[i]`` divided by
the SAE's input scale), passed through the language model's final RMSNorm and its lm_head, as
the last residual state would be. The norm makes the result independent of the row's length;
it is a direct-path reading (later blocks are skipped), cheap enough to serve: one
[d_model] x [d_model, vocab] product, cached per feature.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.types import LogitEffect, TokenLogit
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration

CACHE_SIZE = 4096  # features
CACHED_TOKENS = 64  # per feature and direction; a larger request is computed afresh


class LogitEffects:
    """Computes and caches the promoted and suppressed tokens of features."""

    def __init__(
        self, model: Maira2ForConditionalGeneration, token_text: Callable[[int], str]
    ) -> None:
        self._norm = model.model.language_model.norm
        self._lm_head = model.lm_head
        self._token_text = token_text
        self._cache: OrderedDict[tuple[str, int], LogitEffect] = OrderedDict()

    def of(self, sae_id: str, sae: MatryoshkaSAE, feature: int, k: int) -> LogitEffect:
        """The ``k`` strongest effects each way; safe for concurrent readers (a race computes
        an entry twice, with the same result)."""
        key = (sae_id, feature)
        effect = self._cache.get(key)
        if effect is None or len(effect.promoted) < min(k, self._vocab_size):
            effect = self._compute(sae, feature, max(k, CACHED_TOKENS))
            self._cache[key] = effect
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return LogitEffect(effect.promoted[:k], effect.suppressed[:k])

    @property
    def _vocab_size(self) -> int:
        return int(self._lm_head.weight.shape[0])

    def _compute(self, sae: MatryoshkaSAE, feature: int, k: int) -> LogitEffect:
        weight = self._lm_head.weight
        direction = sae.W_dec[feature].float() / sae.input_scale
        with torch.inference_mode():  # the norm computes in float32 whatever the model dtype
            logits = self._lm_head(self._norm(direction.to(weight.device, weight.dtype)))
        logits = logits.float().cpu()
        k = min(k, logits.numel())
        top, bottom = logits.topk(k), logits.topk(k, largest=False)
        return LogitEffect(self._tokens(top), self._tokens(bottom))

    def _tokens(self, ranked: torch.return_types.topk) -> tuple[TokenLogit, ...]:
        return tuple(
            TokenLogit(int(token), self._token_text(int(token)), float(value))
            for value, token in zip(ranked.values.tolist(), ranked.indices.tolist(), strict=True)
        )
