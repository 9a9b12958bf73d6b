"""MAIRA-2 at full size with random weights, assembled through the project's own code: the
config parser, ``build_empty_model`` (weights allocated on the device, never initialised on
the CPU), the real processor (with the demo tokenizer, which has MAIRA-2's vocabulary size and
added tokens) and the real ``Engine``, plus a random ef4 SAE at layer 15.

``FULL_SIZE_CONFIG`` holds the real model's config values (shared/maira2-facts.md); ``SMOKE``
shrinks only the widths and depths so that the same code runs end to end on a CPU.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from bench.random_sae import EF4_GROUP_SIZES, random_sae
from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.server.demo_checkpoint import demo_chest_image
from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.maira2.checkpoint import build_empty_model
from maira_sae.server.maira2.config import Maira2Config, parse_maira2_config
from maira_sae.server.maira2.demo_tokenizer import write_chat_template, write_demo_tokenizer
from maira_sae.server.maira2.image_preprocessing import ImagePreprocessingSettings
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.study import Study, Task

SAE_LAYER = 15
SAE_ID = "random-ef4-layer15"
EXPANSION = 4
IMAGE_TOKEN_INDEX = 32204
# <unk>, <s>, </s>, <image>, <prev_im>, <lat_image>: their lm_head rows are zeroed so that
# random weights never end a generation early (every row then makes max_new_tokens tokens).
NEVER_GENERATED = (0, 1, 2, 32204, 32205, 32206)
RESIDUAL_WRITERS = ("o_proj.weight", "down_proj.weight")

FULL_SIZE_CONFIG: dict[str, Any] = {
    "model_type": "maira2",
    "architectures": ["Maira2ForConditionalGeneration"],
    "hidden_size": 4096,
    "ignore_index": -100,
    "image_seq_length": 1369,
    "image_token_index": IMAGE_TOKEN_INDEX,
    "multimodal_projector_bias": True,
    "pad_token_id": 0,
    "projector_hidden_act": "gelu",
    "projector_n_layers": 4,
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
    "torch_dtype": "float32",
    "text_config": {
        "model_type": "llama",
        "vocab_size": 32207,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        # Vicuna's 4096 positions stretched by the linear RoPE factor 1.5: three images fit.
        "max_position_embeddings": 6144,
        "rope_parameters": {"rope_type": "linear", "factor": 1.5, "rope_theta": 10000.0},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
    "vision_config": {
        "model_type": "dinov2",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "patch_size": 14,
        "image_size": 518,
        "num_channels": 3,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "out_features": ["stage12"],
        "apply_layernorm": True,
        "reshape_hidden_states": False,
    },
}

# Only widths and depths shrink; vocabulary, image size (1369 tokens per image), tokens and
# the SAE layer stay, so the smoke run takes every code path the full-size run takes.
SMOKE_SIZES: dict[str, dict[str, Any]] = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    "vision_config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "out_features": ["stage2"],
    },
}


def maira2_config(*, smoke: bool) -> Maira2Config:
    raw = copy.deepcopy(FULL_SIZE_CONFIG)
    if smoke:
        for section, sizes in SMOKE_SIZES.items():
            raw[section].update(sizes)
        raw["hidden_size"] = raw["text_config"]["hidden_size"]
    return parse_maira2_config(raw, source="bench full-size config")


def random_model(
    config: Maira2Config, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Maira2ForConditionalGeneration:
    """Weights allocated on ``device`` and drawn there, in place (the demo checkpoint's
    scheme: N(0, 1) embeddings, N(0, 1/fan_in) matrices with the residual writers scaled by
    0.2 so that the stream keeps token identity, unit norms, small biases)."""
    model = build_empty_model(config, device=device, dtype=dtype)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                param.normal_()
            elif param.ndim >= 2:
                scale = 0.2 if name.endswith(RESIDUAL_WRITERS) else 1.0
                param.normal_(0.0, scale / math.sqrt(math.prod(param.shape[1:])))
            elif name.endswith(("weight", "lambda1")):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
        model.lm_head.weight[list(NEVER_GENERATED)] = 0.0
    return model.eval()


def processor_for(config: Maira2Config, folder: Path) -> Maira2Processor:
    """The real processor over a snapshot folder holding the demo tokenizer and template."""
    write_demo_tokenizer(folder)
    write_chat_template(folder)
    settings = ImagePreprocessingSettings().to_json_dict()
    (folder / "preprocessor_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return Maira2Processor.from_snapshot(
        folder,
        image_token_index=config.image_token_index,
        image_seq_length=config.image_seq_length,
        patch_grid=config.patch_grid,
    )


def frontal_study() -> Study:
    return Study(frontal=demo_chest_image(), indication="Cough.", comparison="None.")


def full_study() -> Study:
    """Frontal, lateral and prior images with a prior report: about 4.2k prompt tokens."""
    return Study(
        frontal=demo_chest_image(),
        lateral=demo_chest_image(620, 540),
        prior=demo_chest_image(580, 580),
        indication="Shortness of breath; follow-up of pleural effusion.",
        technique="PA and lateral views of the chest.",
        comparison="Radiograph from the prior visit.",
        prior_report="Small left pleural effusion. Heart size at the upper limit of normal.",
    )


def full_size_engine(
    config: Maira2Config, device: torch.device, dtype: torch.dtype, folder: Path
) -> Engine:
    """The engine over the random model and a random ef4 SAE calibrated on the layer-15
    residual of the frontal study (about 64 active features per token)."""
    model = random_model(config, device, dtype)
    processor = processor_for(config, folder)
    inputs = processor.process(frontal_study(), Task())
    residual = capture_batch(model, [inputs], {SAE_LAYER}, pad_token_id=processor.pad_token_id)
    sae = random_sae(
        residual[0][SAE_LAYER],
        EXPANSION * config.hidden_size,
        group_sizes=_group_sizes(EXPANSION * config.hidden_size),
    )
    entry = SaeEntry(SAE_ID, sae, FeatureCatalogue.empty(), SAE_LAYER)
    return Engine(model, processor, [entry])


def _group_sizes(d_sae: int) -> tuple[int, ...]:
    if d_sae == sum(EF4_GROUP_SIZES):
        return EF4_GROUP_SIZES
    return (d_sae // 4, d_sae // 4, d_sae - d_sae // 2)
