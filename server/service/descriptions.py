"""What the runtime loaded, described for GetInfo: plain values, converted by ``to_proto``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDescription:
    """What GetInfo says about the loaded model."""

    name: str
    path: str
    dtype: str
    device: str
    num_layers: int
    hidden_size: int
    image_tokens_per_image: int
    patch_grid_rows: int
    patch_grid_cols: int
    demo: bool
    image_features: str


@dataclass(frozen=True)
class SaeDescription:
    """What GetInfo says about one loaded SAE."""

    id: str
    layer: int
    hook_point: str
    d_model: int
    d_sae: int
    group_sizes: tuple[int, ...]
    num_interpretations: int
    source_format: str
