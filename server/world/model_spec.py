"""The shape of the world's model: MAIRA-2's schema at a size that trains on a laptop CPU.

Everything MAIRA-2-specific stays (config keys, tensor names, the 32207-token vocabulary with
the added tokens at their ids, the 4-layer projector, a Dinov2 tower, 16 Llama blocks so that
"layer 15" exists); the sizes shrink: a 64-wide residual stream and 112 x 112 images, so each
image is an 8 x 8 grid of 64 patch tokens instead of 37 x 37 = 1369.
"""

from __future__ import annotations

import copy
from typing import Any

from maira_sae.server.demo_checkpoint import DEMO_CONFIG
from maira_sae.server.maira2.config import Maira2Config, parse_maira2_config
from maira_sae.server.maira2.image_preprocessing import ImagePreprocessingSettings

IMAGE_SIZE = 112
PATCH_SIZE = 14
SAE_LAYER = 15

PREPROCESSING = ImagePreprocessingSettings(
    shortest_edge=IMAGE_SIZE, crop_height=IMAGE_SIZE, crop_width=IMAGE_SIZE
)


def world_config_dict() -> dict[str, Any]:
    """config.json of the world model: the demo checkpoint's, resized."""
    config = copy.deepcopy(DEMO_CONFIG)
    config["image_seq_length"] = (IMAGE_SIZE // PATCH_SIZE) ** 2
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
