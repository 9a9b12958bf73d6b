"""Run a batch of studies up to the SAE layers and keep each study's residual stream.

Studies are right-padded into one batch: with causal attention a real token never sees the
padding after it, and its position ids are the same as when the study runs alone, so a study's
residuals do not depend on what else was in the batch. The forward is cut after the deepest
wanted layer: Encode never pays for the blocks above it or for the LM head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maira_sae.server.engine.hooks import capture_residuals, run_until_stopped
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import ModelInputs


def capture_batch(
    model: Maira2ForConditionalGeneration,
    studies: Sequence[ModelInputs],
    layers: set[int],
    *,
    pad_token_id: int,
) -> list[dict[int, torch.Tensor]]:
    """For each study, ``{layer: residual [tokens, d_model]}`` over its own tokens only."""
    device = model.device
    lengths = [int(study.input_ids.shape[0]) for study in studies]
    longest = max(lengths)
    input_ids = torch.full((len(studies), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(studies), longest), dtype=torch.long)
    for row, (study, length) in enumerate(zip(studies, lengths, strict=True)):
        input_ids[row, :length] = study.input_ids
        attention_mask[row, :length] = 1
    images = [study.pixel_values for study in studies if study.pixel_values.shape[0]]
    pixel_values = torch.cat(images).to(device, model.dtype) if images else None  # text only

    with (
        torch.inference_mode(),
        capture_residuals(model.decoder_layers, layers, stop_after_last=True) as captured,
    ):
        run_until_stopped(
            lambda: model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                pixel_values=pixel_values,
                use_cache=False,
                logits_to_keep=1,
            )
        )
    return [
        {layer: captured[layer][row, :length] for layer in layers}
        for row, length in enumerate(lengths)
    ]
