"""MAIRA-2's config.json, read and checked, as transformers' own config classes.

The published config declares ``model_type: "maira2"``, a class that only exists as remote code.
We never run that code: the file is read as plain JSON, checked against what MAIRA-2 is (a Llama
language model, a Dinov2 vision tower whose post-LayerNorm patch features, CLS dropped, go
through an MLP projector) and turned into a ``LlavaConfig`` built from ``LlamaConfig`` and
``Dinov2Config``. Anything else is refused with the file and key named, because a checkpoint
that only looks similar would load and then produce quietly wrong features.
"""

from __future__ import annotations

import copy
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from transformers import Dinov2Config, LlamaConfig, LlavaConfig
from transformers.activations import ACT2FN

MODEL_TYPE = "maira2"

# Keys MAIRA-2's config.json always has; the rest fall back to transformers' defaults.
REQUIRED_KEYS = (
    "text_config",
    "vision_config",
    "image_token_index",
    "projector_n_layers",
    "projector_hidden_act",
    "multimodal_projector_bias",
    "vision_feature_layer",
    "vision_feature_select_strategy",
)

# Top-level keys passed through to LlavaConfig unchanged.
_LLAVA_KEYS = (
    "image_token_index",
    "projector_hidden_act",
    "multimodal_projector_bias",
    "vision_feature_layer",
    "vision_feature_select_strategy",
)


_SubConfig = TypeVar("_SubConfig", LlamaConfig, Dinov2Config)


class ImageFeatures(enum.Enum):
    """Which vision-tower output feeds the projector; the released model code exists in both
    forms and which one produced the SAEs' training activations is not public (a setting)."""

    # The Dinov2 backbone's feature map: the last block's output after the final LayerNorm.
    # The earlier release reads this, and its docstring says MAIRA-2 wants exactly it.
    FEATURE_MAPS = "feature_maps"
    # hidden_states[-1]: the last block's output before that LayerNorm, as the later release
    # (written for transformers 4.49+) reads it. Logits differ by about 5 between the two.
    HIDDEN_STATES = "hidden_states"


class CheckpointError(ValueError):
    """A checkpoint (config, weights, snapshot or SAE) is not what this server can serve."""


@dataclass(frozen=True)
class Maira2Config:
    """A validated MAIRA-2 configuration.

    ``llava`` is what the model is built from; it also carries ``projector_n_layers`` and
    ``image_features`` as extra attributes so that the model class needs nothing but its
    transformers config.
    """

    llava: LlavaConfig
    projector_n_layers: int

    @property
    def image_features(self) -> ImageFeatures:
        return ImageFeatures(self.llava.image_features)

    @property
    def text(self) -> LlamaConfig:
        return self.llava.text_config

    @property
    def vision(self) -> Dinov2Config:
        return self.llava.vision_config

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of one image's patch grid: 37 x 37 for the real model."""
        side = self.vision.image_size // self.vision.patch_size
        return side, side

    @property
    def image_seq_length(self) -> int:
        """Image tokens (= projected patch features) per image."""
        return self.llava.image_seq_length

    @property
    def image_token_index(self) -> int:
        return self.llava.image_token_index

    @property
    def num_text_layers(self) -> int:
        return self.text.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        """Width of the language model's residual stream (what an SAE must match)."""
        return self.text.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size


