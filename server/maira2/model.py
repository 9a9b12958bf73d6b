"""MAIRA-2 assembled from transformers' own LLaVA, Llama and Dinov2 modules.

Two things differ from a stock ``LlavaForConditionalGeneration``; everything else (embedding
merge, attention, KV cache, ``generate``) is transformers' own code:

- the projector is an MLP of ``projector_n_layers`` Linear layers with the activation between
  them, held as ``multi_modal_projector.layers`` (so weights sit at ``layers.{0,2,4,6}``);
- image features are, by default, the vision tower's ``last_hidden_state`` - the hidden states
  AFTER the final LayerNorm (the backbone's feature map) - with the CLS token dropped. Stock
  LLaVA reads ``hidden_states[-1]``, the output of the last block BEFORE that LayerNorm, and so
  does the later release of MAIRA-2's own code; ``image_features = "hidden_states"`` selects
  that reading (``config.ImageFeatures``), since which one the SAEs were trained on is unknown.

In memory the modules sit where transformers 5 puts them (``model.language_model``,
``model.vision_tower``, ``model.multi_modal_projector``, ``lm_head``); the on-disk names are
mapped in ``checkpoint.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Dinov2Model, LlamaModel, LlavaConfig
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
)


class Maira2Projector(nn.Module):
    """Linear(vision -> text), then (activation, Linear(text -> text)) x (n_layers - 1)."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        text_size = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        modules: list[nn.Module] = [nn.Linear(config.vision_config.hidden_size, text_size, bias)]
        for _ in range(config.projector_n_layers - 1):
            modules += [ACT2FN[config.projector_hidden_act], nn.Linear(text_size, text_size, bias)]
        self.layers = nn.Sequential(*modules)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.layers(image_features)


class Maira2Model(LlavaModel):
    """``LlavaModel`` with a Dinov2 vision tower, the MLP projector and post-LayerNorm features."""

    def __init__(self, config: LlavaConfig) -> None:
        # LlavaModel.__init__ would build (and initialise) a two-layer projector only for it to
        # be replaced; build the three parts here instead.
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = Dinov2Model(config.vision_config)
        self.multi_modal_projector = Maira2Projector(config)
        self.language_model = LlamaModel(config.text_config)
        self.post_init()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Project each image's patch features: ``pooler_output`` is a list, one
        ``[image_seq_length, text_hidden]`` tensor per image, in the order of ``pixel_values``.

        ``LlavaModel.forward`` concatenates that list and scatters it into the image-token
        slots in reading order (row by row of the batch), so a batch of studies with different
        image counts passes all its images concatenated, study by study. The config only
        allows layer -1 and strategy "default"; other per-call values are refused. Extra
        ``kwargs`` (output flags meant for the language model) are not passed to the tower.
        """
        if vision_feature_layer not in (None, -1):
            raise ValueError(f"MAIRA-2 uses vision_feature_layer -1, got {vision_feature_layer}")
        if vision_feature_select_strategy not in (None, "default"):
            raise ValueError(
                f"MAIRA-2 uses strategy 'default', got {vision_feature_select_strategy!r}"
            )
        before_layernorm = self.config.image_features == "hidden_states"
        image_outputs = self.vision_tower(
            pixel_values, output_hidden_states=before_layernorm, return_dict=True
        )
        if before_layernorm:  # the last block's output, final LayerNorm not applied
            patch_features = image_outputs.hidden_states[-1][:, 1:]
        else:  # the feature map: post-LayerNorm
            patch_features = image_outputs.last_hidden_state[:, 1:]  # CLS dropped either way
        image_outputs.pooler_output = list(self.multi_modal_projector(patch_features))
        return image_outputs


class Maira2ForConditionalGeneration(LlavaForConditionalGeneration):
    """MAIRA-2 with transformers' LLaVA generation; built from a ``Maira2Config.llava``."""

    def __init__(self, config: LlavaConfig) -> None:
        LlavaPreTrainedModel.__init__(self, config)
        self.model = Maira2Model(config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.post_init()

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The Llama decoder blocks; hook block ``i``'s output for "layer i" of an SAE."""
        return self.model.language_model.layers

    @property
    def num_text_layers(self) -> int:
        return self.config.text_config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def image_token_index(self) -> int:
        return self.config.image_token_index
