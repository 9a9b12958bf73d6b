"""MAIRA-2 at full size with random weights, assembled through the project's own code: the
config parser, ``build_empty_model`` (weights allocated on the device, never initialised on
the CPU), the real processor (with the demo tokenizer, which has MAIRA-2's vocabulary size and
added tokens) and the real ``Engine``, plus a random ef4 SAE at layer 15.

``full_size_config`` has the real model's sizes (shared/maira2-facts.md); ``--smoke`` keeps the
demo checkpoint's small widths and depths so that the same code runs end to end on a CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bench.random_sae import EF4_GROUP_SIZES, random_sae
from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.server.demo.random_checkpoint import (
    DEMO_CONFIG,
    NEVER_GENERATED,
    RESIDUAL_WRITERS,
    full_size_config,
)
from maira_sae.server.demo.tokenizer import write_chat_template, write_demo_tokenizer
from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.maira2.checkpoint import build_empty_model
from maira_sae.server.maira2.config import Maira2Config, parse_maira2_config
from maira_sae.server.maira2.image_preprocessing import ImagePreprocessingSettings
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.study import Study, Task
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image

SAE_LAYER = 15
SAE_ID = "random-ef4-layer15"
EXPANSION = 4


def maira2_config(*, smoke: bool) -> Maira2Config:
    """The demo checkpoint's config at the real model's sizes; ``smoke`` keeps the demo's
    (widths and depths only shrink: vocabulary, 1369 image tokens per image, tokens and the
    SAE layer stay), so the smoke run takes every code path the full-size run takes."""
    raw = DEMO_CONFIG if smoke else full_size_config()
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
    return Maira2Processor.for_model(folder, config)


def frontal_study() -> Study:
    return Study(frontal=synthetic_chest_image(), indication="Cough.", comparison="None.")


def full_study() -> Study:
    """Frontal, lateral and prior images with a prior report: about 4.2k prompt tokens."""
    return Study(
        frontal=synthetic_chest_image(),
        lateral=synthetic_chest_image(620, 540),
        prior=synthetic_chest_image(580, 580),
        indication="Shortness of breath; follow-up of pleural effusion.",
        technique="PA and lateral views of the chest.",
        comparison="Radiograph from the prior visit.",
        prior_report="Small left pleural effusion. Heart size at the upper limit of normal.",
    )


def full_size_parts(
    config: Maira2Config, device: torch.device, dtype: torch.dtype, folder: Path
) -> tuple[Maira2ForConditionalGeneration, Maira2Processor, SaeEntry]:
    """The random model, its processor and a random ef4 SAE calibrated on the layer-15
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
    return model, processor, SaeEntry(SAE_ID, sae, FeatureCatalogue.empty(), SAE_LAYER)


def full_size_engine(
    config: Maira2Config, device: torch.device, dtype: torch.dtype, folder: Path
) -> Engine:
    """The engine over ``full_size_parts``."""
    model, processor, entry = full_size_parts(config, device, dtype, folder)
    return Engine(model, processor, [entry])


def _group_sizes(d_sae: int) -> tuple[int, ...]:
    if d_sae == sum(EF4_GROUP_SIZES):
        return EF4_GROUP_SIZES
    return (d_sae // 4, d_sae // 4, d_sae - d_sae // 2)
