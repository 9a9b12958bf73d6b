"""The model options the offline commands share (``build-dashboard``, ``explain``), and
loading the model and its processor from them. torch loads only with ``load_model``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_sae_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What a run of a model and one SAE over a study folder names (build-dashboard, explain)."""
    parser.add_argument("--model", required=True, help="MAIRA-2 folder or hub id")
    parser.add_argument("--sae", required=True, type=Path, help="the SAE folder")
    parser.add_argument("--studies", required=True, type=Path, help="folder of study folders")
    parser.add_argument("--layer", type=int, help="default: the SAE's own config")


def add_model_loading_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float32")
    parser.add_argument(
        "--image-features",
        default="feature_maps",
        choices=("feature_maps", "hidden_states"),
        help="as the server's model.image_features",
    )


def load_model(args: argparse.Namespace, device: Any) -> tuple[Any, Any]:
    """``args.model`` on ``device`` as the options say, and its processor."""
    from maira_sae.server.maira2.checkpoint import load_maira2, resolve_dtype
    from maira_sae.server.maira2.config import ImageFeatures
    from maira_sae.server.maira2.processor import Maira2Processor

    loaded = load_maira2(
        args.model,
        device=device,
        dtype=resolve_dtype(args.dtype),
        image_features=ImageFeatures(args.image_features),
    )
    return loaded.model, Maira2Processor.for_model(loaded.snapshot_dir, loaded.config)
