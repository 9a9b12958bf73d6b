"""The bound on a request's cost in tokens, checked after tokenising and before queueing.

Characters are no measure of cost: one 4-byte character is about four tokens, and every image
adds its patches. What the model runs is the prompt's tokens, the teacher-forced response and
up to ``max_new_tokens`` generated ones, so those are bounded: by default at the model's
context length, which also keeps the longest forward pass short enough that a caller who has
left costs at most one such pass (a running forward is not interrupted).
"""

from __future__ import annotations

from dataclasses import dataclass

from maira_sae.server.errors import OutOfRange, limit_metadata
from maira_sae.server.maira2.processor import ModelInputs

DEFAULT_MAX_ACTIVATION_TEXT_TOKENS = 256


@dataclass(frozen=True)
class TokenLimits:
    max_prompt_tokens: int
    max_sequence_tokens: int
    # Tokens of a search-by-activation text, its BOS included.
    max_activation_text_tokens: int = DEFAULT_MAX_ACTIVATION_TEXT_TOKENS

    @classmethod
    def resolve(
        cls,
        *,
        max_prompt_tokens: int,
        max_sequence_tokens: int,
        context_length: int,
        max_activation_text_tokens: int = DEFAULT_MAX_ACTIVATION_TEXT_TOKENS,
    ) -> TokenLimits:
        """The configured limits, 0 meaning the model's context length (which also caps the
        activation text's)."""
        return cls(
            max_prompt_tokens=max_prompt_tokens or context_length,
            max_sequence_tokens=max_sequence_tokens or context_length,
            max_activation_text_tokens=min(max_activation_text_tokens, context_length),
        )

    def check_activation_text(self, inputs: ModelInputs) -> None:
        """OutOfRange naming the count and the limit for a search-by-activation text past
        ``max_activation_text_tokens``."""
        count = len(inputs.tokens)
        if count > self.max_activation_text_tokens:
            raise OutOfRange(
                f"activation_text is {count} tokens (BOS included), over "
                f"limits.max_activation_text_tokens = {self.max_activation_text_tokens}; "
                "shorten the text",
                field="activation_text",
                reason="LIMIT_EXCEEDED",
                metadata=limit_metadata(
                    "max_activation_text_tokens", self.max_activation_text_tokens, count
                ),
            )

    def check(self, inputs: ModelInputs, max_new_tokens: int = 0) -> None:
        """OutOfRange naming the count and the limit when ``inputs`` (plus ``max_new_tokens``
        to generate) would run past either limit."""
        prompt = inputs.prompt_length
        if prompt > self.max_prompt_tokens:
            raise OutOfRange(
                f"the prompt is {prompt} tokens (image patches included), over "
                f"limits.max_prompt_tokens = {self.max_prompt_tokens}; shorten the text fields",
                field="study",
                reason="LIMIT_EXCEEDED",
                metadata=limit_metadata("max_prompt_tokens", self.max_prompt_tokens, prompt),
            )
        response = len(inputs.tokens) - prompt
        total = prompt + response + max_new_tokens
        if total > self.max_sequence_tokens:
            raise OutOfRange(
                f"the prompt ({prompt} tokens) + response ({response}) + max_new_tokens "
                f"({max_new_tokens}) is {total} tokens, over limits.max_sequence_tokens = "
                f"{self.max_sequence_tokens}",
                field="settings.max_new_tokens" if max_new_tokens else "response",
                reason="LIMIT_EXCEEDED",
                metadata=limit_metadata("max_sequence_tokens", self.max_sequence_tokens, total),
            )
