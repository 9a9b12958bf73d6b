"""The shape of the world's model: MAIRA-2's schema at a size that trains on a laptop CPU.

Everything MAIRA-2-specific stays (config keys, tensor names, the 32207-token vocabulary with
the added tokens at their ids, the 4-layer projector, a Dinov2 tower, Llama blocks); the sizes
shrink: a 64-wide residual stream and 112 x 112 images, so each image is an 8 x 8 grid of 64
patch tokens instead of 37 x 37 = 1369. The depth keeps the real proportion that matters for
steering: the SAE reads block 15 at mid-depth, with blocks after it that act on what it writes
(in a 16-block model block 15 would be the last, and steering it could only nudge the logits).
"""

from __future__ import annotations

import copy
from typing import Any

from maira_sae.server.demo.random_checkpoint import DEMO_CONFIG
from maira_sae.server.maira2.config import Maira2Config, parse_maira2_config
from maira_sae.server.maira2.image_preprocessing import ImagePreprocessingSettings

IMAGE_SIZE = 112
PATCH_SIZE = 14
SAE_LAYER = 15
TEXT_LAYERS = 32  # as Vicuna-7B: block 15 sits where it sits in MAIRA-2

PREPROCESSING = ImagePreprocessingSettings(
    shortest_edge=IMAGE_SIZE, crop_height=IMAGE_SIZE, crop_width=IMAGE_SIZE
)


def world_config_dict() -> dict[str, Any]:
    """config.json of the world model: the demo checkpoint's, resized."""
    config = copy.deepcopy(DEMO_CONFIG)
    config["image_seq_length"] = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config["text_config"]["num_hidden_layers"] = TEXT_LAYERS
    config["vision_config"].update(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return config


def world_config() -> Maira2Config:
    return parse_maira2_config(world_config_dict(), source="world model config")