def read_maira2_config(
    path: Path, *, image_features: ImageFeatures = ImageFeatures.FEATURE_MAPS
) -> Maira2Config:
    """Read and validate a MAIRA-2 ``config.json``."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no config.json; is this a MAIRA-2 snapshot?") from e
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"{path}: cannot read it as JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level")
    return parse_maira2_config(raw, source=str(path), image_features=image_features)


def parse_maira2_config(
    raw: dict[str, Any],
    *,
    source: str = "config.json",
    image_features: ImageFeatures = ImageFeatures.FEATURE_MAPS,
) -> Maira2Config:
    """Validate a parsed MAIRA-2 config dict; ``source`` names the file in error messages.
    ``image_features`` is the serving choice of the vision output (not a key of the file)."""
    raw = copy.deepcopy(raw)  # transformers' config classes normalise nested dicts in place
    if raw.get("model_type") != MODEL_TYPE:
        raise _refusal(
            source, "model_type", f"expected '{MODEL_TYPE}', got {raw.get('model_type')!r}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise _refusal(source, missing[0], f"missing (all missing: {', '.join(missing)})")

    text = _sub_config(raw, "text_config", "llama", LlamaConfig, source)
    vision = _sub_config(raw, "vision_config", "dinov2", Dinov2Config, source)
    _check_text(raw, text, source)
    _check_vision(raw["vision_config"], vision, source)

    if raw["vision_feature_select_strategy"] != "default":
        raise _refusal(
            source,
            "vision_feature_select_strategy",
            f"only 'default' (CLS token dropped) is supported, "
            f"got {raw['vision_feature_select_strategy']!r}",
        )
    if raw["vision_feature_layer"] != -1:
        raise _refusal(
            source,
            "vision_feature_layer",
            f"only -1 (the last layer, after the final LayerNorm) is supported, "
            f"got {raw['vision_feature_layer']!r}",
        )
    n_layers = raw["projector_n_layers"]
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise _refusal(
            source, "projector_n_layers", f"expected a positive integer, got {n_layers!r}"
        )
    if raw["projector_hidden_act"] not in ACT2FN:
        raise _refusal(
            source, "projector_hidden_act", f"unknown activation {raw['projector_hidden_act']!r}"
        )
    image_token_index = raw["image_token_index"]
    if not isinstance(image_token_index, int) or not 0 <= image_token_index < text.vocab_size:
        raise _refusal(
            source,
            "image_token_index",
            f"{image_token_index!r} is not a token id below the vocab size",
        )

    side = vision.image_size // vision.patch_size
    seq_length = side * side
    if raw.get("image_seq_length", seq_length) != seq_length:
        raise _refusal(
            source,
            "image_seq_length",
            f"{raw['image_seq_length']} does not match (image_size // patch_size)^2 = "
            f"({vision.image_size} // {vision.patch_size})^2 = {seq_length}",
        )

    llava = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_seq_length=seq_length,
        tie_word_embeddings=False,
        projector_n_layers=n_layers,
        image_features=image_features.value,
        **{key: raw[key] for key in _LLAVA_KEYS},
    )
    return Maira2Config(llava=llava, projector_n_layers=n_layers)


def _refusal(source: str, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"{source}: key '{key}': {why}")


def _sub_config(
    raw: dict[str, Any], key: str, model_type: str, config_class: type[_SubConfig], source: str
) -> _SubConfig:
    sub = raw[key]
    if not isinstance(sub, dict):
        raise _refusal(source, key, "expected a JSON object")
    if sub.get("model_type") != model_type:
        raise _refusal(
            source, f"{key}.model_type", f"expected '{model_type}', got {sub.get('model_type')!r}"
        )
    try:
        return config_class.from_dict(sub)
    except (TypeError, ValueError) as e:
        raise _refusal(source, key, f"not a valid {config_class.__name__}: {e}") from e


def _check_text(raw: dict[str, Any], text: LlamaConfig, source: str) -> None:
    if raw["text_config"].get("tie_word_embeddings", False):
        raise _refusal(
            source, "text_config.tie_word_embeddings", "MAIRA-2 has an untied lm_head; got true"
        )
    if raw.get("hidden_size", text.hidden_size) != text.hidden_size:
        raise _refusal(
            source,
            "hidden_size",
            f"{raw['hidden_size']} differs from text_config.hidden_size {text.hidden_size}",
        )


def _check_vision(sub: dict[str, Any], vision: Dinov2Config, source: str) -> None:
    # The features are the backbone's last feature map with the final LayerNorm applied and the
    # CLS token dropped; these keys would change either what that map is or its layout.
    if sub.get("reshape_hidden_states", False):
        raise _refusal(
            source,
            "vision_config.reshape_hidden_states",
            "must be false: reshaped feature maps have no CLS token to drop",
        )
    vision.reshape_hidden_states = False
    if not sub.get("apply_layernorm", True):
        raise _refusal(
            source, "vision_config.apply_layernorm", "must be true: features are post-LayerNorm"
        )
    last_stage = f"stage{vision.num_hidden_layers}"
    if "out_features" in sub and sub["out_features"] != [last_stage]:
        raise _refusal(
            source,
            "vision_config.out_features",
            f"expected ['{last_stage}'] (the last layer), got {sub['out_features']!r}",
        )
    if vision.image_size % vision.patch_size:
        raise _refusal(
            source,
            "vision_config.image_size",
            f"{vision.image_size} is not a multiple of patch_size {vision.patch_size}",
        )
