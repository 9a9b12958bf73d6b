"""A call's prompt run, whole or in chunks of at most so many tokens (chunked prefill).

The prompt's input embeddings are built once, as ``LlavaModel.forward`` builds them: the token
embeddings with the projected image features scattered into the image-token placeholders.
Each chunk then runs ``inputs_embeds[:, start:end]`` at its absolute positions on the growing
KV cache, so the chunks compute exactly what one forward over the whole prompt computes, and
the placeholders never need to fall in one chunk. Only the last chunk's logits are kept.

The rows of a call share its prompt. When no intervention touches a prompt position, every
chunk runs as one row and the cache is repeated per row at the end; otherwise the blocks below
the steering layer run as one row (``branch_batch``) and the blocks from there on as one row
per variant, each chunk's steering told the chunk's absolute start; the shared layers' cache is
repeated once the prompt is done.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from maira_sae.server.engine.hooks import ResidualEdit, branch_batch, edit_residuals
from maira_sae.server.engine.steering_plan import ChunkSteerer
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import ModelInputs


@dataclass(frozen=True)
class Prefilled:
    """A call's prompt run: the KV cache of its rows and the logits of their first token."""

    cache: Any  # transformers' DynamicCache, batch = the call's rows
    logits: torch.Tensor  # [rows, vocab]
    length: int  # cached positions per row (the prompt's length)


class ChunkedPrefill:
    """The prompt's forward for ``rows`` rows, run ``max_tokens`` positions at a time.

    ``steerer`` edits the output of block ``branch`` (None: no intervention touches the
    prompt, so the rows never differ during the prefill and nothing is edited).
    """

    def __init__(
        self,
        model: Maira2ForConditionalGeneration,
        inputs: ModelInputs,
        rows: int,
        *,
        branch: int | None,
        steerer: ChunkSteerer | None,
    ) -> None:
        if (branch is None) != (steerer is None):
            raise ValueError("a prefill branches exactly where it is steered")
        self._model = model
        self._inputs = inputs
        self._rows = rows
        self._branch = branch
        self._steerer = steerer
        self._edits: dict[int, ResidualEdit] = {}
        if branch is not None and steerer is not None:
            self._edits[branch] = steerer
        self.length = int(inputs.input_ids.shape[0])
        self.done_tokens = 0  # prompt positions in the cache so far
        self._embeds: torch.Tensor | None = None  # [1, length, hidden] once the first chunk runs
        self._cache: Any = None

    @property
    def remaining(self) -> int:
        return self.length - self.done_tokens

    def run(self, max_tokens: int) -> Prefilled | None:
        """Run the next ``max_tokens`` prompt positions (at least one); the Prefilled once the
        prompt is done, None while more chunks remain."""
        if self.remaining <= 0:
            raise RuntimeError("the prompt is already prefilled")
        start = self.done_tokens
        end = min(self.length, start + max(1, max_tokens))
        model = self._model
        with torch.inference_mode():
            embeds = self._prompt_embeds()
            positions = torch.arange(start, end, device=embeds.device).unsqueeze(0)
            with edit_residuals(model.decoder_layers, self._edits), self._branched():
                if self._steerer is not None:
                    self._steerer.set_chunk(start)
                output = model(
                    inputs_embeds=embeds[:, start:end],
                    position_ids=positions,
                    cache=self._cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        self._cache = output.cache
        self.done_tokens = end
        if end < self.length:
            return None
        return self._finish(output.logits[:, -1, :])

    def _branched(self) -> AbstractContextManager[None]:
        if self._branch is None:
            return nullcontext()
        return branch_batch(self._model.decoder_layers, self._branch, self._rows)

    def _finish(self, logits: torch.Tensor) -> Prefilled:
        """Repeat what ran as one row into every row; the chunks' state is let go."""
        cache, self._cache, self._embeds = self._cache, None, None
        shared_layers = self._model.num_text_layers if self._branch is None else self._branch
        if self._rows > 1:
            for layer in cache.layers[:shared_layers]:
                layer.batch_repeat_interleave(self._rows)
        if self._branch is None:
            logits = logits.expand(self._rows, -1)
        return Prefilled(cache, logits, self.length)

    def _prompt_embeds(self) -> torch.Tensor:
        """``[1, length, hidden]``: token embeddings with the image features in the
        placeholders, built on the first chunk exactly as ``LlavaModel.forward`` does."""
        if self._embeds is not None:
            return self._embeds
        inputs, model = self._inputs, self._model
        input_ids = inputs.input_ids.to(model.device).unsqueeze(0)
        embeds = model.get_input_embeddings()(input_ids)
        pixels = inputs.pixel_values.to(model.device, model.dtype)
        features = model.model.get_image_features(pixel_values=pixels).pooler_output
        features = torch.cat(features, dim=0).to(embeds.device, embeds.dtype)
        placeholders = model.model.get_placeholder_mask(
            input_ids, inputs_embeds=embeds, image_features=features
        )
        embeds = embeds.masked_scatter(placeholders, features)
        self._embeds = embeds
        return embeds
